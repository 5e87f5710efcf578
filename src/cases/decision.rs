//! A person's decisions on a case: approve what a rail or report-only held, skip what is left,
//! or ask the worker to try again. Each is recorded with who and why.

use time::OffsetDateTime;

use super::case::{ActionState, Case, CaseAction, CaseStatus, DECISIONS_KEPT, Decision};
use super::policy::{Action, Mode};

impl Case {
    /// A person approves: held and (report-only) planned actions are carried out as planned,
    /// past the rail that held them. The approval covers these actions only: a later
    /// escalation passes through the rails and the policy's mode again.
    pub fn approve(
        &mut self,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<usize, String> {
        let mut released = 0;
        for action in &mut self.actions {
            let release = matches!(
                action.state,
                ActionState::Held { .. } | ActionState::Planned
            );
            if release {
                action.state = ActionState::Pending;
                action.approved_by = Some(by.to_owned());
                released += 1;
            }
        }
        if released == 0 {
            return Err(format!(
                "case {} has nothing held or planned to approve (status {})",
                self.case_id,
                self.status.as_str()
            ));
        }
        let notified = self
            .actions
            .iter()
            .any(|a| a.action == Action::Notify && matches!(a.state, ActionState::Done { .. }));
        if notified {
            let mut notify = CaseAction::pending(Action::Notify, &format!("approved by {by}"));
            notify.approved_by = Some(by.to_owned());
            self.actions.push(notify);
        }
        // What was approved runs (the mode tells readers of the case that it did); the person
        // is the rail, so the blast-radius count does not hold it again.
        self.mode = Mode::Enforce;
        self.admission_due = false;
        self.record(by, "approve", reason, now);
        self.status = CaseStatus::Open;
        self.closed_at = None;
        Ok(released)
    }

    /// A person skips what is left: no further action, the case closes.
    pub fn skip(&mut self, by: &str, reason: &str, now: OffsetDateTime) -> Result<usize, String> {
        if self.is_terminal() {
            return Err(format!(
                "case {} is {}: nothing left to skip",
                self.case_id,
                self.status.as_str()
            ));
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
            if open {
                action.state = ActionState::Skipped {
                    at: now,
                    reason: format!("skipped by {by}: {reason}"),
                };
                skipped += 1;
            }
        }
        self.record(by, "skip", reason, now);
        self.status = CaseStatus::Skipped;
        self.closed_at = Some(now);
        Ok(skipped)
    }

    /// A person asks the worker to try again (after fixing a permission, say).
    pub fn retry(&mut self, by: &str, reason: &str, now: OffsetDateTime) -> Result<(), String> {
        if !matches!(
            self.status,
            CaseStatus::NeedsOperator | CaseStatus::Retry | CaseStatus::Open | CaseStatus::New
        ) {
            return Err(format!(
                "case {} is {}: nothing to retry",
                self.case_id,
                self.status.as_str()
            ));
        }
        for action in &mut self.actions {
            if matches!(action.state, ActionState::Failed { .. }) {
                action.state = ActionState::Pending;
            }
        }
        self.record(by, "retry", reason, now);
        // A person's retry starts the local retries' count over.
        self.attempts = 0;
        if self.status != CaseStatus::New {
            self.status = CaseStatus::Open;
        }
        self.lease = None;
        Ok(())
    }

    fn record(&mut self, by: &str, decision: &str, reason: &str, now: OffsetDateTime) {
        self.decisions.push(Decision {
            at: now,
            by: by.to_owned(),
            decision: decision.to_owned(),
            reason: reason.to_owned(),
        });
        if self.decisions.len() > DECISIONS_KEPT {
            self.decisions.remove(0);
        }
        self.note(now, format!("{decision} by {by}: {reason}"));
    }
}
