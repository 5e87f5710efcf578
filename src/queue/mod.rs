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
