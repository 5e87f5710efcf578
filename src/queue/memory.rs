//! The local server's queue: bounded and in memory. The worker waits on it; replay drains it
//! inline; when full, intake answers 503 at once and never waits for the worker.
//!
//! Risk first, and fair across tenants: what carries risk (alerts, the sweep, Identity
//! Protection, resumes, lifecycle notices) is taken before `users` change notifications that
//! may concern nobody at risk, and within each lane the tenants take turns (a quarter of a
//! batch each, so a tenant's cases in a batch still share one investigation), so one tenant's
//! flood never holds back another tenant's risky user. With several consumers, one tenant's
//! items are worked by all but one of them at most ([`MemoryQueue::with_consumers`]): a
//! tenant's Graph budgets pace its work anyway, and the consumer left over takes up the other
//! tenants' signals at once; `users` change notifications are worked one batch at a time.

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
    /// Consumers working each tenant's items now (taken, not yet reported done).
    working: Mutex<std::collections::HashMap<String, usize>>,
    /// The most consumers one tenant's items may hold at once.
    tenant_cap: usize,
    /// Batches holding `users` change notifications being worked: one at a time when several
    /// consumers run, so that bulk, which may concern nobody at risk, never takes every
    /// consumer (and the machine's cores) from intake and from risk.
    directory_working: std::sync::atomic::AtomicUsize,
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
            working: Mutex::new(Default::default()),
            tenant_cap: usize::MAX,
            directory_working: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The queue of `consumers` consumers: one tenant's items are taken by at most
    /// `consumers - 1` of them at once (all of them when there is one), so one is always free
    /// for another tenant. Every batch taken must be reported [`MemoryQueue::done`].
    pub fn with_consumers(mut self, consumers: usize) -> Self {
        self.tenant_cap = consumers.saturating_sub(1).max(1);
        self
    }

    fn working(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.working.lock().unwrap_or_else(|e| e.into_inner())
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
        if self.tenant_cap != usize::MAX {
            if items.iter().any(|i| !i.carries_risk()) {
                // Never below zero, whatever a caller reports.
                let _ = self.directory_working.fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| Some(n.saturating_sub(1)),
                );
            }
            let mut working = self.working();
            for tenant in tenants_of(items) {
                if let Some(n) = working.get_mut(&tenant) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        working.remove(&tenant);
                    }
                }
            }
            drop(working);
            // A consumer may wait for a tenant this batch held.
            self.ready.notify_waiters();
        }
        self.release_held(items);
    }

    /// The signals of `items` are no longer held (handled, or drained).
    fn release_held(&self, items: &[WorkItem]) {
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
        let items: Vec<WorkItem> = self.lock().take(usize::MAX, &|_| false, true);
        self.release_held(&items);
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

    /// Waits until items are there (of a tenant not held by as many consumers as it may be),
    /// then removes and returns up to `max` of them.
    pub async fn next_batch(&self, max: usize) -> Vec<WorkItem> {
        loop {
            let notified = self.ready.notified();
            {
                let mut items = self.lock();
                if items.len() != 0 {
                    let mut working = self.working();
                    let cap = self.tenant_cap;
                    let directory_free = cap == usize::MAX
                        || self
                            .directory_working
                            .load(std::sync::atomic::Ordering::SeqCst)
                            == 0;
                    let taken = items.take(
                        max.max(1),
                        &|tenant: &str| working.get(tenant).is_some_and(|n| *n >= cap),
                        directory_free,
                    );
                    if !taken.is_empty() {
                        if cap != usize::MAX {
                            for tenant in tenants_of(&taken) {
                                *working.entry(tenant).or_default() += 1;
                            }
                            if taken.iter().any(|i| !i.carries_risk()) {
                                self.directory_working
                                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                        return taken;
                    }
                }
            }
            notified.await;
        }
    }
}

/// The tenants of `items`, each once.
fn tenants_of(items: &[WorkItem]) -> HashSet<String> {
    items.iter().map(|i| i.tenant().to_owned()).collect()
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

    /// Up to `max` items, up to `chunk` per tenant per turn; a tenant served goes to the
    /// back; a tenant `busy` says is held enough is passed over.
    fn take(
        &mut self,
        max: usize,
        chunk: usize,
        busy: &dyn Fn(&str) -> bool,
        out: &mut Vec<WorkItem>,
    ) {
        let mut passed = 0;
        while out.len() < max && passed < self.tenants.len() {
            let Some((tenant, mut items)) = self.tenants.pop_front() else {
                return;
            };
            if busy(&tenant) {
                self.tenants.push_back((tenant, items));
                passed += 1;
                continue;
            }
            passed = 0;
            let mut turn = 0;
            while turn < chunk && out.len() < max {
                let Some(item) = items.pop_front() else {
                    break;
                };
                out.push(item);
                self.len -= 1;
                turn += 1;
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

    /// Up to `max` items: the risk lane first, then the directory lane; a tenant's turn is a
    /// quarter of `max` (one item at least).
    fn take(
        &mut self,
        max: usize,
        busy: &dyn Fn(&str) -> bool,
        directory_free: bool,
    ) -> Vec<WorkItem> {
        let chunk = (max / 4).max(1);
        let mut out = Vec::new();
        self.risk.take(max, chunk, busy, &mut out);
        if directory_free {
            self.directory.take(max, chunk, busy, &mut out);
        }
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
    async fn a_tenants_turn_is_a_quarter_batch_and_one_consumer_stays_free_for_the_others() {
        use crate::event::EventSource::Sentinel;
        let queue = std::sync::Arc::new(MemoryQueue::with_capacity(1000).with_consumers(3));
        let flood: Vec<WorkItem> = (0..100)
            .map(|i| signal_of(&format!("a-{i}"), "A", Sentinel))
            .collect();
        queue.send(&flood).await.unwrap();
        queue
            .send(&[signal_of("b-0", "B", Sentinel)])
            .await
            .unwrap();
        // Turns of a quarter batch: A's 2, then B's one, then A's next 2.
        let first = queue.next_batch(8).await;
        assert_eq!(
            ids(&first),
            ["a-0", "a-1", "b-0", "a-2", "a-3", "a-4", "a-5", "a-6"]
        );
        // A is held by one consumer; a second may take A too, a third may not.
        let second = queue.next_batch(8).await;
        assert_eq!(second.len(), 8);
        let third = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next_batch(8).await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "A holds two of three consumers");
        // Another tenant's signal is taken by the third consumer at once.
        queue
            .send(&[signal_of("c-0", "C", Sentinel)])
            .await
            .unwrap();
        let taken = tokio::time::timeout(std::time::Duration::from_secs(5), third)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids(&taken), ["c-0"]);
        // Once a batch of A is done, A may be taken again.
        queue.done(&first);
        let again = queue.next_batch(8).await;
        assert_eq!(ids(&again)[0], "a-15");
    }

    #[tokio::test]
    async fn directory_changes_are_worked_one_batch_at_a_time_and_risk_goes_past_them() {
        use crate::event::EventSource::{GraphUser, Sentinel};
        let queue = std::sync::Arc::new(MemoryQueue::with_capacity(100).with_consumers(6));
        let users: Vec<WorkItem> = (0..8)
            .map(|i| signal_of(&format!("u-{i}"), &format!("T{i}"), GraphUser))
            .collect();
        queue.send(&users).await.unwrap();
        let first = queue.next_batch(2).await;
        assert_eq!(ids(&first), ["u-0", "u-1"]);
        let second = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next_batch(2).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "one batch of directory changes at a time"
        );
        queue
            .send(&[signal_of("alert", "T9", Sentinel)])
            .await
            .unwrap();
        let taken = tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids(&taken), ["alert"], "risk is taken past them");
        queue.done(&taken);
        queue.done(&first);
        assert_eq!(ids(&queue.next_batch(2).await), ["u-2", "u-3"]);
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
