//! The local server's queue: bounded and in memory. The worker waits on it; replay drains it
//! inline; when full, intake answers 503 at once and never waits for the worker.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{QueueError, WorkItem, WorkQueue};
use crate::config::DEFAULT_LOCAL_QUEUE_CAPACITY;

/// A bounded in-memory queue: the local server's worker waits on it; replay drains it inline.
/// When full, [`WorkQueue::send`] refuses the whole delivery, so intake answers 503 at once
/// and never waits for the worker.
pub struct MemoryQueue {
    items: Mutex<VecDeque<WorkItem>>,
    capacity: usize,
    ready: Notify,
    /// Ids of the signals sent and not yet reported [`MemoryQueue::done`]: waiting, or being
    /// worked. The local retries leave them alone (they are not lost, only not settled yet).
    held: Mutex<HashSet<String>>,
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
            held: Mutex::new(HashSet::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the signal `signal_id` waits in this queue or is being worked from it.
    pub fn holds(&self, signal_id: &str) -> bool {
        self.held().contains(signal_id)
    }

    /// Reports `items` (taken by [`MemoryQueue::next_batch`]) handled.
    pub fn done(&self, items: &[WorkItem]) {
        let mut held = self.held();
        for item in items {
            if let WorkItem::Risk(signal) = item {
                held.remove(&signal.event_id);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<WorkItem>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes and returns everything sent so far.
    pub fn drain(&self) -> Vec<WorkItem> {
        let items: Vec<WorkItem> = self.lock().drain(..).collect();
        self.done(&items);
        items
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
            let mut held = self.held();
            for item in items {
                if let WorkItem::Risk(signal) = item {
                    held.insert(signal.event_id.clone());
                }
            }
        }
        self.ready.notify_one();
        Ok(())
    }

    fn room(&self) -> Option<usize> {
        Some(self.capacity.saturating_sub(self.len()))
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

    fn signal(id: &str) -> WorkItem {
        use crate::event::{EventSource, RiskEvent, RiskLevel, Subject};
        WorkItem::Risk(RiskEvent {
            event_id: id.into(),
            tenant_id: "t".into(),
            source: EventSource::Sentinel,
            subject: Subject::User {
                id: Some("u".into()),
                upn: None,
            },
            risk_level: RiskLevel::High,
            detected_at: time::OffsetDateTime::UNIX_EPOCH,
            source_id: id.into(),
            resource_data: None,
            origin: None,
        })
    }

    #[tokio::test]
    async fn a_signal_is_held_from_its_sending_until_it_is_handled() {
        let queue = MemoryQueue::with_capacity(10);
        assert!(!queue.holds("s-1"));
        queue.send(&[signal("s-1"), signal("s-2")]).await.unwrap();
        let taken = queue.next_batch(1).await;
        assert!(queue.holds("s-1"), "being worked");
        assert!(queue.holds("s-2"), "waiting");
        queue.done(&taken);
        assert!(!queue.holds("s-1"));
        assert!(queue.holds("s-2"));
        let rest = queue.next_batch(10).await;
        queue.done(&rest);
        assert!(!queue.holds("s-2"));
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
