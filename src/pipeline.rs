//! The worker's core for one event: investigate, plan by policy, remediate.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::event::RiskEvent;
use crate::graph::{GraphClient, RetryPolicy, TokenProvider};
use crate::investigate::{Findings, investigate};
use crate::policy::Policy;
use crate::remediate::{Outcome, PasswordVault, Remediator};
use crate::secrets::Secrets;

/// What processing one event gave.
#[derive(Debug, Clone, Serialize)]
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
}

/// Building the pipeline failed (missing credentials).
#[derive(Debug, thiserror::Error)]
#[error("pipeline configuration: {0}")]
pub struct PipelineConfigError(pub String);

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

    /// Builds the Graph client from the secrets' app credentials.
    pub fn from_secrets(
        secrets: &Secrets,
        graph_base_url: &str,
        login_authority: &str,
        http: reqwest::Client,
        policy: Arc<Policy>,
        vault: Option<Arc<dyn PasswordVault>>,
    ) -> Result<Self, PipelineConfigError> {
        let client_id = secrets
            .client_id
            .clone()
            .ok_or_else(|| PipelineConfigError("secrets have no client_id".into()))?;
        let credential = secrets.credential().ok_or_else(|| {
            PipelineConfigError("secrets have neither a client secret nor a certificate".into())
        })?;
        let scope = graph_scope(graph_base_url);
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            login_authority,
            client_id,
            credential,
            scope,
        ));
        let graph = Arc::new(GraphClient::new(
            http,
            graph_base_url,
            tokens,
            RetryPolicy::default(),
        ));
        Ok(Self::new(graph, policy, vault))
    }

    /// Processes one event.
    pub async fn process(&self, event: &RiskEvent) -> Report {
        let lookback = Duration::from_secs(u64::from(self.policy.lookback_hours) * 3600);
        let mut report = Report {
            event_id: event.event_id.clone(),
            tenant_id: event.tenant_id.clone(),
            findings: None,
            outcome: None,
            error: None,
            retryable: false,
        };
        let findings = match investigate(&self.graph, event, lookback).await {
            Ok(findings) => findings,
            Err(e) => {
                tracing::warn!(event_id = %event.event_id, tenant_id = %event.tenant_id, error = %e, "investigation failed");
                report.retryable = e.is_transient();
                report.error = Some(e.to_string());
                return report;
            }
        };
        let plan = self.policy.plan(event, &findings);
        tracing::info!(event_id = %event.event_id, tenant_id = %event.tenant_id, rule = ?plan.rule, actions = ?plan.actions, reason = ?plan.reason, mode = ?self.policy.mode, "plan");
        let outcome = self.remediator.execute(event, &findings, plan).await;
        report.retryable = outcome.transient_failure();
        report.findings = Some(findings);
        report.outcome = Some(outcome);
        report
    }
}

/// `https://graph.microsoft.com/.default` for a base URL such as `https://graph.microsoft.com/v1.0`.
fn graph_scope(base_url: &str) -> String {
    let origin = base_url
        .splitn(4, '/')
        .take(3)
        .collect::<Vec<_>>()
        .join("/");
    if origin.contains("graph.microsoft") {
        format!("{origin}/.default")
    } else {
        "https://graph.microsoft.com/.default".to_owned()
    }
}
