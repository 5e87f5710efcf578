//! Amazon SQS: one message per work item, sent in batches of ten, each with its message group
//! (the tenant, or the tenant's `/directory` group for `users` notifications): on a standard
//! queue that makes it an SQS fair queue, where one group's backlog does not delay the others.

use async_trait::async_trait;

use super::{QueueError, WorkItem, WorkQueue};
use crate::support::aws::aws_error;

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
        self.send_delayed(items, 0).await
    }

    fn delivers_later(&self) -> bool {
        true
    }

    async fn send_later(
        &self,
        items: &[WorkItem],
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        let seconds = delay.min(super::LONGEST_DELAY).as_secs() as i32;
        self.send_delayed(items, seconds).await
    }
}

impl SqsQueue {
    /// Sends `items` in batches of ten, each delivered after `delay_seconds` (0 to 900).
    async fn send_delayed(&self, items: &[WorkItem], delay_seconds: i32) -> Result<(), QueueError> {
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
                        // Fair queues: SQS serves quiet groups first when one floods.
                        .message_group_id(item.message_group())
                        .set_delay_seconds((delay_seconds > 0).then_some(delay_seconds))
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
                .map_err(|e| QueueError::Unavailable(aws_error(&e)))?;
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
