//! SQLite ledger: the embedded default for the local server, replay and the CLI.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::{Claim, Entry, Ledger, LedgerError, RECORD_RETENTION, Status, payload_hash};
use crate::event::RiskEvent;
use crate::pipeline::Report;

/// A ledger in one SQLite file (or in memory).
pub struct SqliteLedger {
    conn: Mutex<Connection>,
}

fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError(e.to_string())
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Self::init(Connection::open(path).map_err(err)?)
    }

    /// A ledger that lives in memory.
    pub fn in_memory() -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory().map_err(err)?)
    }

    fn init(conn: Connection) -> Result<Self, LedgerError> {
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS ledger (
                 event_id     TEXT PRIMARY KEY,
                 tenant_id    TEXT NOT NULL,
                 status       TEXT NOT NULL,
                 payload_hash TEXT NOT NULL,
                 attempts     INTEGER NOT NULL DEFAULT 0,
                 lease_until  INTEGER NOT NULL DEFAULT 0,
                 received_at  INTEGER NOT NULL,
                 updated_at   INTEGER NOT NULL,
                 expires_at   INTEGER NOT NULL,
                 event        TEXT,
                 report       TEXT
             );
             CREATE INDEX IF NOT EXISTS ledger_updated ON ledger(updated_at);",
        )
        .map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(conn: &Connection, event_id: &str) -> Result<Option<Entry>, LedgerError> {
        conn.query_row(
            "SELECT event_id, tenant_id, status, payload_hash, attempts, received_at, updated_at, event, report
             FROM ledger WHERE event_id = ?1",
            params![event_id],
            row_to_entry,
        )
        .optional()
        .map_err(err)
    }
}

fn row_to_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let status: String = row.get(2)?;
    let ts = |i: usize| -> rusqlite::Result<OffsetDateTime> {
        let secs: i64 = row.get(i)?;
        Ok(OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH))
    };
    let event: Option<String> = row.get(7)?;
    let report: Option<String> = row.get(8)?;
    Ok(Entry {
        event_id: row.get(0)?,
        tenant_id: row.get(1)?,
        status: Status::parse(&status).unwrap_or(Status::Retry),
        payload_hash: row.get(3)?,
        attempts: row.get(4)?,
        received_at: ts(5)?,
        updated_at: ts(6)?,
        event: event.and_then(|e| serde_json::from_str(&e).ok()),
        report: report.and_then(|r| serde_json::from_str(&r).ok()),
    })
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn accept(&self, event: &RiskEvent) -> Result<(), LedgerError> {
        let now = now();
        let json = serde_json::to_string(event).map_err(err)?;
        let conn = self.conn();
        conn.execute(
            "INSERT INTO ledger (event_id, tenant_id, status, payload_hash, received_at, updated_at, expires_at, event)
             VALUES (?1, ?2, 'received', ?3, ?4, ?4, ?5, ?6) ON CONFLICT(event_id) DO NOTHING",
            params![event.event_id, event.tenant_id, payload_hash(event), now, now + RECORD_RETENTION.as_secs() as i64, json],
        )
        .map_err(err)?;
        conn.execute("DELETE FROM ledger WHERE expires_at < ?1", params![now])
            .map_err(err)?;
        Ok(())
    }

    async fn claim(&self, event: &RiskEvent, lease: Duration) -> Result<Claim, LedgerError> {
        let now = now();
        let hash = payload_hash(event);
        let json = serde_json::to_string(event).map_err(err)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute(
            "INSERT INTO ledger (event_id, tenant_id, status, payload_hash, received_at, updated_at, expires_at, event)
             VALUES (?1, ?2, 'received', ?3, ?4, ?4, ?5, ?6) ON CONFLICT(event_id) DO NOTHING",
            params![event.event_id, event.tenant_id, hash, now, now + RECORD_RETENTION.as_secs() as i64, json],
        )
        .map_err(err)?;
        let entry = Self::entry(&tx, &event.event_id)?
            .ok_or_else(|| LedgerError("claimed row vanished".into()))?;
        let lease_until: i64 = tx
            .query_row(
                "SELECT lease_until FROM ledger WHERE event_id = ?1",
                params![event.event_id],
                |r| r.get(0),
            )
            .map_err(err)?;
        let claim = if entry.payload_hash != hash {
            Claim::PayloadMismatch
        } else {
            match entry.status {
                Status::Completed => Claim::Completed(Box::new(entry)),
                Status::InProgress if lease_until >= now => Claim::InProgress,
                _ => {
                    tx.execute(
                        "UPDATE ledger SET status = 'in_progress', lease_until = ?2, attempts = attempts + 1, updated_at = ?3
                         WHERE event_id = ?1",
                        params![event.event_id, now + lease.as_secs() as i64, now],
                    )
                    .map_err(err)?;
                    Claim::Acquired {
                        previous: entry.report.map(Box::new),
                    }
                }
            }
        };
        tx.commit().map_err(err)?;
        Ok(claim)
    }

    async fn complete(&self, event_id: &str, report: &Report) -> Result<(), LedgerError> {
        self.finish(event_id, report, Status::Completed)
    }

    async fn release(&self, event_id: &str, report: &Report) -> Result<(), LedgerError> {
        self.finish(event_id, report, Status::Retry)
    }

    async fn list(&self, limit: usize) -> Result<Vec<Entry>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT event_id, tenant_id, status, payload_hash, attempts, received_at, updated_at, event, report
                 FROM ledger ORDER BY updated_at DESC, event_id LIMIT ?1",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![limit as i64], row_to_entry)
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }
}

impl SqliteLedger {
    fn finish(&self, event_id: &str, report: &Report, status: Status) -> Result<(), LedgerError> {
        let json = serde_json::to_string(report).map_err(err)?;
        let changed = self
            .conn()
            .execute(
                "UPDATE ledger SET status = ?2, report = ?3, lease_until = 0, updated_at = ?4 WHERE event_id = ?1",
                params![event_id, status.as_str(), json, now()],
            )
            .map_err(err)?;
        if changed == 1 {
            Ok(())
        } else {
            Err(LedgerError(format!("no ledger entry {event_id}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_ledger_meets_the_contract() {
        let ledger = SqliteLedger::in_memory().unwrap();
        super::super::contract::run(&ledger, "sqlite").await;
    }
}
