//! Outlook's concurrent requests per app and mailbox: at most [`MAILBOX_CONCURRENCY`] in
//! flight, whichever process of the deployment sends them (Microsoft Graph service limits,
//! *Outlook service limits*: "Four concurrent requests", per app ID and mailbox).
//!
//! Each process has a **share** of a mailbox's four: `4 / workers` (`RR_WORKER_CONCURRENCY`,
//! the stack's `WorkerMaxConcurrency`), at least one. Without a ledger a process keeps to its
//! share, so the workers together never exceed four, but a worker sending alone uses only its
//! share.
//!
//! With a ledger ([`MailSlots::shared`]), the slots in flight are kept in the ledger
//! (`tenant#{tenant}#mailbox#{mailbox}`, conditional writes, as the rate windows of
//! [`super::limiter::SharedLimiter`]): a process takes slots only while fewer than four are
//! held in all, so the limit holds however many processes send. A process may hold more than
//! its share (borrow the slots of workers that are not sending) as long as no other process is
//! waiting; a waiting process marks itself in the same document, and from then on no process
//! takes slots past its own share until the waiting one has been served. So a lone worker uses
//! all four, and two busy workers get two each.
//!
//! An entry names its holder and lapses [`ENTRY_TTL`] after it was taken or last renewed (a
//! held entry is renewed every third of that): a process that stops without giving its slots
//! back blocks them for at most that long. A ledger that cannot be read or written fails the
//! request as [`GraphError::RateLimiter`] (the work is kept for retry): never a guess past the
//! limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::GraphError;
use super::limiter::MAX_WAIT;
use crate::ledger::{Ledger, Store};
use crate::support::process::{holder_id, holder_is_gone};

/// Outlook's concurrent requests per app and mailbox (Microsoft Graph service limits).
pub const MAILBOX_CONCURRENCY: usize = 4;

/// How long a held entry counts without being renewed.
pub const ENTRY_TTL: Duration = Duration::from_secs(30);

/// How long a waiting mark counts without being renewed (a waiting process renews it twice as
/// often).
const WAITING_TTL: Duration = Duration::from_secs(2);

/// The slots of one mailbox in flight, as the ledger keeps them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Slots {
    /// Entry id -> who holds how many, until when (unix ms).
    #[serde(default)]
    held: BTreeMap<String, Held>,
    /// Processes waiting for their share -> until when their mark counts (unix ms).
    #[serde(default)]
    waiting: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Held {
    holder: String,
    count: usize,
    until: i64,
}

impl Slots {
    fn drop_lapsed(&mut self, now: i64) {
        // An entry of a process that is gone (killed) frees its slots at once.
        self.held
            .retain(|_, h| h.until > now && !holder_is_gone(&h.holder));
        self.waiting
            .retain(|holder, until| *until > now && !holder_is_gone(holder));
    }

    /// Whether `holder` may take `count` more: never past [`MAILBOX_CONCURRENCY`] in all, and
    /// past its `share` only while no other process waits.
    fn admits(&self, holder: &str, count: usize, share: usize) -> bool {
        let total: usize = self.held.values().map(|h| h.count).sum();
        let mine: usize = self
            .held
            .values()
            .filter(|h| h.holder == holder)
            .map(|h| h.count)
            .sum();
        let others_wait = self.waiting.keys().any(|w| w != holder);
        total + count <= MAILBOX_CONCURRENCY && (mine + count <= share || !others_wait)
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn unavailable(e: crate::ledger::LedgerError) -> GraphError {
    GraphError::RateLimiter(e.to_string())
}

/// 10 to 40 ms: how long a waiting process sleeps before it looks again, and the pause after
/// losing a write to another process.
fn poll_pause() -> Duration {
    let mut byte = [0u8; 1];
    let jitter = if aws_lc_rs::rand::fill(&mut byte).is_ok() {
        u64::from(byte[0]) * 30 / 255
    } else {
        15
    };
    Duration::from_millis(10 + jitter)
}

/// The ledger side of [`MailSlots`].
struct Shared {
    ledger: Ledger,
    /// This process, as its entries and waiting marks name it.
    holder: String,
}

impl Shared {
    fn store(&self) -> Arc<dyn Store> {
        self.ledger.store().clone()
    }

    /// Takes `count` slots of `key` for this process, waiting (at most [`MAX_WAIT`]) while the
    /// mailbox is full or others wait for their share.
    async fn take(&self, key: &str, count: usize, share: usize) -> Result<Lease, GraphError> {
        let store = self.store();
        let started = Instant::now();
        let mut marked_until = 0i64;
        loop {
            let stored = store.get(key).await.map_err(unavailable)?;
            let (mut slots, version) = match &stored {
                Some(s) => (
                    serde_json::from_str::<Slots>(&s.doc).unwrap_or_default(),
                    s.version,
                ),
                None => (Slots::default(), 0),
            };
            let now = now_ms();
            slots.drop_lapsed(now);
            if slots.admits(&self.holder, count, share) {
                let id = uuid::Uuid::new_v4().simple().to_string();
                slots.held.insert(
                    id.clone(),
                    Held {
                        holder: self.holder.clone(),
                        count,
                        until: now + ENTRY_TTL.as_millis() as i64,
                    },
                );
                slots.waiting.remove(&self.holder);
                if put(&*store, key, &slots, version).await? {
                    return Ok(Lease::new(store, key.to_owned(), id));
                }
            } else if marked_until - now < WAITING_TTL.as_millis() as i64 / 2 {
                // Tell the others this process waits: none takes past its share meanwhile.
                let until = now + WAITING_TTL.as_millis() as i64;
                slots.waiting.insert(self.holder.clone(), until);
                if put(&*store, key, &slots, version).await? {
                    marked_until = until;
                }
                continue;
            }
            if started.elapsed() > MAX_WAIT {
                return Err(GraphError::Throttled { attempts: 0 });
            }
            tokio::time::sleep(poll_pause()).await;
        }
    }
}

/// Writes `slots` if the stored version is still `version`; whether it did.
async fn put(
    store: &dyn Store,
    key: &str,
    slots: &Slots,
    version: u64,
) -> Result<bool, GraphError> {
    let doc = serde_json::to_string(slots).unwrap_or_default();
    let expires = Some(time::OffsetDateTime::now_utc().unix_timestamp() + 3600);
    Ok(store
        .put(key, &doc, version, expires)
        .await
        .map_err(unavailable)?
        .is_some())
}

/// Rewrites entry `id` of `key` with `change` (giving it back, renewing it), retrying when
/// another process wrote first. Errors are logged: the entry then lapses on its own.
async fn rewrite(store: &dyn Store, key: &str, id: &str, change: impl Fn(&mut Slots, i64)) {
    for _ in 0..64 {
        let stored = match store.get(key).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(key, error = %e, "mailbox slots not updated; the entry lapses on its own");
                return;
            }
        };
        let Some(stored) = stored else { return };
        let mut slots: Slots = serde_json::from_str(&stored.doc).unwrap_or_default();
        if !slots.held.contains_key(id) {
            return;
        }
        let now = now_ms();
        change(&mut slots, now);
        slots.drop_lapsed(now);
        match put(store, key, &slots, stored.version).await {
            Ok(true) => return,
            Ok(false) => tokio::time::sleep(poll_pause()).await,
            Err(e) => {
                tracing::warn!(key, error = %e, "mailbox slots not updated; the entry lapses on its own");
                return;
            }
        }
    }
}

/// Slots held in the ledger, renewed while held and given back by [`Lease::release`] (or, if
/// dropped unreleased, by a task spawned then).
struct Lease {
    store: Arc<dyn Store>,
    key: String,
    id: String,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Lease {
    fn new(store: Arc<dyn Store>, key: String, id: String) -> Self {
        let renewal = {
            let (store, key, id) = (store.clone(), key.clone(), id.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ENTRY_TTL / 3).await;
                    rewrite(&*store, &key, &id, |slots, now| {
                        if let Some(held) = slots.held.get_mut(&id) {
                            held.until = now + ENTRY_TTL.as_millis() as i64;
                        }
                    })
                    .await;
                }
            })
        };
        Self {
            store,
            key,
            id,
            renewal,
            released: false,
        }
    }

    async fn release(mut self) {
        self.renewal.abort();
        self.released = true;
        let id = self.id.clone();
        rewrite(&*self.store, &self.key, &self.id, move |slots, _| {
            slots.held.remove(&id);
        })
        .await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.renewal.abort();
        let (store, key, id) = (self.store.clone(), self.key.clone(), self.id.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let gone = id.clone();
                rewrite(&*store, &key, &id, move |slots, _| {
                    slots.held.remove(&gone);
                })
                .await;
            });
        }
    }
}

/// Slots of one mailbox held by a request in flight: give them back with
/// [`MailPermit::release`] once it is answered (dropping it gives them back too, the ledger's
/// part from a spawned task).
pub struct MailPermit {
    lease: Option<Lease>,
    _local: OwnedSemaphorePermit,
}

impl MailPermit {
    /// Gives the slots back (the ledger's first, then this process's).
    pub async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
    }
}

/// This process's part of Outlook's concurrent requests per mailbox (see the module's
/// documentation).
pub struct MailSlots {
    share: usize,
    local: Mutex<HashMap<String, Arc<Semaphore>>>,
    shared: Option<Shared>,
}

impl MailSlots {
    /// A process keeping to its share of `4 / workers` (at least one), with no ledger.
    pub fn new(workers: usize) -> Self {
        Self {
            share: (MAILBOX_CONCURRENCY / workers.max(1)).max(1),
            local: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// The same share, with the slots in flight kept in `ledger` for every process: this one
    /// may then use a mailbox's four while no other process waits.
    pub fn shared(mut self, ledger: Ledger) -> Self {
        self.shared = Some(Shared {
            holder: holder_id(ledger.keeps_work_index()),
            ledger,
        });
        self
    }

    /// The same slots for `workers` processes.
    pub fn for_workers(self, workers: usize) -> Self {
        let shared = self.shared;
        Self {
            shared,
            ..Self::new(workers)
        }
    }

    /// Mails to one mailbox in one request or `$batch` at most: this process's share, which it
    /// can always get.
    pub fn per_mailbox(&self) -> usize {
        self.share
    }

    /// Whether the slots are kept in the ledger for every process.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Waits for `count` slots of `mailbox` in `tenant` (at most the share), held until the
    /// permit is released. Without a ledger, this process never holds more than its share;
    /// with one, never more than [`MAILBOX_CONCURRENCY`] are held by all processes together.
    pub async fn take(
        &self,
        tenant: &str,
        mailbox: &str,
        count: usize,
    ) -> Result<MailPermit, GraphError> {
        let count = count.clamp(1, self.share);
        let in_process = if self.shared.is_some() {
            MAILBOX_CONCURRENCY
        } else {
            self.share
        };
        let semaphore = self
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            // A mailbox is an object of its tenant: one address in two tenants is two mailboxes.
            .entry(format!(
                "{}|{}",
                tenant.to_ascii_lowercase(),
                mailbox.to_ascii_lowercase()
            ))
            .or_insert_with(|| Arc::new(Semaphore::new(in_process)))
            .clone();
        let local = match semaphore.acquire_many_owned(count as u32).await {
            Ok(permit) => permit,
            Err(_) => unreachable!("mail slots are never closed"),
        };
        let lease = match &self.shared {
            Some(shared) => {
                let key = format!(
                    "tenant#{}#mailbox#{}",
                    tenant.to_ascii_lowercase(),
                    mailbox.to_ascii_lowercase()
                );
                Some(shared.take(&key, count, self.share).await?)
            }
            None => None,
        };
        Ok(MailPermit {
            lease,
            _local: local,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        Ledger::new(Arc::new(
            crate::ledger::sqlite::SqliteStore::in_memory().unwrap(),
        ))
    }

    #[test]
    fn a_process_borrows_past_its_share_only_while_no_one_waits() {
        let mut slots = Slots::default();
        slots.held.insert(
            "a".into(),
            Held {
                holder: "p".into(),
                count: 2,
                until: i64::MAX,
            },
        );
        assert!(slots.admits("p", 2, 2), "all four, nobody waiting");
        slots.waiting.insert("q".into(), i64::MAX);
        assert!(!slots.admits("p", 2, 2), "q waits: p keeps to its two");
        assert!(slots.admits("q", 2, 2), "q gets its share");
        slots.held.insert(
            "b".into(),
            Held {
                holder: "q".into(),
                count: 2,
                until: i64::MAX,
            },
        );
        assert!(!slots.admits("q", 1, 4), "never past four in all");
        slots.drop_lapsed(0);
        assert_eq!(slots.held.len(), 2);
        slots.held.get_mut("a").unwrap().until = 5;
        slots.drop_lapsed(10);
        assert_eq!(slots.held.len(), 1, "a lapsed entry no longer counts");
    }

    /// Two processes of two workers each on one ledger: never more than four in flight; a
    /// process alone takes all four.
    #[tokio::test]
    async fn slots_in_the_ledger_hold_across_processes() {
        let ledger = ledger();
        let a = Arc::new(MailSlots::new(2).shared(ledger.clone()));
        let b = Arc::new(MailSlots::new(2).shared(ledger.clone()));
        assert_eq!(a.per_mailbox(), 2);
        // Alone, a takes its two and borrows b's.
        let first = a.take("t", "m@x", 2).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(1), a.take("t", "m@x", 2))
            .await
            .expect("a borrows the two b does not use")
            .unwrap();
        // b waits for its share until a gives slots back, and a cannot take more meanwhile.
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.take("t", "m@x", 2).await.map(|p| (p, Instant::now())) })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiting.is_finished(), "four in flight: b waits");
        let released_at = Instant::now();
        first.release().await;
        let (b_permit, got_at) = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("b is served")
            .unwrap()
            .unwrap();
        assert!(got_at >= released_at);
        second.release().await;
        b_permit.release().await;
        // Everything given back: the document holds nothing.
        let stored = ledger
            .store()
            .get("tenant#t#mailbox#m@x")
            .await
            .unwrap()
            .unwrap();
        let slots: Slots = serde_json::from_str(&stored.doc).unwrap();
        assert!(slots.held.is_empty(), "{slots:?}");
    }

    #[tokio::test]
    async fn many_takers_never_hold_more_than_four() {
        let ledger = ledger();
        let processes: Vec<Arc<MailSlots>> = (0..3)
            .map(|_| Arc::new(MailSlots::new(2).shared(ledger.clone())))
            .collect();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for k in 0..12 {
            let (p, in_flight, most) = (processes[k % 3].clone(), in_flight.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let permit = p.take("t", "m@x", 2).await.unwrap();
                let now = in_flight.fetch_add(2, std::sync::atomic::Ordering::SeqCst) + 2;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                in_flight.fetch_sub(2, std::sync::atomic::Ordering::SeqCst);
                permit.release().await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= MAILBOX_CONCURRENCY);
    }
}
