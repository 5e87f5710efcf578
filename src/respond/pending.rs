//! Local retries: what the local server (`serve`, with no SQS to redeliver) finds in its
//! ledger and works again: cases waiting for the worker after a transient failure (with
//! backoff), cases whose worker stopped mid-way (lease ran out), and signals the intake kept
//! but no worker settled (the process stopped). A restart resumes all of it.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::worker::Worker;
use crate::cases::CaseStatus;
use crate::ledger::{Ledger, LedgerError};
use crate::queue::WorkItem;

/// First wait before a failed case is tried again; doubled per attempt.
pub const FIRST_BACKOFF: time::Duration = time::Duration::seconds(5);
/// Longest wait between attempts (also how often a case needing an operator is retried).
pub const MAX_BACKOFF: time::Duration = time::Duration::minutes(5);
/// A signal kept this long ago and still unsettled is worked again.
pub const UNSETTLED_AFTER: time::Duration = time::Duration::seconds(30);

/// When a case that failed `attempts` times may be tried again.
pub fn backoff(attempts: u32) -> time::Duration {
    let doublings = attempts.saturating_sub(1).min(10);
    (FIRST_BACKOFF * 2_i32.pow(doublings)).min(MAX_BACKOFF)
}

/// The work due now: cases to resume and signals to merge again.
pub async fn pending_work(
    ledger: &Ledger,
    now: OffsetDateTime,
    limit: usize,
) -> Result<Vec<WorkItem>, LedgerError> {
    let mut items = Vec::new();
    for case in ledger.cases(limit).await? {
        if !case.needs_worker() {
            continue;
        }
        if case.lease.as_ref().is_some_and(|l| l.until > now) {
            continue;
        }
        let wait = match case.status {
            CaseStatus::NeedsOperator => MAX_BACKOFF,
            CaseStatus::Retry => backoff(case.attempts),
            // New or open without a lease: a worker stopped before it finished.
            _ => UNSETTLED_AFTER,
        };
        if now - case.updated_at >= wait {
            items.push(WorkItem::Resume {
                tenant_id: case.tenant_id.clone(),
                case_id: case.case_id.clone(),
            });
        }
    }
    for record in ledger.signals(limit).await? {
        let unsettled = record.case_id.is_none() && record.disposition.is_none();
        if unsettled && now - record.received_at >= UNSETTLED_AFTER {
            items.push(WorkItem::Risk(record.signal));
        }
    }
    Ok(items)
}

/// Works the pending work every `every`, in the background (the local server's redelivery).
pub fn spawn_local_retries(worker: Arc<Worker>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match pending_work(&worker.ledger, OffsetDateTime::now_utc(), 1000).await {
                Ok(items) if !items.is_empty() => {
                    tracing::info!(items = items.len(), "resuming pending work from the ledger");
                    for chunk in items.chunks(100) {
                        worker.handle_batch(chunk).await;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pending work could not be read"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), time::Duration::seconds(5));
        assert_eq!(backoff(2), time::Duration::seconds(10));
        assert_eq!(backoff(4), time::Duration::seconds(40));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
