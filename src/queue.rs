//! Port for handing accepted work to the worker, and its in-memory adapter.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

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
}

/// Items a local queue holds by default before intake answers 503 (about 10 MB of signals).
pub const DEFAULT_LOCAL_QUEUE_CAPACITY: usize = 20_000;

/// A bounded in-memory queue: the local server's worker waits on it; replay drains it inline.
/// When full, [`WorkQueue::send`] refuses the whole delivery, so intake answers 503 at once
/// and never waits for the worker.
pub struct MemoryQueue {
    items: Mutex<VecDeque<WorkItem>>,
    capacity: usize,
    ready: Notify,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_LOCAL_QUEUE_CAPACITY)
    }
}

impl MemoryQueue {
    /// A queue that holds at most `capacity` items.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            capacity,
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<WorkItem>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes and returns everything sent so far.
    pub fn drain(&self) -> Vec<WorkItem> {
        self.lock().drain(..).collect()
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until items are there, then removes and returns up to `max` of them.
    pub async fn next_batch(&self, max: usize) -> Vec<WorkItem> {
        loop {
            let notified = self.ready.notified();
            {
                let mut items = self.lock();
                if !items.is_empty() {
                    let take = max.max(1).min(items.len());
                    return items.drain(..take).collect();
                }
            }
            notified.await;
        }
    }
}

#[async_trait]
impl WorkQueue for MemoryQueue {
    async fn send(&self, items: &[WorkItem]) -> Result<(), QueueError> {
        {
            let mut queue = self.lock();
            let free = self.capacity.saturating_sub(queue.len());
            if items.len() > free {
                return Err(QueueError::Full {
                    items: items.len(),
                    free,
                });
            }
            queue.extend(items.iter().cloned());
        }
        self.ready.notify_one();
        Ok(())
    }

    fn room(&self) -> Option<usize> {
        Some(self.capacity.saturating_sub(self.len()))
    }
}

/// Amazon SQS adapter: one message per work item, sent in batches of ten.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    /// A queue adapter over `queue_url`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

#[async_trait]
impl WorkQueue for SqsQueue {
    async fn send(&self, items: &[WorkItem]) -> Result<(), QueueError> {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        for chunk in items.chunks(10) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, item) in chunk.iter().enumerate() {
                let body = serde_json::to_string(item)
                    .map_err(|e| QueueError::Unavailable(e.to_string()))?;
                entries.push(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .map_err(|e| QueueError::Unavailable(e.to_string()))?,
                );
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError::Unavailable(crate::secrets::aws_error(&e)))?;
            if let Some(failed) = out.failed().first() {
                return Err(QueueError::Unavailable(format!(
                    "{} of {} messages refused: {}",
                    out.failed().len(),
                    chunk.len(),
                    failed.message().unwrap_or(failed.code())
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> WorkItem {
        WorkItem::Resume {
            tenant_id: "t".into(),
            case_id: format!("c-{n}"),
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_the_whole_delivery() {
        let queue = MemoryQueue::with_capacity(3);
        queue.send(&[item(1), item(2)]).await.unwrap();
        assert_eq!(queue.room(), Some(1));
        let refused = queue.send(&[item(3), item(4)]).await.unwrap_err();
        assert!(matches!(refused, QueueError::Full { items: 2, free: 1 }));
        assert_eq!(queue.len(), 2, "nothing of a refused delivery is queued");
        queue.send(&[item(3)]).await.unwrap();
        assert_eq!(queue.room(), Some(0));
    }

    #[tokio::test]
    async fn the_worker_waits_for_items_and_takes_them_in_order() {
        let queue = std::sync::Arc::new(MemoryQueue::with_capacity(10));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next_batch(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        queue.send(&[item(1), item(2), item(3)]).await.unwrap();
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, vec![item(1), item(2)]);
        assert_eq!(queue.next_batch(10).await, vec![item(3)]);
    }
}
