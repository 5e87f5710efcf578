//! Port for handing accepted work to the worker, and its in-memory adapter.

use std::sync::Mutex;

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

/// The queue refused or could not be reached; the delivery must be retried by its sender.
#[derive(Debug, thiserror::Error)]
#[error("work queue unavailable: {0}")]
pub struct QueueError(pub String);

/// Port: durable hand-off of work items.
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Sends all items, or fails as a whole so the caller can answer 5xx.
    async fn send(&self, items: &[WorkItem]) -> Result<(), QueueError>;
}

/// Keeps items in memory: the local server and replay drain it inline.
#[derive(Default)]
pub struct MemoryQueue {
    items: Mutex<Vec<WorkItem>>,
}

impl MemoryQueue {
    /// Removes and returns everything sent so far.
    pub fn drain(&self) -> Vec<WorkItem> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl WorkQueue for MemoryQueue {
    async fn send(&self, items: &[WorkItem]) -> Result<(), QueueError> {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(items);
        Ok(())
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
                let body = serde_json::to_string(item).map_err(|e| QueueError(e.to_string()))?;
                entries.push(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .map_err(|e| QueueError(e.to_string()))?,
                );
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError(crate::secrets::aws_error(&e)))?;
            if let Some(failed) = out.failed().first() {
                return Err(QueueError(format!(
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
