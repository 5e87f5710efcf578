//! The worker: takes work items (from SQS or inline), claims each event in the ledger so it
//! is remediated once, runs the pipeline, and records the outcome.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use tracing::Instrument;

use crate::event::RiskEvent;
use crate::ingress::graph::{LifecycleKind, LifecycleNotice};
use crate::ledger::{Claim, Ledger, LedgerError};
use crate::pipeline::Pipeline;
use crate::queue::WorkItem;
use crate::subscriptions::SubscriptionManager;

/// How long a claim is held; longer than the worker's Lambda timeout.
pub const CLAIM_LEASE: Duration = Duration::from_secs(15 * 60);

/// What became of one work item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Processed now (whatever the outcome), or nothing left to do.
    Done,
    /// Already processed by an earlier delivery: skipped.
    Duplicate,
    /// Must be retried later (transient failure, or another worker holds the claim).
    Retry(String),
    /// Refused for good (e.g. same id with another payload); recorded, not retried.
    Refused(String),
}

/// The worker's dependencies, built once per cold start.
pub struct Worker {
    pub ledger: Arc<dyn Ledger>,
    pub pipeline: Arc<Pipeline>,
    pub subscriptions: Option<Arc<SubscriptionManager>>,
}

impl Worker {
    /// Handles one work item.
    pub async fn handle(&self, item: &WorkItem) -> Disposition {
        match item {
            WorkItem::Risk(event) => {
                let span = tracing::info_span!("event", event_id = %event.event_id, tenant_id = %event.tenant_id);
                self.risk(event).instrument(span).await
            }
            WorkItem::Lifecycle(notice) => {
                let span = tracing::info_span!("lifecycle", subscription_id = %notice.subscription_id, tenant_id = %notice.tenant_id);
                self.lifecycle(notice).instrument(span).await
            }
        }
    }

    async fn risk(&self, event: &RiskEvent) -> Disposition {
        let claim = match self.ledger.claim(event, CLAIM_LEASE).await {
            Ok(claim) => claim,
            Err(LedgerError(e)) => return Disposition::Retry(format!("ledger: {e}")),
        };
        let previous = match claim {
            Claim::Acquired { previous } => previous,
            Claim::Completed(_) => {
                tracing::info!("already remediated: duplicate delivery skipped");
                return Disposition::Duplicate;
            }
            Claim::InProgress => {
                return Disposition::Retry("another worker holds the claim".into());
            }
            Claim::PayloadMismatch => {
                tracing::error!("event id seen before with a different payload: refused");
                return Disposition::Refused("payload does not match the recorded event".into());
            }
        };
        let report = self
            .pipeline
            .process_after(event, previous.as_deref())
            .await;
        if report.retryable || report.needs_operator {
            // Kept for SQS to redeliver (and, after maxReceiveCount, the alarmed DLQ): a
            // transient failure may pass later, and an operator may fix permissions meanwhile.
            let reason = match (&report.error, report.needs_operator) {
                (Some(error), true) => format!("needs an operator: {error}"),
                (None, true) => "an action needs an operator (permissions or configuration)".into(),
                (Some(error), false) => error.clone(),
                (None, false) => "transient failure".into(),
            };
            if let Err(e) = self.ledger.release(&event.event_id, &report).await {
                tracing::error!(error = %e, "could not release claim; the lease will expire");
            }
            return Disposition::Retry(reason);
        }
        match self.ledger.complete(&event.event_id, &report).await {
            Ok(()) => Disposition::Done,
            // Done but not recorded: the retry finds the actions in no report, yet the plan
            // re-checks the user's risk first, which the remediation has cleared.
            Err(e) => Disposition::Retry(format!("ledger: {e}")),
        }
    }

    async fn lifecycle(&self, notice: &LifecycleNotice) -> Disposition {
        let Some(subscriptions) = &self.subscriptions else {
            tracing::warn!(kind = ?notice.kind, "lifecycle notification with no subscription manager configured");
            return Disposition::Done;
        };
        let result = match notice.kind {
            LifecycleKind::ReauthorizationRequired => {
                subscriptions
                    .reauthorize(&notice.tenant_id, &notice.subscription_id)
                    .await
            }
            LifecycleKind::SubscriptionRemoved => {
                subscriptions.ensure(&notice.tenant_id).await.map(drop)
            }
            LifecycleKind::Missed => {
                tracing::warn!(
                    "Graph reports missed notifications: review risky users for this tenant"
                );
                Ok(())
            }
        };
        match result {
            Ok(()) => Disposition::Done,
            Err(e) if e.is_transient() || e.needs_operator() => Disposition::Retry(e.to_string()),
            Err(e) => {
                tracing::error!(error = %e, "lifecycle handling failed");
                Disposition::Refused(e.to_string())
            }
        }
    }

    /// Handles an SQS batch; failed items are reported for redelivery (and, after the
    /// queue's maxReceiveCount, the DLQ). Unreadable messages fail too, so they reach the DLQ.
    pub async fn handle_sqs(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let item: Result<WorkItem, _> =
                serde_json::from_str(record.body.as_deref().unwrap_or(""));
            let disposition = match item {
                Ok(item) => self.handle(&item).await,
                Err(e) => Disposition::Retry(format!("unreadable message: {e}")),
            };
            if let Disposition::Retry(reason) = &disposition {
                tracing::warn!(message_id = %id, %reason, "message left for retry");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }
}
