//! Local retries: what the local server (`serve`, with no SQS to redeliver) finds in its
//! ledger's work index and works again: cases waiting for the worker after a transient failure
//! (with backoff, at most [`MAX_LOCAL_ATTEMPTS`] attempts), cases whose worker stopped mid-way
//! (lease ran out) or that a signal raised above their plan, and signals the intake kept but
//! no worker settled (the process stopped; with backoff). A case that needs an operator is
//! left to a person (`cases retry`). A restart resumes all of it, however old.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::worker::Worker;
use crate::cases::CaseStatus;
use crate::ledger::{Ledger, LedgerError, Marked, PendingEntry};
use crate::queue::WorkItem;

/// First wait before a failed case is tried again; doubled per attempt.
pub const FIRST_BACKOFF: time::Duration = time::Duration::seconds(5);
/// Longest wait between attempts.
pub const MAX_BACKOFF: time::Duration = time::Duration::minutes(5);
/// A signal kept this long ago and still unsettled is worked again (then with backoff).
pub const UNSETTLED_AFTER: time::Duration = time::Duration::seconds(30);
/// Attempts at a case in `retry` before the local retries give up and leave it to an
/// operator (SQS stops at the queue's maxReceiveCount and moves the message to the DLQ).
pub const MAX_LOCAL_ATTEMPTS: u32 = 8;
/// A mark older than this whose signal does not exist is cleared (the intake writes the mark
/// just before the signal).
const ORPHAN_MARK_AFTER: i64 = 60;

/// When a case that failed `attempts` times may be tried again.
pub fn backoff(attempts: u32) -> time::Duration {
    let doublings = attempts.saturating_sub(1).min(10);
    (FIRST_BACKOFF * 2_i32.pow(doublings)).min(MAX_BACKOFF)
}

/// When an unsettled signal taken up `attempts` times may be taken up again.
pub fn signal_backoff(attempts: u32) -> time::Duration {
    (UNSETTLED_AFTER * 2_i32.pow(attempts.min(10))).min(MAX_BACKOFF)
}

/// The work due now (at most `limit` items): cases to resume and signals to merge again. The
/// ledger must keep the work index ([`Ledger::with_work_index`]); marks of settled work are
/// cleared on the way, a case in `retry` past [`MAX_LOCAL_ATTEMPTS`] is moved to
/// `needs_operator`, and each signal taken up counts an attempt (its backoff).
pub async fn pending_work(
    ledger: &Ledger,
    now: OffsetDateTime,
    limit: usize,
) -> Result<Vec<WorkItem>, LedgerError> {
    pending_work_of(ledger, now, limit, None).await
}

/// What the local server's process knows of the work in the ledger.
pub struct ThisProcess<'a> {
    /// Whether a signal waits in this process's queue or is being worked from it: it is not
    /// lost, only not settled yet, and working it twice at once would only race the first.
    pub queued: &'a (dyn Fn(&str) -> bool + Sync),
    /// When this process started: work last touched before it was left by a process that
    /// stopped (a signal this process never queued, a case whose lease holder is gone), and
    /// is due at once instead of after [`UNSETTLED_AFTER`].
    pub started: OffsetDateTime,
}

/// [`pending_work`], as the local server's process sees it (see [`ThisProcess`]).
pub async fn pending_work_of(
    ledger: &Ledger,
    now: OffsetDateTime,
    limit: usize,
    this: Option<&ThisProcess<'_>>,
) -> Result<Vec<WorkItem>, LedgerError> {
    let queued = |id: &str| this.is_some_and(|p| (p.queued)(id));
    let started = this.map(|p| p.started);
    if !ledger.keeps_work_index() {
        return Err(LedgerError(
            "local retries need a ledger that keeps the work index".into(),
        ));
    }
    let mut items = Vec::new();
    for entry in ledger.pending_marks().await? {
        if items.len() >= limit {
            break;
        }
        let item = match &entry.marked {
            Marked::Case(id) => due_case(ledger, &entry, id, now, started).await?,
            Marked::Signal(id) if queued(id) => None,
            Marked::Signal(id) => due_signal(ledger, &entry, id, now, started).await?,
        };
        items.extend(item);
    }
    Ok(items)
}

async fn due_case(
    ledger: &Ledger,
    entry: &PendingEntry,
    case_id: &str,
    now: OffsetDateTime,
    started: Option<OffsetDateTime>,
) -> Result<Option<WorkItem>, LedgerError> {
    let Some((mut case, version)) = ledger.case(case_id).await? else {
        ledger.unmark(entry).await?;
        return Ok(None);
    };
    if !case.awaits_worker() {
        // Settled, waiting for a person, or needing an operator. A worker may have reopened
        // it between the read and the unmark: read it again.
        if ledger.unmark(entry).await?
            && let Some((again, _)) = ledger.case(case_id).await?
            && again.awaits_worker()
        {
            ledger.mark_case(case_id).await?;
        }
        return Ok(None);
    }
    if case.lease.as_ref().is_some_and(|l| l.is_held(now)) {
        return Ok(None);
    }
    if case.status == CaseStatus::Retry && case.attempts >= MAX_LOCAL_ATTEMPTS {
        let why = format!(
            "local retries gave up after {} attempts: {}",
            case.attempts,
            case.last_error.as_deref().unwrap_or("-")
        );
        tracing::error!(case_id = %case.case_id, %why, "case left for an operator");
        case.status = CaseStatus::NeedsOperator;
        case.note(now, why.clone());
        case.last_error = Some(why);
        // A conflict means a worker or a person changed it: the next round looks again.
        ledger.save_case(&case, version).await?;
        return Ok(None);
    }
    let left_by_a_stopped_process = started.is_some_and(|s| case.updated_at < s);
    let wait = match case.status {
        CaseStatus::Retry => backoff(case.attempts),
        // New or open without a lease, last touched before this process started: the
        // process that worked it stopped.
        _ if left_by_a_stopped_process => time::Duration::ZERO,
        // New or open without a lease (a worker stopped before it finished), or a case a
        // signal raised above its plan.
        _ => UNSETTLED_AFTER,
    };
    Ok((now - case.updated_at >= wait).then(|| WorkItem::Resume {
        tenant_id: case.tenant_id.clone(),
        case_id: case.case_id.clone(),
    }))
}

async fn due_signal(
    ledger: &Ledger,
    entry: &PendingEntry,
    signal_id: &str,
    now: OffsetDateTime,
    started: Option<OffsetDateTime>,
) -> Result<Option<WorkItem>, LedgerError> {
    let Some(record) = ledger.signal(signal_id).await? else {
        if now.unix_timestamp() - entry.written_at > ORPHAN_MARK_AFTER {
            ledger.unmark(entry).await?;
        }
        return Ok(None);
    };
    if record.case_id.is_some() || record.disposition.is_some() {
        ledger.unmark(entry).await?;
        return Ok(None);
    }
    let since = entry.mark.last_at.unwrap_or(record.received_at);
    let wait = match entry.mark.attempts {
        // Kept, or taken up, by a process that stopped before settling it: this one never
        // queued it, and nobody works it now.
        _ if started.is_some_and(|s| since < s) => time::Duration::ZERO,
        0 => UNSETTLED_AFTER,
        n => signal_backoff(n),
    };
    if now - since < wait {
        return Ok(None);
    }
    // Count the attempt first; a conflict means another round took it up.
    if !ledger.touch_mark(entry, now).await? {
        return Ok(None);
    }
    Ok(Some(WorkItem::Risk(record.signal)))
}

/// Works the pending work every `every`, in the background (the local server's redelivery).
/// The first round runs at once: a restart resumes what the stopped process left.
pub fn spawn_local_retries(
    worker: Arc<Worker>,
    queue: Option<Arc<crate::queue::MemoryQueue>>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let queued = move |signal_id: &str| queue.as_ref().is_some_and(|q| q.holds(signal_id));
        let this = ThisProcess {
            queued: &queued,
            started: OffsetDateTime::now_utc(),
        };
        loop {
            tick.tick().await;
            match pending_work_of(&worker.ledger, OffsetDateTime::now_utc(), 1000, Some(&this))
                .await
            {
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
        assert_eq!(signal_backoff(1), time::Duration::seconds(60));
        assert_eq!(signal_backoff(2), time::Duration::seconds(120));
        assert_eq!(signal_backoff(9), MAX_BACKOFF);
    }
}
