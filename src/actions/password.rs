//! Reset the password: a temporary password is **set first** (`PATCH /users/{id}` with
//! `passwordProfile` and `forceChangePasswordNextSignIn`), **then delivered** (mail to the
//! helpdesk and/or the manager, or the case's own Secrets Manager secret): a password that was
//! never set is never handed out. A delivery that fails after the `PATCH` leaves the action
//! failed, saying so, and its retry makes, sets and delivers a new password, so no delivered
//! password is ever stale. A `block_sign_in` due with it goes in the same `PATCH`.
//!
//! Its rails at plan time: a synced user's reset is refused without password writeback;
//! a user who can self-remediate gets SSPR steps instead (when the policy says so); a reset
//! inside the user's cooldown is held. At run time the cooldown is checked again.
//!
//! No password is ever in a case, a log line or a queue message; the password mail is the one
//! text that carries it, and it goes only to the configured delivery channel.

use std::collections::HashMap;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;
use time::OffsetDateTime;

use super::words::{sign_in_lines, who};
use super::{Context, Failure, Job, Ran, Remediation, Step, mail_item, operator};
use crate::cases::Case;
use crate::cases::case::{ActionState, CaseAction};
use crate::cases::findings::{Findings, Registration};
use crate::cases::plan::PlanStep;
use crate::cases::policy::{Action, PasswordDelivery, Policy};
use crate::graph::GraphError;
use crate::graph::api::segment;
use crate::graph::batch::{BatchItem, MAIL_BATCH_MAX};
use crate::support::secret::SecretString;

/// Rail name for the per-user reset cooldown.
pub const RAIL_COOLDOWN: &str = "reset cooldown";
/// Rail name for synced users whose password cannot be reset from the cloud.
pub const RAIL_HYBRID: &str = "hybrid user without password writeback";
/// Why a synced user's reset is refused.
const HYBRID_REASON: &str = "the user is synced from on-premises Active Directory and password \
     writeback is not configured (password_writeback = false): a cloud reset would not take effect";
/// Why a self-remediating user's reset is skipped (the user mail looks for "self-service").
pub const SELF_SERVICE_REASON: &str = "the user is registered for MFA and self-service password \
     reset: they change their own password (SSPR), no admin reset";

/// Where a temporary password goes.
enum Delivery {
    Mail(Vec<String>),
    Vault(String),
}

/// Characters of temporary passwords (no look-alikes: 0 O 1 l I).
const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
const DIGIT: &[u8] = b"23456789";
const SYMBOL: &[u8] = b"!@#$%^&*-_=+?";
/// Length of temporary passwords (Entra requires 8 to 256, three of four classes).
pub const TEMP_PASSWORD_LEN: usize = 20;

fn random_below(n: usize) -> usize {
    // Rejection sampling over u32 keeps the choice uniform.
    let n32 = n as u32;
    let zone = u32::MAX - (u32::MAX % n32);
    loop {
        let mut bytes = [0u8; 4];
        aws_lc_rs::rand::fill(&mut bytes).expect("system RNG available");
        let v = u32::from_le_bytes(bytes);
        if v < zone {
            return (v % n32) as usize;
        }
    }
}

/// A random temporary password holding every character class (upper, lower, digit, symbol).
pub fn generate_temporary_password() -> SecretString {
    let classes = [UPPER, LOWER, DIGIT, SYMBOL];
    let all: Vec<u8> = classes.concat();
    let mut chars: Vec<u8> = classes.iter().map(|c| c[random_below(c.len())]).collect();
    while chars.len() < TEMP_PASSWORD_LEN {
        chars.push(all[random_below(all.len())]);
    }
    for i in (1..chars.len()).rev() {
        chars.swap(i, random_below(i + 1));
    }
    SecretString::new(String::from_utf8(chars).expect("ASCII"))
}

/// The password-delivery mail to the helpdesk or manager, with the sign-ins that were blocked
/// (so whoever hands the password over can check them with the user).
pub fn password_mail(case: &Case, password: &SecretString) -> (String, String) {
    let subject = format!("Temporary password for {}", who(case));
    let mut text = format!(
        "The password of {} was reset after an Identity Protection risk detection (case {}).\n\
         Temporary password (must be changed at next sign-in): {}\n\
         Give it to the user through a verified channel. A later mail for the same case replaces it.\n",
        who(case),
        case.case_id,
        password.expose()
    );
    sign_in_lines(&mut text, case, "", usize::MAX);
    (subject, text)
}

/// Whether the user is synced from on-premises and the policy says password writeback is not
/// set up: neither an admin reset nor self-service password reset reaches Active Directory.
pub fn hybrid_without_writeback(findings: &Findings, policy: &Policy) -> bool {
    findings.user.on_premises_sync_enabled == Some(true) && !policy.password_writeback
}

/// The reset's rails at plan time, on the first pending reset of the step: refused for a synced
/// user without writeback; skipped for a user who can self-remediate (with `notify_user`
/// appended to tell them how); held inside the user's cooldown.
pub fn plan_rail(step: &mut PlanStep<'_>) {
    let Some(i) = step.pending(Action::ResetPassword) else {
        return;
    };
    let (policy, findings, now) = (step.policy, step.findings, step.now);
    let case = &mut *step.case;
    // A contained account (blocked, or confirmed compromised) is not handed back to its user:
    // the admin reset stays.
    let contains = case.actions.iter().any(|a| {
        matches!(a.action, Action::BlockSignIn | Action::ConfirmCompromised)
            && !matches!(a.state, ActionState::Skipped { .. })
    });
    let can_self_remediate = !contains
        && findings
            .registration
            .as_ref()
            .is_some_and(Registration::can_self_remediate);
    let cooldown = time::Duration::hours(i64::from(policy.safety.reset_cooldown_hours));
    let cooling = step.last_reset.filter(|at| now - *at < cooldown);
    if hybrid_without_writeback(findings, policy) {
        case.actions[i].state = ActionState::Skipped {
            at: now,
            reason: HYBRID_REASON.to_owned(),
        };
        case.add_rail(format!("{RAIL_HYBRID}: reset refused"));
        case.note(now, format!("reset_password refused: {HYBRID_REASON}"));
    } else if policy.self_remediation.enabled && can_self_remediate {
        case.actions[i].state = ActionState::Skipped {
            at: now,
            reason: SELF_SERVICE_REASON.to_owned(),
        };
        case.note(
            now,
            format!("reset_password refused: {SELF_SERVICE_REASON}"),
        );
        if !case.actions.iter().any(|a| {
            a.action == Action::NotifyUser && !matches!(a.state, ActionState::Skipped { .. })
        }) {
            let rule = case.actions[i].rule.clone();
            case.actions.push(CaseAction::pending(
                Action::NotifyUser,
                &format!("{rule} (self-remediation)"),
            ));
            step.range.end = case.actions.len();
        }
        case.note(
            now,
            "self-remediation: notify_user with SSPR instructions instead of a reset",
        );
    } else if let Some(last) = cooling {
        let rail = format!(
            "{RAIL_COOLDOWN} until {} (last automatic reset {last}, cooldown {} h)",
            last + cooldown,
            policy.safety.reset_cooldown_hours
        );
        case.actions[i].state = ActionState::Held { rail: rail.clone() };
        case.add_rail(rail.clone());
        case.note(now, format!("reset_password held: {rail}"));
    }
}

/// The module of `reset_password`.
pub struct Password;

#[async_trait]
impl Remediation for Password {
    fn label(&self, _: Action) -> &'static str {
        "reset the password (a temporary one, changed at next sign-in)"
    }

    fn companion(&self) -> Option<Action> {
        Some(Action::BlockSignIn)
    }

    async fn run(
        &self,
        ctx: &Context<'_>,
        _: Action,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        along: &HashMap<usize, usize>,
    ) -> Ran {
        let (results, along) = self.reset_passwords(ctx, tenant, jobs, items, along).await;
        Ran { results, along }
    }
}

impl Password {
    /// Resets passwords: the cooldown rail a second time (the plan held resets inside it;
    /// another case may have reset the user since; a person's approval overrides it), then
    /// where each password goes (a delivery that cannot work sets nothing), then each new
    /// password is set (`$batch` of PATCH, `forceChangePasswordNextSignIn`) and only then
    /// delivered: mail (four to a `$batch`) or the case's vault secret. A delivery that fails
    /// after the password was set leaves the action failed, saying so: its retry makes, sets
    /// and delivers a new password, so no mail ever holds a password that is not the current one.
    ///
    /// `blocks` names, per job, a `block_sign_in` due in the same round: its `accountEnabled:
    /// false` goes in the same PATCH as the password (Graph's Update user takes several
    /// properties at once), and both actions record that request's outcome. Each keeps its own
    /// precondition: an account already blocked gets only the password; a reset that does not
    /// go (the cooldown, no delivery) leaves the block to a PATCH of its own. Returns the
    /// resets' results, and each block's as (job, action index, result).
    #[allow(clippy::type_complexity)]
    async fn reset_passwords(
        &self,
        ctx: &Context<'_>,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        blocks: &HashMap<usize, usize>,
    ) -> (
        Vec<Result<Step, Failure>>,
        Vec<(usize, usize, Result<Step, Failure>)>,
    ) {
        // Each reset's block_sign_in, if one is due with it and the account is not blocked yet.
        let mut block_due: Vec<Option<usize>> = vec![None; items.len()];
        let mut companions: Vec<(usize, usize, Result<Step, Failure>)> = Vec::new();
        for (k, &(j, _)) in items.iter().enumerate() {
            if let Some(&b) = blocks.get(&j) {
                if jobs[j].facts.account_enabled == Some(false) {
                    companions.push((j, b, Ok(Step::Skipped("sign-in is already blocked".into()))));
                } else {
                    block_due[k] = Some(b);
                }
            }
        }
        let now = OffsetDateTime::now_utc();
        let hours = ctx.policy.safety.reset_cooldown_hours;
        let cooldown = time::Duration::hours(i64::from(hours));
        let mut results: Vec<Option<Result<Step, Failure>>> = vec![None; items.len()];
        let mut todo: Vec<usize> = Vec::new();
        for (k, &(j, i)) in items.iter().enumerate() {
            let job = &mut jobs[j];
            if job.case.actions[i].approved_by.is_some() {
                todo.push(k);
                continue;
            }
            match ctx.ledger.user(tenant, &job.case.user_id).await {
                Err(e) => {
                    results[k] = Some(Err(Failure {
                        error: e.to_string(),
                        transient: true,
                        needs_operator: false,
                    }))
                }
                Ok((record, _)) => match record
                    .last_reset_by_another(&job.case.case_id)
                    .filter(|at| now - *at < cooldown)
                {
                    Some(at) => {
                        let rail = format!(
                            "{RAIL_COOLDOWN} until {} (last automatic reset {at}, cooldown {hours} h)",
                            at + cooldown
                        );
                        if !job.case.rails.contains(&rail) {
                            job.case.rails.push(rail.clone());
                        }
                        results[k] = Some(Ok(Step::Skipped(format!(
                            "{rail}: another case reset the password since the plan was made"
                        ))));
                    }
                    None => todo.push(k),
                },
            }
        }
        // Where each password goes, checked before anything is set.
        let mut ready: Vec<(usize, Delivery)> = Vec::new();
        match &ctx.policy.password_delivery {
            None => {
                for k in todo {
                    results[k] = Some(Err(operator("[password_delivery] is not configured")));
                }
            }
            Some(PasswordDelivery::Mail { to, to_manager, .. }) => {
                let managers: Vec<Result<Option<String>, GraphError>> = if *to_manager {
                    let of_jobs: Vec<usize> = todo.iter().map(|&k| items[k].0).collect();
                    ctx.manager_mails(tenant, jobs, &of_jobs).await
                } else {
                    todo.iter().map(|_| Ok(None)).collect()
                };
                for (k, manager) in todo.into_iter().zip(managers) {
                    let mut recipients = to.clone();
                    match manager {
                        Ok(Some(mail)) => recipients.push(mail),
                        Ok(None) => {}
                        Err(e) => {
                            results[k] = Some(Err(Failure::from(e)));
                            continue;
                        }
                    }
                    if recipients.is_empty() {
                        results[k] = Some(Err(operator(
                            "password delivery has no recipient (no manager and no fixed address)",
                        )));
                        continue;
                    }
                    ready.push((k, Delivery::Mail(recipients)));
                }
            }
            Some(PasswordDelivery::SecretsManager { name_prefix, .. }) => {
                for k in todo {
                    if ctx.vault.is_none() {
                        results[k] = Some(Err(operator(
                            "no Secrets Manager client for password delivery",
                        )));
                        continue;
                    }
                    let case = &jobs[items[k].0].case;
                    let name = format!("{name_prefix}{tenant}/{}/{}", case.user_id, case.case_id);
                    ready.push((k, Delivery::Vault(name)));
                }
            }
        }
        // Set first: one PATCH per user, with the block when it is due in this round; a block
        // whose reset does not go is a PATCH of its own.
        let passwords: Vec<SecretString> = ready
            .iter()
            .map(|_| generate_temporary_password())
            .collect();
        let mut patches: Vec<BatchItem> = Vec::with_capacity(ready.len());
        for ((k, _), password) in ready.iter().zip(&passwords) {
            let mut body = json!({
                "passwordProfile": {
                    "forceChangePasswordNextSignIn": true,
                    "password": password.expose(),
                }
            });
            if block_due[*k].is_some() {
                body["accountEnabled"] = json!(false);
            }
            patches.push(BatchItem::new(
                Method::PATCH,
                format!("/users/{}", segment(&jobs[items[*k].0].case.user_id)),
                Some(body),
            ));
        }
        let in_ready: std::collections::HashSet<usize> = ready.iter().map(|(k, _)| *k).collect();
        let blocks_alone: Vec<(usize, usize)> = block_due
            .iter()
            .enumerate()
            .filter(|(k, _)| !in_ready.contains(k))
            .filter_map(|(k, b)| b.map(|b| (k, b)))
            .collect();
        for &(k, _) in &blocks_alone {
            patches.push(BatchItem::new(
                Method::PATCH,
                format!("/users/{}", segment(&jobs[items[k].0].case.user_id)),
                Some(json!({ "accountEnabled": false })),
            ));
        }
        let mut answers = ctx.graph.batch(tenant, &patches).await;
        drop(patches);
        let alone_answers = answers.split_off(ready.len().min(answers.len()));
        for ((k, b), answer) in blocks_alone.into_iter().zip(alone_answers) {
            let j = items[k].0;
            if answer.is_ok() {
                jobs[j].facts.account_enabled = Some(false);
            }
            companions.push((
                j,
                b,
                answer.map(|_| Step::Done(None)).map_err(Failure::from),
            ));
        }
        let mut set: Vec<(usize, Delivery, SecretString)> = Vec::new();
        for (((k, delivery), password), answer) in ready.into_iter().zip(passwords).zip(answers) {
            let (j, _) = items[k];
            if let Some(b) = block_due[k] {
                // One request: the block has the reset's outcome.
                let block = match &answer {
                    Ok(_) => {
                        jobs[j].facts.account_enabled = Some(false);
                        Ok(Step::Done(Some(
                            "in one request with the password reset".into(),
                        )))
                    }
                    Err(e) => Err(Failure::from(e.clone())),
                };
                companions.push((j, b, block));
            }
            let job = &mut jobs[j];
            match answer {
                Ok(_) => {
                    if let Err(e) = ctx
                        .ledger
                        .record_reset(tenant, &job.case.user_id, &job.case.case_id, now)
                        .await
                    {
                        // The reset stands (a retry would set yet another password); what is
                        // lost is the cooldown's memory of it, so it is said where people look:
                        // the case history (audit, `cases show`, the SOC mail) and the log.
                        tracing::error!(case_id = %job.case.case_id, error = %e, "password reset done but its time could not be recorded for the cooldown");
                        job.case.note(
                            now,
                            format!(
                                "reset cooldown not recorded ({e}): a reset by another case \
                                 within the cooldown will not be held"
                            ),
                        );
                    }
                    if let Some(risk) = job.risk.as_mut().filter(|r| r.at_risk()) {
                        risk.risk_state = "remediated".into();
                    }
                    set.push((k, delivery, password));
                }
                // Not set: this password goes nowhere; the retry makes a new one.
                Err(e) => results[k] = Some(Err(Failure::from(e))),
            }
        }
        let set_at = now.replace_nanosecond(0).unwrap_or(now);
        let undelivered = |what: &str, e: &dyn std::fmt::Display| {
            format!(
                "temporary password set at {set_at} (must be changed at next sign-in), but {what} \
                 failed: {e}; the retry sets a new password and delivers that one"
            )
        };
        // Then deliver what was set.
        let sender = match &ctx.policy.password_delivery {
            Some(PasswordDelivery::Mail { sender, .. }) => sender.as_str(),
            _ => "",
        };
        let ttl_hours = match &ctx.policy.password_delivery {
            Some(PasswordDelivery::SecretsManager { ttl_hours, .. }) => *ttl_hours,
            _ => 24,
        };
        let mut mails = Vec::new();
        let mut mailed = Vec::new();
        for (k, delivery, password) in set {
            match delivery {
                Delivery::Mail(recipients) => {
                    let (subject, text) = password_mail(&jobs[items[k].0].case, &password);
                    mails.push(mail_item(sender, &recipients, &subject, &text));
                    mailed.push((k, recipients.len()));
                }
                Delivery::Vault(name) => {
                    let Some(vault) = ctx.vault else {
                        continue;
                    };
                    results[k] = Some(match vault.store(&name, &password, ttl_hours).await {
                        Ok(id) => Ok(Step::Done(Some(format!(
                            "temporary password set at {set_at} (must be changed at next sign-in) and stored in Secrets Manager as {id}"
                        )))),
                        Err(error) => Err(Failure {
                            error: undelivered("storing it in the vault", &error),
                            transient: true,
                            needs_operator: false,
                        }),
                    });
                }
            }
        }
        // The earlier waves' password mails first (every password here is set already).
        if let Some((turns, wave)) = ctx.turn {
            turns.wait(wave).await;
        }
        let answers = ctx.graph.batch_sized(tenant, &mails, MAIL_BATCH_MAX).await;
        ctx.pass_turn();
        drop(mails);
        for ((k, n), answer) in mailed.into_iter().zip(answers) {
            results[k] = Some(match answer {
                Ok(_) => Ok(Step::Done(Some(format!(
                    "temporary password set at {set_at} (must be changed at next sign-in) and mailed to {n} recipient(s)"
                )))),
                Err(e) => Err(Failure {
                    error: undelivered("its mail", &e),
                    transient: e.is_transient(),
                    needs_operator: e.needs_operator() || !e.is_transient(),
                }),
            });
        }
        (
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Ok(Step::Skipped("not attempted".into()))))
                .collect(),
            companions,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_passwords_meet_entra_complexity_and_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = generate_temporary_password();
            let p = p.expose();
            assert_eq!(p.len(), TEMP_PASSWORD_LEN);
            assert!(p.bytes().any(|b| UPPER.contains(&b)));
            assert!(p.bytes().any(|b| LOWER.contains(&b)));
            assert!(p.bytes().any(|b| DIGIT.contains(&b)));
            assert!(p.bytes().any(|b| SYMBOL.contains(&b)));
            assert!(seen.insert(p.to_owned()), "repeated password");
        }
    }
}

#[cfg(test)]
mod plan_tests {
    use crate::actions::Rules;
    use crate::cases::case::{ActionState, Case};
    use crate::cases::findings::Findings;
    use crate::cases::plan::plan_case;
    use crate::cases::plan::tests::now;
    use crate::cases::policy::{Action, Mode, Policy};

    use crate::cases::findings::{Registration, RiskRecord, SignInSummary, UserFacts};

    fn policy(extra: &str) -> Policy {
        let text = crate::cases::policy::DEFAULT_POLICY
            .replace("mode = \"report-only\"", "mode = \"enforce\"");
        // Top-level keys before the first table, tables after.
        let (top, extra) = if extra.starts_with('[') {
            ("", extra)
        } else {
            (extra, "")
        };
        Policy::from_toml(&format!("{top}\n{text}\n{extra}")).unwrap()
    }

    fn findings(synced: bool, registration: Option<Registration>) -> Findings {
        Findings {
            user: UserFacts {
                user_id: "u".into(),
                on_premises_sync_enabled: Some(synced),
                ..UserFacts::default()
            },
            risk: Some(RiskRecord {
                risk_level: "medium".into(),
                risk_state: "atRisk".into(),
                risk_detail: None,
                last_updated: Some(now()),
            }),
            blocked_sign_ins: SignInSummary::empty(now()),
            registration,
            registration_unknown: None,
            protected: None,
            investigated_at: now(),
        }
    }

    fn case() -> Case {
        crate::cases::plan::tests::sentinel_case(Mode::Enforce)
    }

    fn state(c: &Case, action: Action) -> ActionState {
        c.actions
            .iter()
            .find(|a| a.action == action)
            .unwrap()
            .state
            .clone()
    }

    #[test]
    fn a_synced_user_without_writeback_is_not_reset() {
        let mut c = case();
        plan_case(
            &mut c,
            &policy(""),
            &findings(true, None),
            None,
            &Rules,
            now(),
        );
        assert!(
            matches!(state(&c, Action::ResetPassword), ActionState::Skipped { reason, .. } if reason.contains("password writeback"))
        );
        assert!(c.rails.iter().any(|r| r.contains("hybrid")));
        let mut c = case();
        plan_case(
            &mut c,
            &policy("password_writeback = true"),
            &findings(true, None),
            None,
            &Rules,
            now(),
        );
        assert_eq!(state(&c, Action::ResetPassword), ActionState::Pending);
        // The plan says what the reset relies on.
        assert!(
            c.history
                .iter()
                .any(|h| h.what.contains("only through password writeback")),
            "{:#?}",
            c.history
        );
    }

    #[test]
    fn a_registered_user_self_remediates_when_the_policy_says_so() {
        let registered = Registration {
            is_mfa_registered: true,
            is_sspr_registered: true,
            methods_registered: vec!["microsoftAuthenticatorPush".into()],
            capable: None,
        };
        let extra = "[self_remediation]\nenabled = true\n[notify_user]\nsender = \"rr@contoso.com\"\nhelpdesk = \"x\"";
        let mut c = case();
        plan_case(
            &mut c,
            &policy(extra),
            &findings(false, Some(registered.clone())),
            None,
            &Rules,
            now(),
        );
        assert!(matches!(
            state(&c, Action::ResetPassword),
            ActionState::Skipped { .. }
        ));
        assert_eq!(state(&c, Action::NotifyUser), ActionState::Pending);
        // Not registered for SSPR: the admin reset stays.
        let mut c = case();
        let partial = Registration {
            is_sspr_registered: false,
            ..registered.clone()
        };
        plan_case(
            &mut c,
            &policy(extra),
            &findings(false, Some(partial)),
            None,
            &Rules,
            now(),
        );
        assert_eq!(state(&c, Action::ResetPassword), ActionState::Pending);
        // Registered, but the tenant's policies do not let the user use SSPR
        // (`isSsprCapable` false): the admin reset stays.
        let mut c = case();
        let not_capable = Registration {
            capable: Some(crate::cases::findings::Capable {
                mfa: true,
                sspr: false,
            }),
            ..registered
        };
        plan_case(
            &mut c,
            &policy(extra),
            &findings(false, Some(not_capable)),
            None,
            &Rules,
            now(),
        );
        assert_eq!(state(&c, Action::ResetPassword), ActionState::Pending);
    }
}

#[cfg(test)]
mod escalation_tests {
    //! Escalation passes the appended actions through every rail the first plan passed.
    use crate::actions::Rules;
    use crate::cases::case::{ActionState, Case, CaseStatus};
    use crate::cases::findings::Findings;
    use crate::cases::plan::tests::now;
    use crate::cases::plan::{RAIL_SKIPPED_CASE, escalate_case, plan_case};
    use crate::cases::policy::{Action, Mode, Policy};
    use crate::event::{EventSource, RiskLevel};

    use crate::cases::findings::{Registration, RiskRecord, SignInSummary, UserFacts};

    fn policy(mode: &str, extra: &str) -> Policy {
        let text = crate::cases::policy::DEFAULT_POLICY
            .replace("mode = \"report-only\"", &format!("mode = \"{mode}\""));
        Policy::from_toml(&format!("{extra}\n{text}")).unwrap()
    }

    fn findings(protected: Option<&str>) -> Findings {
        Findings {
            user: UserFacts {
                user_id: "u".into(),
                ..UserFacts::default()
            },
            risk: Some(RiskRecord {
                risk_level: "medium".into(),
                risk_state: "atRisk".into(),
                risk_detail: None,
                last_updated: Some(now()),
            }),
            blocked_sign_ins: SignInSummary {
                count: 2,
                since: now(),
                newest: Vec::new(),
            },
            registration: None,
            registration_unknown: None,
            protected: protected.map(str::to_owned),
            investigated_at: now(),
        }
    }

    /// A Medium case planned under `policy` with `findings`.
    fn planned(policy: &Policy, findings: &Findings) -> Case {
        let mut c = crate::cases::plan::tests::sentinel_case(policy.mode);
        plan_case(&mut c, policy, findings, None, &Rules, now());
        c
    }

    fn finish_all(c: &mut Case) {
        for a in &mut c.actions {
            if a.state.runnable() {
                a.state = ActionState::Done {
                    at: now(),
                    detail: None,
                };
            }
        }
        c.settle(now());
    }

    fn appended(c: &Case, from: usize) -> Vec<(Action, &'static str)> {
        c.actions[from..]
            .iter()
            .map(|a| (a.action, a.state.word()))
            .collect()
    }

    fn escalate(c: &mut Case, policy: &Policy) -> usize {
        c.risk_level = RiskLevel::High;
        escalate_case(
            c,
            policy,
            RiskLevel::High,
            EventSource::Sentinel,
            None,
            &Rules,
            now(),
        )
    }

    #[test]
    fn a_protected_case_in_retry_holds_what_the_escalation_adds() {
        let policy = policy("enforce", "");
        let mut c = planned(&policy, &findings(Some("listed break-glass account")));
        // Held but its SOC mail failed: status retry.
        let notify = c.actions.len() - 1;
        c.actions[notify].state = ActionState::Failed {
            at: now(),
            error: "503".into(),
            transient: true,
            needs_operator: false,
        };
        c.settle(now());
        assert_eq!(c.status, CaseStatus::Retry);
        let before = c.actions.len();
        assert_eq!(escalate(&mut c, &policy), 3);
        assert_eq!(
            appended(&c, before),
            [
                (Action::BlockSignIn, "held"),
                (Action::ConfirmCompromised, "held"),
                (Action::Notify, "pending"),
            ]
        );
        assert!(!c.admission_due, "nothing that changes the account runs");
    }

    #[test]
    fn an_approved_report_only_case_stays_report_only_for_later_escalations() {
        let policy = policy("report-only", "");
        let mut c = planned(&policy, &findings(None));
        assert!(c.actions.iter().all(|a| a.state == ActionState::Planned));
        c.approve("alice", "validated", now()).unwrap();
        finish_all(&mut c);
        assert_eq!(c.status, CaseStatus::Completed);
        let before = c.actions.len();
        assert_eq!(escalate(&mut c, &policy), 3);
        assert!(
            appended(&c, before).iter().all(|(_, s)| *s == "planned"),
            "{:?}",
            appended(&c, before)
        );
        assert_eq!(c.status, CaseStatus::Completed, "nothing runs");
        // With the policy switched to enforce, the escalation is enforced.
        let mut c = planned(&policy, &findings(None));
        c.approve("alice", "validated", now()).unwrap();
        finish_all(&mut c);
        let enforce = super::escalation_tests::policy("enforce", "");
        escalate(&mut c, &enforce);
        assert_eq!(c.status, CaseStatus::Open);
        assert!(c.admission_due, "the blast-radius rail admits it first");
    }

    #[test]
    fn a_completed_case_reopens_for_what_may_run() {
        let policy = policy("enforce", "");
        let mut c = planned(&policy, &findings(None));
        c.admission_due = false;
        finish_all(&mut c);
        let before = c.actions.len();
        escalate(&mut c, &policy);
        assert_eq!(
            appended(&c, before),
            [
                (Action::BlockSignIn, "pending"),
                (Action::ConfirmCompromised, "pending"),
                (Action::Notify, "pending"),
            ]
        );
        assert_eq!(c.status, CaseStatus::Open);
        assert!(c.closed_at.is_none());
        assert!(c.admission_due);
    }

    #[test]
    fn an_escalated_skipped_case_waits_for_a_person_who_can_approve_or_skip() {
        let policy = policy("enforce", "");
        let mut c = planned(&policy, &findings(None));
        c.skip("alice", "known travel", now()).unwrap();
        let before = c.actions.len();
        escalate(&mut c, &policy);
        assert!(
            appended(&c, before).iter().all(|(_, s)| *s == "held"),
            "{:?}",
            appended(&c, before)
        );
        assert_eq!(c.status, CaseStatus::AwaitingApproval);
        assert!(c.rails.iter().any(|r| r.starts_with(RAIL_SKIPPED_CASE)));
        let mut approved = c.clone();
        // What the person skipped is offered again with what the higher rule adds.
        assert_eq!(approved.approve("bob", "it is real", now()).unwrap(), 5);
        assert_eq!(approved.status, CaseStatus::Open);
        c.skip("bob", "still travel", now()).unwrap();
        assert_eq!(c.status, CaseStatus::Skipped);
    }

    #[test]
    fn escalation_uses_the_users_traits_and_refuses_a_hybrid_reset() {
        // A rule only for synced users: the escalation must see the trait.
        let extra = "";
        let text = crate::cases::policy::DEFAULT_POLICY
            .replace("mode = \"report-only\"", "mode = \"enforce\"")
            .replacen(
                "[[rules]]",
                "[[rules]]\nname = \"synced, high\"\nmin_risk_level = \"high\"\nsynced = true\nactions = [\"revoke_sessions\", \"reset_password\", \"confirm_compromised\", \"notify\"]\n\n[[rules]]",
                1,
            );
        let policy = Policy::from_toml(&format!("{extra}{text}")).unwrap();
        let mut f = findings(None);
        f.user.on_premises_sync_enabled = Some(true);
        let mut c = planned(&policy, &f);
        finish_all(&mut c);
        let before = c.actions.len();
        escalate(&mut c, &policy);
        assert_eq!(c.rules.last().unwrap(), "synced, high");
        let added = appended(&c, before);
        assert!(
            added.contains(&(Action::ResetPassword, "skipped")),
            "{added:?}"
        );
        assert!(added.contains(&(Action::ConfirmCompromised, "pending")));
    }

    #[test]
    fn a_self_remediating_user_keeps_the_risk_and_a_reset_in_the_cooldown_is_held() {
        let text = "[self_remediation]\nenabled = true\n[notify_user]\nsender = \"rr@contoso.com\"\nhelpdesk = \"x\"";
        let mut policy = policy("enforce", "");
        let extra = Policy::from_toml(&format!(
            "mode = \"enforce\"\n[[rules]]\nname = \"m\"\nmin_risk_level = \"medium\"\nactions = [\"revoke_sessions\", \"reset_password\", \"dismiss_risk\", \"notify\"]\n[password_delivery]\nchannel = \"mail\"\nsender = \"a@b.c\"\nto = [\"h@b.c\"]\n[notify]\nsender = \"a@b.c\"\nto = [\"s@b.c\"]\n{text}"
        ))
        .unwrap();
        policy.self_remediation = extra.self_remediation.clone();
        policy.notify_user = extra.notify_user.clone();
        let mut f = findings(None);
        f.blocked_sign_ins.count = 0;
        f.registration = Some(Registration {
            is_mfa_registered: true,
            is_sspr_registered: true,
            methods_registered: Vec::new(),
            capable: None,
        });
        let c = planned(&policy, &f);
        let state = |c: &Case, a: Action| {
            c.actions
                .iter()
                .find(|x| x.action == a)
                .unwrap()
                .state
                .clone()
        };
        assert!(
            matches!(state(&c, Action::DismissRisk), ActionState::Skipped { reason, .. } if reason == crate::actions::risk_feedback::RISK_LEFT)
        );
        assert_eq!(state(&c, Action::NotifyUser), ActionState::Pending);
        // A user reset an hour ago by another case: the reset and its dismiss wait for a person.
        f.registration = None;
        let mut c = Case::open(
            "t",
            "u",
            None,
            c.episode.clone(),
            c.signals.recent[0].clone(),
            RiskLevel::Medium,
            Mode::Enforce,
            now(),
        );
        plan_case(
            &mut c,
            &policy,
            &f,
            Some(now() - time::Duration::hours(1)),
            &Rules,
            now(),
        );
        let reset = state(&c, Action::ResetPassword);
        assert!(
            matches!(&reset, ActionState::Held { rail } if rail.starts_with("reset cooldown until ")),
            "{reset:?}"
        );
        assert_eq!(state(&c, Action::DismissRisk), reset);
        assert_eq!(state(&c, Action::RevokeSessions), ActionState::Pending);
        c.actions[0].state = ActionState::Done {
            at: now(),
            detail: None,
        };
        c.actions[3].state = ActionState::Done {
            at: now(),
            detail: None,
        };
        c.settle(now());
        assert_eq!(c.status, CaseStatus::AwaitingApproval);
        assert_eq!(c.approve("alice", "user asked for it", now()).unwrap(), 2);
    }
}
