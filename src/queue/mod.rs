//! The work queue: the port that hands accepted work to the worker, with its adapters beside
//! it: [`memory`] (the local server's bounded in-process queue) and [`sqs`] (Amazon SQS, for
//! the deployed functions).

pub mod memory;
pub mod sqs;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::RiskEvent;
use crate::ingress::graph::LifecycleNotice;

/// A unit of work for the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum WorkItem {
    /// Investigate and remediate a risk signal.
    Risk(RiskEvent),
    /// Act on a subscription lifecycle notification (reauthorize, recreate).
    Lifecycle(LifecycleNotice),
    /// Work a case again (a person approved it or asked for a retry).
    Resume { tenant_id: String, case_id: String },
}

impl WorkItem {
    /// The tenant the item is about.
    pub fn tenant(&self) -> &str {
        match self {
            WorkItem::Risk(signal) => &signal.tenant_id,
            WorkItem::Lifecycle(notice) => &notice.tenant_id,
            WorkItem::Resume { tenant_id, .. } => tenant_id,
        }
    }

    /// Whether the item carries risk (an alert, the sweep, Identity Protection, a case to
    /// resume, a subscription to keep), rather than a `users` change notification that may
    /// concern nobody at risk: the queues take it first.
    pub fn carries_risk(&self) -> bool {
        match self {
            WorkItem::Risk(signal) => signal.source != crate::event::EventSource::GraphUser,
            WorkItem::Lifecycle(_) | WorkItem::Resume { .. } => true,
        }
    }

    /// The SQS message group (fair queues): the tenant for what carries risk, and the
    /// tenant's `/directory` group for `users` notifications, so a flood of either is a noisy
    /// neighbour SQS serves after the quiet groups (one tenant's risky users before another's
    /// flood, and before its own).
    pub fn message_group(&self) -> String {
        if self.carries_risk() {
            self.tenant().to_owned()
        } else {
            format!("{}/directory", self.tenant())
        }
    }
}

/// Why items could not be handed to the queue; the delivery must be retried by its sender.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue refused or could not be reached.
    #[error("work queue unavailable: {0}")]
    Unavailable(String),
    /// A bounded queue has no room for the items (back-pressure).
    #[error("work queue full: {items} items, room for {free}")]
    Full { items: usize, free: usize },
}

/// Port: durable hand-off of work items.
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Sends all items, or fails as a whole so the caller can answer 5xx.
    async fn send(&self, items: &[WorkItem]) -> Result<(), QueueError>;

    /// How many more items a bounded queue takes now; `None` when unbounded (SQS).
    fn room(&self) -> Option<usize> {
        None
    }

    /// Whether [`WorkQueue::send_later`] delivers (SQS); the local queue does not, and its
    /// server's retries find stranded cases in the ledger instead.
    fn delivers_later(&self) -> bool {
        false
    }

    /// Sends `items` to be delivered only after `delay` (at most [`LONGEST_DELAY`]).
    async fn send_later(
        &self,
        items: &[WorkItem],
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        let _ = (items, delay);
        Err(QueueError::Unavailable(
            "this queue does not deliver later".into(),
        ))
    }
}

/// The longest delay SQS takes (`DelaySeconds`, 15 minutes).
pub const LONGEST_DELAY: std::time::Duration = std::time::Duration::from_secs(900);

pub use memory::MemoryQueue;
pub use sqs::SqsQueue;
