//! A person's decision on a case, as the CLI (and the console) records it: approve the plan
//! version they saw, skip with a reason, or ask for a retry. The decision is one conditional
//! write on the case: a change by the worker meanwhile (a signal merged, a checkpoint) is read
//! again and the decision applied to it, but a decision someone else recorded meanwhile makes
//! this one fail with a conflict, so two people never both think their decision won.

use time::OffsetDateTime;

use crate::cases::Case;
use crate::cases::decision::{Approval, DecisionError};
use crate::ledger::{Ledger, LedgerError};

/// What a person decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Carry out what plan version `plan_version` (the one the person saw) holds.
    Approve { plan_version: u32 },
    /// Do nothing more; the case closes.
    Skip,
    /// Try the failed actions again.
    Retry,
}

impl Choice {
    /// The word the case records.
    pub fn word(self) -> &'static str {
        match self {
            Choice::Approve { .. } => "approve",
            Choice::Skip => "skip",
            Choice::Retry => "retry",
        }
    }
}

/// A decision that was recorded.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The case as stored with the decision.
    pub case: Case,
    /// What an approval released (`None` for skip and retry).
    pub approval: Option<Approval>,
}

/// Why a decision was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no case {0} (nor a signal with that id merged into a case)")]
    NotFound(String),
    #[error(transparent)]
    Decision(#[from] DecisionError),
    #[error("case {case_id} is being worked on right now (until {until}); try again in a moment")]
    Busy { case_id: String, until: String },
    #[error(
        "case {case_id} was decided by someone else meanwhile ({decision} by {by} at {at}): run `cases show {case_id}` and decide again"
    )]
    Conflict {
        case_id: String,
        decision: String,
        by: String,
        at: String,
    },
    #[error("the reason must say why (it is recorded with the decision)")]
    NoReason,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Optimistic-concurrency rounds against the worker's own writes.
const MAX_CONFLICTS: usize = 16;

/// Records `choice` by `by` for `reason` on the case `id` (a case id, or the id of a signal
/// merged into it).
pub async fn decide(
    ledger: &Ledger,
    id: &str,
    choice: Choice,
    by: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Decided, DecideError> {
    if reason.trim().is_empty() {
        return Err(DecideError::NoReason);
    }
    let (first, _) = ledger
        .find_case(id)
        .await?
        .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
    // The decisions the person's view held: any other one recorded before ours is a conflict.
    let seen = first.decisions.clone();
    let case_id = first.case_id.clone();
    for _ in 0..MAX_CONFLICTS {
        let (mut case, version) = ledger
            .case(&case_id)
            .await?
            .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
        if case.decisions != seen
            && let Some(other) = case.decisions.last()
        {
            return Err(DecideError::Conflict {
                case_id,
                decision: other.decision.clone(),
                by: other.by.clone(),
                at: other.at.to_string(),
            });
        }
        // A skip is taken while a worker holds the case (it stops at its next step); an
        // approval or a retry would be overwritten by the worker's own save.
        if choice != Choice::Skip
            && let Some(lease) = case.lease.as_ref().filter(|l| l.is_held(now))
        {
            return Err(DecideError::Busy {
                case_id,
                until: lease.until.to_string(),
            });
        }
        let approval = match choice {
            Choice::Approve { plan_version } => {
                Some(case.approve(by, reason, plan_version, now)?)
            }
            Choice::Skip => {
                case.skip(by, reason, now)?;
                None
            }
            Choice::Retry => {
                case.retry(by, reason, now)?;
                None
            }
        };
        if ledger.save_case(&case, version).await?.is_some() {
            return Ok(Decided { case, approval });
        }
    }
    Err(DecideError::Ledger(LedgerError(format!(
        "case {case_id} kept changing; try again"
    ))))
}
