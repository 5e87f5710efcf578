//! Merging a signal into its user's case: the open case of the episode, or a new one claimed
//! on the user's record with a conditional write (so a user never has two open cases); the
//! signal raises what the case has been seen at, and the worker escalates the plan.

use super::worker::{Merged, Worker, signal_ref};
use crate::cases::findings::RiskRecord;
use crate::cases::{Case, Placement, place};
use crate::event::RiskEvent;
use crate::ledger::LedgerError;

/// Optimistic-concurrency rounds before a merge is left for retry.
const MAX_CONFLICTS: usize = 32;

impl Worker {
    /// Places `signal` in its user's case (opening one if its episode is new), escalating the
    /// case when the signal's level calls for more.
    pub(super) async fn merge(
        &self,
        tenant: &str,
        signal: &RiskEvent,
        user_id: &str,
        upn: Option<String>,
        risk: Option<&RiskRecord>,
    ) -> Result<Merged, LedgerError> {
        let now = self.graph.now();
        let reference = signal_ref(signal);
        let window = time::Duration::hours(i64::from(self.policy.safety.source_episode_hours));
        let level = match risk.filter(|r| r.at_risk()) {
            Some(risk) => signal.risk_level.max(risk.level()),
            None => signal.risk_level,
        };
        // A redelivered signal that was merged already (its case may keep only the newest few).
        let record = self.ledger.signal(&signal.event_id).await?;
        let arrived = record.as_ref().map(|r| r.received_at);
        if let Some(case_id) = record.and_then(|r| r.case_id)
            && self.ledger.case(&case_id).await?.is_some()
        {
            return Ok(Merged::Case {
                note: format!("merged into case {case_id} before (redelivery)"),
                case_id,
            });
        }
        for _ in 0..MAX_CONFLICTS {
            let (mut user, user_version) = self.ledger.user(tenant, user_id).await?;
            let current = match &user.current_case {
                Some(id) => self.ledger.case(id).await?,
                None => None,
            };
            match place(
                &reference,
                risk,
                current.as_ref().map(|(c, _)| c),
                window,
                now,
            ) {
                Placement::Merge(case_id) => {
                    let Some((mut case, version)) = current.filter(|(c, _)| c.case_id == case_id)
                    else {
                        continue;
                    };
                    if case.has_signal(&signal.event_id) {
                        return Ok(Merged::Case {
                            case_id,
                            note: "merged before (redelivery)".into(),
                        });
                    }
                    case.merge(reference.clone(), now);
                    let mut note = format!("merged into case {case_id}");
                    // The signal raises what the case has been seen at; the worker that works
                    // it next escalates the plan, through every rail (see `escalate`).
                    case.risk_level = case.risk_level.max(level);
                    if let Some(planned) = case.plan_level().filter(|p| level > *p) {
                        note = format!(
                            "merged into case {case_id}, which it raises from {planned:?} to {level:?}: the case is escalated"
                        );
                    }
                    let reopens = case.is_terminal() && case.needs_escalation();
                    let Some(saved) = self.ledger.save_case(&case, version).await? else {
                        continue;
                    };
                    // A closed case this signal reopens is tied to the user record: the write
                    // below fails if a newer case was placed on the user since it was read
                    // (then this merge is taken back and the signal goes to that case), and
                    // once it succeeds, a signal placed after it sees the case reopening.
                    if reopens && self.ledger.save_user(&user, user_version).await?.is_none() {
                        self.take_back(&case_id, saved, &signal.event_id, now)
                            .await?;
                        continue;
                    }
                    return Ok(Merged::Case { case_id, note });
                }
                Placement::Open(episode) => {
                    let mut case = Case::open(
                        tenant,
                        user_id,
                        upn.clone(),
                        episode,
                        reference.clone(),
                        level,
                        self.policy.mode,
                        now,
                    );
                    case.first_signal_at = arrived;
                    let case_id = case.case_id.clone();
                    let created = self.ledger.save_case(&case, 0).await?;
                    user.current_case = Some(case_id.clone());
                    if self.ledger.save_user(&user, user_version).await?.is_none() {
                        // Another signal got to the user first: merge into its case instead.
                        if created.is_some() {
                            self.ledger.discard_case(&case_id, 1).await?;
                        }
                        continue;
                    }
                    if created.is_some() {
                        return Ok(Merged::Case {
                            case_id: case_id.clone(),
                            note: format!("opened case {case_id}"),
                        });
                    }
                    // The episode's case exists already: the next round merges into it.
                }
                Placement::NoCase(reason) => return Ok(Merged::NoCase(reason)),
            }
        }
        Err(LedgerError(format!(
            "user {user_id}'s case kept changing; left for retry"
        )))
    }

    /// Takes back the escalation a merge into closed case `case_id` asked for, when a newer
    /// case of the user was placed meanwhile: the case stays closed and says so (the signal is
    /// placed again, into the newer case).
    async fn take_back(
        &self,
        case_id: &str,
        saved: u64,
        signal_id: &str,
        now: time::OffsetDateTime,
    ) -> Result<(), LedgerError> {
        let mut version = saved;
        for _ in 0..MAX_CONFLICTS {
            let Some((mut case, current)) = self.ledger.case(case_id).await? else {
                return Ok(());
            };
            if current != version && !case.needs_escalation() {
                return Ok(());
            }
            let (user, _) = self.ledger.user(&case.tenant_id, &case.user_id).await?;
            let newer = user.current_case.unwrap_or_default();
            if newer == case_id {
                // The user record changed for another reason: the escalation stands.
                return Ok(());
            }
            case.decline_escalation(&newer, now);
            case.note(now, format!("signal {signal_id} is placed in case {newer}"));
            match self.ledger.save_case(&case, current).await? {
                Some(_) => return Ok(()),
                None => version = current,
            }
        }
        Err(LedgerError(format!(
            "case {case_id} kept changing while its escalation was taken back; left for retry"
        )))
    }
}
