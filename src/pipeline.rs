//! The worker's core for one event: investigate, plan by policy, remediate.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::RiskEvent;
use crate::graph::GraphClient;
use crate::investigate::{Findings, investigate};
use crate::policy::Action;
use crate::policy::Policy;
use crate::remediate::{ActionStatus, Outcome, PasswordVault, Remediator};

/// What processing one event gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub event_id: String,
    pub tenant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Findings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why the event could not be investigated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether a retry may help (throttling, outages); false for refusals and completed work.
    pub retryable: bool,
    /// Whether an operator must fix credentials, permissions or configuration first; the
    /// worker keeps such events for retry (then the DLQ) instead of closing them.
    #[serde(default)]
    pub needs_operator: bool,
}

/// Investigation, policy and remediation wired together.
pub struct Pipeline {
    graph: Arc<GraphClient>,
    policy: Arc<Policy>,
    remediator: Remediator,
}

impl Pipeline {
    /// Wires a pipeline over an existing Graph client.
    pub fn new(
        graph: Arc<GraphClient>,
        policy: Arc<Policy>,
        vault: Option<Arc<dyn PasswordVault>>,
    ) -> Self {
        let remediator = Remediator {
            graph: graph.clone(),
            policy: policy.clone(),
            vault,
        };
        Self {
            graph,
            policy,
            remediator,
        }
    }

    /// Processes one event.
    pub async fn process(&self, event: &RiskEvent) -> Report {
        self.process_after(event, None).await
    }

    /// Processes one event after an earlier attempt whose `previous` report failed
    /// transiently: actions that attempt completed are not carried out again.
    pub async fn process_after(&self, event: &RiskEvent, previous: Option<&Report>) -> Report {
        let lookback = Duration::from_secs(u64::from(self.policy.lookback_hours) * 3600);
        let mut report = Report {
            event_id: event.event_id.clone(),
            tenant_id: event.tenant_id.clone(),
            findings: None,
            outcome: None,
            error: None,
            retryable: false,
            needs_operator: false,
        };
        let findings = match investigate(&self.graph, event, lookback).await {
            Ok(findings) => findings,
            Err(e) => {
                tracing::warn!(event_id = %event.event_id, tenant_id = %event.tenant_id, error = %e, "investigation failed");
                report.retryable = e.is_transient();
                report.needs_operator = e.needs_operator();
                report.error = Some(e.to_string());
                return report;
            }
        };
        let plan = self.policy.plan(event, &findings);
        tracing::info!(event_id = %event.event_id, tenant_id = %event.tenant_id, rule = ?plan.rule, actions = ?plan.actions, reason = ?plan.reason, mode = ?self.policy.mode, "plan");
        let done: Vec<Action> = previous
            .and_then(|r| r.outcome.as_ref())
            .map(|o| {
                o.actions
                    .iter()
                    .filter(|a| matches!(a.status, ActionStatus::Done { .. }))
                    .map(|a| a.action)
                    .collect()
            })
            .unwrap_or_default();
        let outcome = self.remediator.execute(event, &findings, plan, &done).await;
        report.retryable = outcome.transient_failure();
        report.needs_operator = outcome.needs_operator();
        report.findings = Some(findings);
        report.outcome = Some(outcome);
        report
    }
}
