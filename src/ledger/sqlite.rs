//! SQLite store: the embedded default for the local server, replay and the CLI. WAL with
//! `synchronous=NORMAL`; every call runs on a blocking thread; a batch is one transaction;
//! expired documents are deleted by index on a timer, never on the write path.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::{LedgerError, NewItem, Store, Stored};

/// How long a connection waits between tries while another holds the write lock.
const BUSY_STEP: Duration = Duration::from_micros(250);
/// Tries before a write gives up as busy (about 5 s).
const BUSY_ATTEMPTS: i32 = 20_000;

/// Longest a yielding connection waits for the server to be quiet before it goes ahead anyway
/// (see [`SqliteStore::yielding_while`]).
pub const MAX_YIELD: Duration = Duration::from_millis(10);
/// Step of that wait.
const YIELD_STEP: Duration = Duration::from_micros(100);

/// Whether the server is busy (intake has requests in flight): a connection that yields waits
/// while it says so.
pub type BusyProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// A store in one SQLite file (or in memory). Each instance has its own connection: give the
/// intake and the worker one each, so neither waits on the other's connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Set on the connections of background work (the local worker, the upkeep): each call
    /// first waits, up to [`MAX_YIELD`], while intake is busy.
    yield_to: Option<BusyProbe>,
    /// Batches of [`Store::create_all`] waiting to be written: whichever call takes the
    /// connection first writes them all in one transaction (group commit).
    pending: Arc<Mutex<Vec<PendingCreate>>>,
}

/// One caller's batch in a group commit, and where its count of new documents goes.
struct PendingCreate {
    items: Vec<NewItem>,
    done: tokio::sync::oneshot::Sender<Result<usize, String>>,
}

fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError(e.to_string())
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The smallest string greater than every string starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return chars.into_iter().collect();
        }
    }
    String::from(char::MAX)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Self::init(Connection::open(path).map_err(err)?)
    }

    /// A store that lives in memory (one connection).
    pub fn in_memory() -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory().map_err(err)?)
    }

    fn init(mut conn: Connection) -> Result<Self, LedgerError> {
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA cache_size=-32768;
             CREATE TABLE IF NOT EXISTS items (
                 key        TEXT PRIMARY KEY,
                 doc        TEXT NOT NULL,
                 version    INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 expires_at INTEGER
             );
             CREATE INDEX IF NOT EXISTS items_expires ON items(expires_at) WHERE expires_at IS NOT NULL;
             CREATE INDEX IF NOT EXISTS items_updated ON items(updated_at);",
        )
        .map_err(err)?;
        // While another connection writes, wait in short steps: SQLite's own busy timeout
        // sleeps up to 100 ms at a time, which an answer to Graph would wait out whole.
        conn.busy_handler(Some(|attempt: i32| {
            if attempt >= BUSY_ATTEMPTS {
                return false;
            }
            std::thread::sleep(BUSY_STEP);
            true
        }))
        .map_err(err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            yield_to: None,
            pending: Arc::default(),
        })
    }

    /// Makes every call on this connection first wait, in short steps and for at most
    /// [`MAX_YIELD`], while `busy` says the server is answering requests: background work
    /// (the local worker, the upkeep) then neither takes the write lock nor the CPU from an
    /// answer to Graph, yet still makes progress under a steady load.
    pub fn yielding_while(mut self, busy: BusyProbe) -> Self {
        self.yield_to = Some(busy);
        self
    }

    async fn with<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let yield_to = self.yield_to.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(busy) = yield_to {
                let started = Instant::now();
                while busy() && started.elapsed() < MAX_YIELD {
                    std::thread::sleep(YIELD_STEP);
                }
            }
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(err)?
        .map_err(err)
    }

    /// Leaves checkpoints of the write-ahead log to [`SqliteStore::spawn_maintenance`] (or to
    /// the last connection's close), so a commit on this connection never copies the log into
    /// the database and syncs it: intake's answers do not wait for that.
    pub async fn without_auto_checkpoint(self) -> Result<Self, LedgerError> {
        self.with(|conn| conn.execute_batch("PRAGMA wal_autocheckpoint=0;"))
            .await?;
        Ok(self)
    }

    /// Copies what the write-ahead log holds into the database as far as no reader needs it
    /// (`PASSIVE`: never waits for, nor blocks, writers and readers).
    pub async fn checkpoint(&self) -> Result<(), LedgerError> {
        self.with(|conn| conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())))
            .await
    }

    /// Deletes documents whose expiry has passed (uses the `expires_at` index). Returns how many.
    pub async fn expire(&self) -> Result<usize, LedgerError> {
        let now = now();
        self.with(move |conn| {
            conn.execute(
                "DELETE FROM items WHERE expires_at IS NOT NULL AND expires_at < ?1",
                params![now],
            )
        })
        .await
    }

    /// Runs [`SqliteStore::expire`] every `every` in the background.
    pub fn spawn_expiry(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = store.expire().await {
                    tracing::warn!(error = %e, "ledger expiry failed");
                }
            }
        })
    }

    /// The local server's ledger upkeep on this connection, in the background: a passive
    /// checkpoint of the write-ahead log every `checkpoint_every` (the connections that write
    /// leave it to this one), expired documents deleted every `expire_every`.
    pub fn spawn_maintenance(
        &self,
        checkpoint_every: Duration,
        expire_every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut checkpoint = tokio::time::interval(checkpoint_every);
            let mut expire = tokio::time::interval(expire_every);
            checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = checkpoint.tick() => {
                        if let Err(e) = store.checkpoint().await {
                            tracing::warn!(error = %e, "ledger checkpoint failed");
                        }
                    }
                    _ = expire.tick() => {
                        if let Err(e) = store.expire().await {
                            tracing::warn!(error = %e, "ledger expiry failed");
                        }
                    }
                }
            }
        })
    }
}

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        key: row.get(0)?,
        doc: row.get(1)?,
        version: row.get::<_, i64>(2)? as u64,
        updated_at: row.get(3)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Stored>, LedgerError> {
        let key = key.to_owned();
        self.with(move |conn| {
            conn.query_row(
                "SELECT key, doc, version, updated_at FROM items WHERE key = ?1",
                params![key],
                row,
            )
            .optional()
        })
        .await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Stored>, LedgerError> {
        let keys = keys.to_vec();
        self.with(move |conn| {
            let mut out = Vec::new();
            let mut stmt = conn
                .prepare_cached("SELECT key, doc, version, updated_at FROM items WHERE key = ?1")?;
            for key in &keys {
                if let Some(found) = stmt.query_row(params![key], row).optional()? {
                    out.push(found);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn create_all(&self, items: &[NewItem]) -> Result<usize, LedgerError> {
        if items.is_empty() {
            return Ok(0);
        }
        let (done, created) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PendingCreate {
                items: items.to_vec(),
                done,
            });
        let pending = self.pending.clone();
        // Group commit: whoever holds the connection writes every batch waiting by then in
        // one transaction, so concurrent requests share its pages and its commit. A call that
        // finds its batch taken only waits for the answer.
        self.with(move |conn| {
            let group = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
            if group.is_empty() {
                return Ok(());
            }
            let written = (|| {
                let now = now();
                let tx = conn.transaction()?;
                let mut counts = Vec::with_capacity(group.len());
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO items (key, doc, version, updated_at, expires_at)
                         VALUES (?1, ?2, 1, ?3, ?4) ON CONFLICT(key) DO NOTHING",
                    )?;
                    for batch in &group {
                        let mut created = 0;
                        for item in &batch.items {
                            created +=
                                stmt.execute(params![item.key, item.doc, now, item.expires_at])?;
                        }
                        counts.push(created);
                    }
                }
                tx.commit()?;
                Ok::<_, rusqlite::Error>(counts)
            })();
            // All or nothing: a failed group is rolled back and every caller gets the error.
            match written {
                Ok(counts) => {
                    for (batch, count) in group.into_iter().zip(counts) {
                        let _ = batch.done.send(Ok(count));
                    }
                }
                Err(e) => {
                    for batch in group {
                        let _ = batch.done.send(Err(e.to_string()));
                    }
                }
            }
            Ok(())
        })
        .await?;
        created
            .await
            .map_err(|_| err("the group write ended without an answer"))?
            .map_err(LedgerError)
    }

    async fn put_all(&self, items: &[NewItem]) -> Result<(), LedgerError> {
        if items.is_empty() {
            return Ok(());
        }
        let items = items.to_vec();
        let now = now();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO items (key, doc, version, updated_at, expires_at)
                     VALUES (?1, ?2, 1, ?3, ?4)
                     ON CONFLICT(key) DO UPDATE SET doc = excluded.doc, version = version + 1,
                         updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                )?;
                for item in &items {
                    stmt.execute(params![item.key, item.doc, now, item.expires_at])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        doc: &str,
        expected: u64,
        expires_at: Option<i64>,
    ) -> Result<Option<u64>, LedgerError> {
        let (key, doc) = (key.to_owned(), doc.to_owned());
        let now = now();
        self.with(move |conn| {
            let changed = if expected == 0 {
                conn.execute(
                    "INSERT INTO items (key, doc, version, updated_at, expires_at)
                     VALUES (?1, ?2, 1, ?3, ?4) ON CONFLICT(key) DO NOTHING",
                    params![key, doc, now, expires_at],
                )?
            } else {
                conn.execute(
                    "UPDATE items SET doc = ?2, version = version + 1, updated_at = ?3, expires_at = ?4
                     WHERE key = ?1 AND version = ?5",
                    params![key, doc, now, expires_at, expected as i64],
                )?
            };
            Ok((changed == 1).then_some(expected + 1))
        })
        .await
    }

    async fn delete(&self, key: &str, expected: u64) -> Result<bool, LedgerError> {
        let key = key.to_owned();
        self.with(move |conn| {
            Ok(conn.execute(
                "DELETE FROM items WHERE key = ?1 AND version = ?2",
                params![key, expected as i64],
            )? == 1)
        })
        .await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<Stored>, LedgerError> {
        let (start, end) = (prefix.to_owned(), prefix_end(prefix));
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, doc, version, updated_at FROM items WHERE key >= ?1 AND key < ?2
                 ORDER BY updated_at DESC, rowid DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![start, end, limit as i64], row)?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_store_meets_the_contract() {
        let store = SqliteStore::in_memory().unwrap();
        super::super::contract::run(&store, "contract#").await;
    }

    #[tokio::test]
    async fn expired_documents_are_deleted_by_the_timer_task_only() {
        let store = SqliteStore::in_memory().unwrap();
        let past = NewItem {
            key: "signal#old".into(),
            doc: "{}".into(),
            expires_at: Some(now() - 10),
        };
        let future = NewItem {
            key: "signal#new".into(),
            doc: "{}".into(),
            expires_at: Some(now() + 3600),
        };
        store.create_all(&[past, future]).await.unwrap();
        assert!(store.get("signal#old").await.unwrap().is_some());
        assert_eq!(store.expire().await.unwrap(), 1);
        assert!(store.get("signal#old").await.unwrap().is_none());
        assert!(store.get("signal#new").await.unwrap().is_some());
    }

    /// Frames in the write-ahead log of `path` (read by a connection of its own).
    fn log_frames(path: &Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_waiting_for_the_connection_are_written_in_one_transaction() {
        let dir = std::env::temp_dir().join(format!("rr-group-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let item = |key: String| NewItem {
            key,
            doc: "{}".into(),
            expires_at: Some(now() + 3600),
        };

        // Ten batches, one after another: ten transactions.
        let one_by_one = dir.join("one-by-one.sqlite");
        let store = SqliteStore::open(&one_by_one)
            .unwrap()
            .without_auto_checkpoint()
            .await
            .unwrap();
        for n in 0..10 {
            let batch = [item(format!("signal#{n}")), item(format!("pending#{n}"))];
            assert_eq!(store.create_all(&batch).await.unwrap(), 2);
        }
        let sequential = log_frames(&one_by_one);

        // The same ten batches arriving while the connection is busy: one transaction.
        let grouped_path = dir.join("grouped.sqlite");
        let store = SqliteStore::open(&grouped_path)
            .unwrap()
            .without_auto_checkpoint()
            .await
            .unwrap();
        let busy = store.conn.lock().unwrap();
        let calls: Vec<_> = (0..10)
            .map(|n| {
                let store = store.clone();
                // One key is in two batches: only the first written creates it.
                let batch = vec![
                    item(format!("signal#{n}")),
                    item(format!("pending#{}", n.min(8))),
                ];
                tokio::spawn(async move { store.create_all(&batch).await })
            })
            .collect();
        // (The calls run on the runtime's worker threads; this one only waits for them.)
        while store.pending.lock().unwrap().len() < 10 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(busy);
        let mut created = 0;
        for call in calls {
            created += call.await.unwrap().unwrap();
        }
        assert_eq!(created, 19, "each key created once");
        assert!(store.pending.lock().unwrap().is_empty());
        assert_eq!(store.list("signal#", 100).await.unwrap().len(), 10);
        let grouped = log_frames(&grouped_path);
        assert!(
            grouped < sequential,
            "one commit writes the shared pages once: {grouped} frames against {sequential}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_yielding_connection_waits_while_the_server_is_busy_then_goes_ahead() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let busy = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(AtomicUsize::new(0));
        let probe: BusyProbe = {
            let (busy, probes) = (busy.clone(), probes.clone());
            Arc::new(move || {
                probes.fetch_add(1, Ordering::SeqCst);
                busy.load(Ordering::SeqCst)
            })
        };
        let store = SqliteStore::in_memory().unwrap().yielding_while(probe);
        // Quiet: asked once, no wait.
        store.get("signal#x").await.unwrap();
        assert_eq!(probes.swap(0, Ordering::SeqCst), 1);
        // Busy for good: it waits in steps, then still answers (bounded by MAX_YIELD).
        busy.store(true, Ordering::SeqCst);
        let started = Instant::now();
        store.get("signal#x").await.unwrap();
        assert!(started.elapsed() >= MAX_YIELD);
        assert!(probes.load(Ordering::SeqCst) > 1);
    }

    #[tokio::test]
    async fn intake_commits_leave_the_log_to_the_maintenance_checkpoint() {
        let dir = std::env::temp_dir().join(format!("rr-wal-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.sqlite");
        let intake = SqliteStore::open(&path)
            .unwrap()
            .without_auto_checkpoint()
            .await
            .unwrap();
        let maintenance = SqliteStore::open(&path).unwrap();
        let wal = || std::fs::metadata(dir.join("ledger.sqlite-wal")).map_or(0, |m| m.len());
        // Far past the 1,000 pages at which a commit would checkpoint by itself.
        for batch in 0..100 {
            let items: Vec<NewItem> = (0..100)
                .map(|i| NewItem {
                    key: format!("signal#{batch}-{i}"),
                    doc: "x".repeat(400),
                    expires_at: Some(now() + 3600),
                })
                .collect();
            intake.create_all(&items).await.unwrap();
        }
        let before = wal();
        // A connection that checkpoints by itself keeps the log near 4 MB.
        assert!(before > 8 * 1024 * 1024, "the log grew: {before}");
        maintenance.checkpoint().await.unwrap();
        // The log is copied into the database; its space is reused from the start, so more
        // writes do not grow it.
        intake
            .create_all(&[NewItem {
                key: "signal#after".into(),
                doc: "{}".into(),
                expires_at: None,
            }])
            .await
            .unwrap();
        assert_eq!(wal(), before, "the log is reused, not grown");
        assert_eq!(
            maintenance.list("signal#", 20_000).await.unwrap().len(),
            10_001
        );
        drop((intake, maintenance));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn a_write_waits_for_another_connections_write_lock_then_lands() {
        let dir = std::env::temp_dir().join(format!("rr-busy-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.sqlite");
        let waiting = SqliteStore::open(&path).unwrap();
        let (locked, release) = std::sync::mpsc::channel::<()>();
        let holder = {
            let path = path.clone();
            std::thread::spawn(move || {
                let conn = Connection::open(&path).unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                locked.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                conn.execute_batch("COMMIT").unwrap();
            })
        };
        release.recv().unwrap();
        let item = NewItem {
            key: "signal#waited".into(),
            doc: "{}".into(),
            expires_at: None,
        };
        assert_eq!(waiting.create_all(&[item]).await.unwrap(), 1);
        holder.join().unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn prefix_ranges_cover_exactly_the_prefix() {
        assert_eq!(prefix_end("case#"), "case$");
        assert!("case#zzz" < prefix_end("case#").as_str());
        assert!("case$" >= prefix_end("case#").as_str());
    }
}
