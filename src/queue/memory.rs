//! The local server's queue: bounded and in memory. The worker waits on it; replay drains it
//! inline; when full, intake answers 503 at once and never waits for the worker.
//!
//! Risk first, and fair across tenants: what carries risk (alerts, the sweep, Identity
//! Protection, resumes, lifecycle notices) is taken before `users` change notifications that
//! may concern nobody at risk, and within each lane the tenants take turns, one item each, so
//! one tenant's flood never holds back another tenant's risky user.

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
    items: Mutex<Lanes>,
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
            items: Mutex::new(Lanes::default()),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes and returns everything sent so far.
    pub fn drain(&self) -> Vec<WorkItem> {
        let items: Vec<WorkItem> = self.lock().take(usize::MAX);
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
                if items.len() != 0 {
                    return items.take(max.max(1));
                }
            }
            notified.await;
        }
    }
}

/// The items waiting: two lanes (risk first), each a turn per tenant.
#[derive(Default)]
struct Lanes {
    risk: Lane,
    directory: Lane,
}

/// One lane: each tenant's items in order, and the tenants in turn.
#[derive(Default)]
struct Lane {
    tenants: VecDeque<(String, VecDeque<WorkItem>)>,
    len: usize,
}

impl Lane {
    fn push(&mut self, tenant: &str, item: WorkItem) {
        match self.tenants.iter_mut().find(|(t, _)| t == tenant) {
            Some((_, items)) => items.push_back(item),
            None => self
                .tenants
                .push_back((tenant.to_owned(), VecDeque::from([item]))),
        }
        self.len += 1;
    }

    /// Up to `max` items, one per tenant per turn; a tenant served goes to the back.
    fn take(&mut self, max: usize, out: &mut Vec<WorkItem>) {
        while out.len() < max {
            let Some((tenant, mut items)) = self.tenants.pop_front() else {
                return;
            };
            if let Some(item) = items.pop_front() {
                out.push(item);
                self.len -= 1;
            }
            if !items.is_empty() {
                self.tenants.push_back((tenant, items));
            }
        }
    }
}

impl Lanes {
    fn len(&self) -> usize {
        self.risk.len + self.directory.len
    }

    fn push(&mut self, item: WorkItem) {
        let tenant = item.tenant().to_owned();
        let lane = if item.carries_risk() {
            &mut self.risk
        } else {
            &mut self.directory
        };
        lane.push(&tenant, item);
    }

    /// Up to `max` items: the risk lane first, then the directory lane.
    fn take(&mut self, max: usize) -> Vec<WorkItem> {
        let mut out = Vec::new();
        self.risk.take(max, &mut out);
        self.directory.take(max, &mut out);
        out
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
            for item in items {
                queue.push(item.clone());
            }
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

    fn signal_of(id: &str, tenant: &str, source: crate::event::EventSource) -> WorkItem {
        let WorkItem::Risk(mut event) = signal(id) else {
            unreachable!()
        };
        event.tenant_id = tenant.into();
        event.source = source;
        WorkItem::Risk(event)
    }

    fn ids(items: &[WorkItem]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                WorkItem::Risk(e) => e.event_id.clone(),
                WorkItem::Resume { case_id, .. } => case_id.clone(),
                WorkItem::Lifecycle(_) => "lifecycle".into(),
            })
            .collect()
    }

    #[tokio::test]
    async fn risk_goes_before_directory_changes_and_tenants_take_turns() {
        use crate::event::EventSource::{GraphUser, Sentinel, Sweep};
        let queue = MemoryQueue::with_capacity(100);
        // Tenant A floods: users notifications, then alerts; tenant B has one risky user.
        let mut flood: Vec<WorkItem> = (0..5)
            .map(|i| signal_of(&format!("a-user-{i}"), "A", GraphUser))
            .collect();
        flood.extend((0..3).map(|i| signal_of(&format!("a-alert-{i}"), "A", Sentinel)));
        queue.send(&flood).await.unwrap();
        queue
            .send(&[signal_of("b-sweep", "B", Sweep)])
            .await
            .unwrap();
        assert_eq!(queue.len(), 9);
        let first = queue.next_batch(3).await;
        assert_eq!(ids(&first), ["a-alert-0", "b-sweep", "a-alert-1"]);
        let rest = queue.next_batch(100).await;
        assert_eq!(
            ids(&rest),
            [
                "a-alert-2",
                "a-user-0",
                "a-user-1",
                "a-user-2",
                "a-user-3",
                "a-user-4"
            ]
        );
        assert!(queue.is_empty());
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
