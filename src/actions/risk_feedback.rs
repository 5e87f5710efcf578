//! Feedback to Identity Protection on its own detection: dismiss the user's risk, or confirm
//! the user compromised (`POST /identityProtection/riskyUsers/dismiss|confirmCompromised`, up
//! to 60 users a request, Identity Protection's budget of 1 request/s per tenant).
//!
//! Its rails: the dismiss follows the password reset, at plan time (a held reset holds it; a
//! refused or self-service reset leaves the risk for the user's own secure password change) and
//! when it runs (no dismiss after a reset that did not happen, unless a person approved it).
//! Neither is given without an Identity Protection record of the user, nor when the user's
//! state makes it pointless.

use std::collections::HashMap;

use async_trait::async_trait;

use super::password::{RAIL_HYBRID, hybrid_without_writeback};
use super::{Context, Failure, Job, Ran, Remediation, Step};
use crate::cases::case::ActionState;
use crate::cases::plan::PlanStep;
use crate::cases::policy::Action;

/// Users per dismiss/confirmCompromised request (Graph's documented maximum is 60).
pub const RISK_ACTION_BATCH: usize = 60;

/// Why a dismiss is skipped when the password is not reset by us.
pub const RISK_LEFT: &str =
    "risk left for the user's own secure password change / Conditional Access";

/// The dismiss's rail at plan time: it follows what became of the reset (the dismiss would
/// otherwise let the user back in with a password that may be stolen).
pub fn plan_rail(step: &mut PlanStep<'_>) {
    let hybrid = hybrid_without_writeback(step.findings, step.policy);
    let now = step.now;
    let case = &mut *step.case;
    let reset_state = case
        .actions
        .iter()
        .rev()
        .find(|a| a.action == Action::ResetPassword)
        .map(|a| a.state.clone());
    for i in step.range.clone() {
        if case.actions[i].action != Action::DismissRisk
            || case.actions[i].state != ActionState::Pending
        {
            continue;
        }
        let state = match &reset_state {
            Some(ActionState::Held { rail }) => ActionState::Held { rail: rail.clone() },
            Some(ActionState::Skipped { .. }) if hybrid => {
                let rail = format!(
                    "{RAIL_HYBRID}: the user's risk stays until a person changes the password \
                     on-premises and approves the dismiss"
                );
                case.add_rail(rail.clone());
                ActionState::Held { rail }
            }
            Some(ActionState::Skipped { .. }) => ActionState::Skipped {
                at: now,
                reason: RISK_LEFT.to_owned(),
            },
            _ => continue,
        };
        case.note(
            now,
            format!(
                "dismiss_risk {}: the password is not reset by us",
                state.word()
            ),
        );
        case.actions[i].state = state;
    }
}

/// The module of `dismiss_risk` and `confirm_compromised`.
pub struct RiskFeedback;

#[async_trait]
impl Remediation for RiskFeedback {
    fn label(&self, action: Action) -> &'static str {
        match action {
            Action::DismissRisk => "dismiss the user's risk in Identity Protection",
            _ => "confirm the user compromised in Identity Protection",
        }
    }

    fn already_done(&self, action: Action, job: &Job) -> Option<String> {
        let state = job.risk.as_ref().map(|r| r.risk_state.as_str());
        let done = match action {
            Action::DismissRisk => state == Some("dismissed"),
            _ => state == Some("confirmedCompromised"),
        };
        done.then(|| {
            format!(
                "riskState found {} by the worker that stopped before recording it",
                state.unwrap_or_default()
            )
        })
    }

    async fn run(
        &self,
        ctx: &Context<'_>,
        action: Action,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        _: &HashMap<usize, usize>,
    ) -> Ran {
        self.risk_action(ctx, tenant, action, jobs, items)
            .await
            .into()
    }
}

impl RiskFeedback {
    /// Dismiss or confirm: skips users whose state makes it pointless, then one request per
    /// [`RISK_ACTION_BATCH`] users.
    async fn risk_action(
        &self,
        ctx: &Context<'_>,
        tenant: &str,
        action: Action,
        jobs: &mut [Job],
        items: &[(usize, usize)],
    ) -> Vec<Result<Step, Failure>> {
        let mut results: Vec<Option<Result<Step, Failure>>> = Vec::with_capacity(items.len());
        let mut todo = Vec::new();
        for (k, &(j, i)) in items.iter().enumerate() {
            let case = &jobs[j].case;
            // The dismiss follows our reset: without it the user would be let back in with a
            // password that may be stolen (a person's approval decides otherwise).
            let unreset = case
                .actions
                .iter()
                .rev()
                .find(|a| a.action == Action::ResetPassword)
                .filter(|a| !matches!(a.state, ActionState::Done { .. }));
            if action == Action::DismissRisk
                && case.actions[i].approved_by.is_none()
                && let Some(reset) = unreset
            {
                results.push(Some(Ok(Step::Skipped(format!(
                    "{RISK_LEFT} (reset_password {})",
                    reset.state.word()
                )))));
                continue;
            }
            let state = jobs[j].risk.as_ref().map(|r| r.risk_state.as_str());
            let skip = match (action, state) {
                (_, None) => Some(
                    "Identity Protection has no record of the user: nothing to dismiss or confirm"
                        .to_owned(),
                ),
                (Action::DismissRisk, Some(s)) if s != "atRisk" => Some(format!(
                    "riskState is {s}: the user is no longer at risk, nothing to dismiss"
                )),
                (Action::ConfirmCompromised, Some("confirmedCompromised")) => {
                    Some("already confirmed compromised".to_owned())
                }
                _ => None,
            };
            match skip {
                Some(reason) => results.push(Some(Ok(Step::Skipped(reason)))),
                None => {
                    results.push(None);
                    todo.push(k);
                }
            }
        }
        for chunk in todo.chunks(RISK_ACTION_BATCH) {
            let owned: Vec<String> = chunk
                .iter()
                .map(|&k| jobs[items[k].0].case.user_id.clone())
                .collect();
            let ids: Vec<&str> = owned.iter().map(String::as_str).collect();
            let outcome = match action {
                Action::DismissRisk => ctx.graph.dismiss_risk(tenant, &ids).await,
                _ => ctx.graph.confirm_compromised(tenant, &ids).await,
            };
            for &k in chunk {
                results[k] = Some(match &outcome {
                    Ok(()) => {
                        let state = if action == Action::DismissRisk {
                            "dismissed"
                        } else {
                            "confirmedCompromised"
                        };
                        if let Some(risk) = jobs[items[k].0].risk.as_mut() {
                            risk.risk_state = state.into();
                        }
                        Ok(Step::Done(Some(format!(
                            "{} user(s) in one request",
                            ids.len()
                        ))))
                    }
                    Err(e) => Err(Failure::from(e.clone())),
                });
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Ok(Step::Skipped("not attempted".into()))))
            .collect()
    }
}
