//! Intake: what an acknowledged signal must be before its sender hears 2xx: recorded in the
//! ledger (the audit of what was received), then handed to the queue. Used by the webhook,
//! the sweep and replay alike.

use std::sync::Arc;

use crate::ingress::signature::{MemoryReplayGuard, ReplayGuard};
use crate::ledger::sqlite::SqliteStore;
use crate::ledger::{Ledger, LedgerError};
use crate::queue::{QueueError, WorkItem, WorkQueue};

/// Where accepted work goes: the ledger (audit of what was received), then the queue.
#[derive(Clone)]
pub struct Intake {
    pub ledger: Ledger,
    pub queue: Arc<dyn WorkQueue>,
    /// Remembers Standard Webhooks ids to refuse replays.
    pub replay_guard: Arc<dyn ReplayGuard>,
}

impl Intake {
    /// An intake over in-process adapters: an in-memory SQLite ledger, a memory queue and
    /// replay guard (local server, replay, tests).
    pub fn in_process(queue: Arc<dyn WorkQueue>) -> Result<Self, LedgerError> {
        Ok(Self {
            ledger: Ledger::new(Arc::new(SqliteStore::in_memory()?)),
            queue,
            replay_guard: Arc::new(MemoryReplayGuard::default()),
        })
    }

    /// Records the signals (one write for the batch) and sends all items; an error means
    /// nothing may be assumed kept. A queue without room refuses before anything is written.
    pub async fn keep(&self, items: &[WorkItem]) -> Result<(), KeepError> {
        if let Some(free) = self.queue.room()
            && free < items.len()
        {
            return Err(KeepError::Full {
                items: items.len(),
                free,
            });
        }
        let signals: Vec<_> = items
            .iter()
            .filter_map(|item| match item {
                WorkItem::Risk(signal) => Some(signal.clone()),
                _ => None,
            })
            .collect();
        self.ledger.keep_signals(&signals).await?;
        if !items.is_empty() {
            self.queue.send(items).await.map_err(|e| match e {
                QueueError::Full { free, .. } => KeepError::Full {
                    items: items.len(),
                    free,
                },
                e => KeepError::Queue(e),
            })?;
        }
        Ok(())
    }
}

/// Why accepted work could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    Queue(QueueError),
    /// Back-pressure from the local queue: the sender should deliver again later.
    #[error("local work queue full: {items} items, room for {free}")]
    Full { items: usize, free: usize },
}
