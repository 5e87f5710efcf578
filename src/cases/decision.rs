//! A person's decisions on a case: approve what a rail or report-only held, skip what is left,
//! or ask the worker to try again. Each is recorded with who and why.

use time::OffsetDateTime;

use super::case::{ActionState, Case, CaseAction, CaseStatus, DECISIONS_KEPT, Decision};
use super::policy::{Action, Mode};

/// What an approval released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Approval {
    /// Actions that now run.
    pub released: usize,
    /// Actions added after the approved version, still held for their own approval.
    pub still_held: usize,
}

/// Why a decision cannot be taken, in words that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error(
        "case {case_id} is at plan version {current}: there is no version {asked} to approve; run `cases show {case_id}` and approve the version it shows"
    )]
    UnknownVersion {
        case_id: String,
        asked: u32,
        current: u32,
    },
    #[error(
        "case {case_id} has nothing held or planned in plan version {version} or earlier (status {status}){}",
        if *later > 0 { format!("; {later} action(s) of a later version wait: run `cases show {case_id}` and approve that version") } else { String::new() }
    )]
    NothingToApprove {
        case_id: String,
        version: u32,
        status: &'static str,
        later: usize,
    },
    #[error("case {case_id} is {status}: nothing left to {what}")]
    Closed {
        case_id: String,
        status: &'static str,
        what: &'static str,
    },
}

impl Case {
    /// A person approves the plan version they saw: its held and (report-only) planned
    /// actions are carried out as planned, past the rail that held them. Actions a later
    /// escalation appended (a newer version) stay held: they need their own approval. A later
    /// escalation passes through the rails and the policy's mode again.
    pub fn approve(
        &mut self,
        by: &str,
        reason: &str,
        version: u32,
        now: OffsetDateTime,
    ) -> Result<Approval, DecisionError> {
        if version == 0 || version > self.plan_version {
            return Err(DecisionError::UnknownVersion {
                case_id: self.case_id.clone(),
                asked: version,
                current: self.plan_version,
            });
        }
        let waiting =
            |a: &CaseAction| matches!(a.state, ActionState::Held { .. } | ActionState::Planned);
        let mut released = 0;
        for action in &mut self.actions {
            if waiting(action) && action.planned_in <= version {
                action.state = ActionState::Pending;
                action.approved_by = Some(by.to_owned());
                released += 1;
            }
        }
        let later = self.actions.iter().filter(|a| waiting(a)).count();
        if released == 0 {
            return Err(DecisionError::NothingToApprove {
                case_id: self.case_id.clone(),
                version,
                status: self.status.as_str(),
                later,
            });
        }
        let notified = self
            .actions
            .iter()
            .any(|a| a.action == Action::Notify && matches!(a.state, ActionState::Done { .. }));
        if notified {
            let mut notify = CaseAction::pending(Action::Notify, &format!("approved by {by}"));
            notify.approved_by = Some(by.to_owned());
            notify.planned_in = self.plan_version;
            self.actions.push(notify);
        }
        // What was approved runs (the mode tells readers of the case that it did); the person
        // is the rail, so the blast-radius count does not hold it again.
        self.mode = Mode::Enforce;
        self.admission_due = false;
        self.record(by, "approve", reason, Some(version), now);
        if later > 0 {
            self.note(
                now,
                format!(
                    "{later} action(s) added after plan version {version} stay held: they need their own approval (version {})",
                    self.plan_version
                ),
            );
        }
        self.status = CaseStatus::Open;
        self.closed_at = None;
        Ok(Approval {
            released,
            still_held: later,
        })
    }

    /// A person skips what is left: no further action, the case closes.
    pub fn skip(
        &mut self,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<usize, DecisionError> {
        if self.is_terminal() {
            return Err(DecisionError::Closed {
                case_id: self.case_id.clone(),
                status: self.status.as_str(),
                what: "skip",
            });
        }
        let mut skipped = 0;
        for action in &mut self.actions {
            let open = matches!(
                action.state,
                ActionState::Pending
                    | ActionState::Held { .. }
                    | ActionState::Failed { .. }
                    | ActionState::Planned
            );
            // A password Graph already accepted is delivered still: skipping it would leave the
            // user with a password nobody knows.
            if open && !action.awaits_delivery() {
                action.state = ActionState::Skipped {
                    at: now,
                    reason: format!("skipped by {by}: {reason}"),
                };
                skipped += 1;
            }
        }
        self.record(by, "skip", reason, None, now);
        if self.actions.iter().any(|a| a.awaits_delivery()) {
            self.note(
                now,
                "the temporary password already set is still delivered; the case closes after it",
            );
        } else {
            self.status = CaseStatus::Skipped;
            self.closed_at = Some(now);
        }
        Ok(skipped)
    }

    /// A person asks the worker to try again (after fixing a permission, say).
    pub fn retry(
        &mut self,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(), DecisionError> {
        if !matches!(
            self.status,
            CaseStatus::NeedsOperator | CaseStatus::Retry | CaseStatus::Open | CaseStatus::New
        ) {
            return Err(DecisionError::Closed {
                case_id: self.case_id.clone(),
                status: self.status.as_str(),
                what: "retry",
            });
        }
        for action in &mut self.actions {
            if matches!(action.state, ActionState::Failed { .. }) {
                action.state = ActionState::Pending;
            }
        }
        self.record(by, "retry", reason, None, now);
        // A person's retry starts the local retries' count over.
        self.attempts = 0;
        if self.status != CaseStatus::New {
            self.status = CaseStatus::Open;
        }
        self.lease = None;
        Ok(())
    }

    fn record(
        &mut self,
        by: &str,
        decision: &str,
        reason: &str,
        plan_version: Option<u32>,
        now: OffsetDateTime,
    ) {
        self.decisions.push(Decision {
            at: now,
            by: by.to_owned(),
            decision: decision.to_owned(),
            reason: reason.to_owned(),
            plan_version,
        });
        if self.decisions.len() > DECISIONS_KEPT {
            self.decisions.remove(0);
        }
        self.note(now, format!("{decision} by {by}: {reason}"));
    }
}
