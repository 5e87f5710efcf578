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
use super::{Context, Failure, Job, Ran, Remediation, Step, finish, mail_item, operator};
use crate::cases::Case;
use crate::cases::case::{ActionState, CaseAction, Intent};
use crate::cases::findings::{Findings, Registration};
use crate::cases::plan::PlanStep;
use crate::cases::policy::{Action, PasswordDelivery, Policy};
use crate::graph::GraphError;
use crate::graph::api::segment;
use crate::graph::batch::{BatchItem, MAIL_BATCH_MAX};
use crate::ledger::ResetClaim;
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
            case.actions.push(CaseAction {
                planned_in: case.plan_version,
                ..CaseAction::pending(Action::NotifyUser, &format!("{rule} (self-remediation)"))
            });
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

/// How far Graph's `lastPasswordChangeDateTime` may lie before an intent's time and still be
/// the reset it announced (the two clocks are Graph's and ours, bounded against Graph's).
const CHANGE_SKEW: time::Duration = time::Duration::minutes(5);

/// The non-repeatable request a reset's intent announces.
const PATCH_REQUEST: &str = "PATCH /users/{id} passwordProfile";

/// A password set and about to be delivered (kept on its job between the round that sets it
/// and the one that delivers it).
pub struct Unsent {
    item: usize,
    delivery: Delivery,
    password: SecretString,
    set_at: OffsetDateTime,
    /// Set by a worker that stopped before delivering it (found on resume).
    recovered: bool,
}

/// The record a password is sealed for: its case and action (it opens for no other).
fn sealed_record(case_id: &str, action: usize) -> String {
    format!("temporary password of case {case_id} action {action}")
}

impl Password {
    /// Resets passwords, each a write-ahead sequence:
    ///
    /// 1. A reset a worker announced (its intent names the `PATCH`) and stopped before
    ///    recording is reconciled against Graph: if `lastPasswordChangeDateTime` moved past the
    ///    intent, the reset went through, and the password it set is delivered from its sealed
    ///    copy; if that copy cannot be had, a new password is set and delivered, and the case
    ///    says both. If the time did not move, nothing was set: the reset starts over.
    /// 2. The cooldown rail as a claim on the user's record (one conditional write: two cases
    ///    never both reset within it; a person's approval overrides it).
    /// 3. Where each password goes, checked before anything is set (a delivery that cannot
    ///    work sets nothing).
    /// 4. New passwords, each sealed beside its case, and the intent stored on the case (a
    ///    conditional save: a case a person skipped meanwhile stops here).
    /// 5. Set (`$batch` of PATCH, `forceChangePasswordNextSignIn`), a `block_sign_in` due in the
    ///    same round in the same PATCH (Graph's Update user takes several properties at once);
    ///    a block whose reset does not go is a PATCH of its own.
    /// 6. Kept on the job (the account is contained: [`Step::Contained`]), and delivered in a
    ///    later round, once the case's other containing actions are done (mail, four to a
    ///    `$batch`, or the case's vault secret); the sealed copy is forgotten once the case
    ///    records the delivery. A delivery that fails leaves the action failed, saying so: its
    ///    retry delivers the same password from its sealed copy (with none, it sets and
    ///    delivers a new one), so no delivered password is ever stale.
    ///
    /// Returns the resets' results, and each block's as (job, action index, result).
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
        let mut results: Vec<Option<Result<Step, Failure>>> = vec![None; items.len()];
        // 0. Passwords this worker set in an earlier round: delivered now.
        let mut held = Vec::new();
        let mut rest = Vec::new();
        for (k, &(j, i)) in items.iter().enumerate() {
            match jobs[j].undelivered.remove(&i) {
                Some(mut entry) => {
                    entry.item = k;
                    held.push(entry);
                }
                None => rest.push(k),
            }
        }
        if !held.is_empty() {
            self.deliver(ctx, tenant, jobs, items, held, &mut results)
                .await;
        }
        // Each reset's block_sign_in, if one is due with it and the account is not blocked yet.
        let mut block_due: Vec<Option<usize>> = vec![None; items.len()];
        let mut companions: Vec<(usize, usize, Result<Step, Failure>)> = Vec::new();
        for &k in &rest {
            let j = items[k].0;
            if let Some(&b) = blocks.get(&j) {
                if jobs[j].facts.account_enabled == Some(false) {
                    companions.push((j, b, Ok(Step::Skipped("sign-in is already blocked".into()))));
                } else {
                    block_due[k] = Some(b);
                }
            }
        }
        let now = ctx.graph.now();
        // 1. What a stopped worker set.
        let (recovered, fresh) = self.recover(ctx, jobs, items, &rest).await;
        // 2. The cooldown, as a claim.
        let todo = self
            .claim_cooldown(ctx, tenant, jobs, items, fresh, &mut results, now)
            .await;
        // 3. Where each password goes (recovered ones go where the policy says now, too).
        let mut ready = self
            .deliveries(ctx, tenant, jobs, items, todo, &mut results)
            .await;
        let recovered: Vec<Unsent> = {
            let mut kept = Vec::new();
            let routes = self
                .deliveries(
                    ctx,
                    tenant,
                    jobs,
                    items,
                    recovered.iter().map(|(k, _, _)| *k).collect(),
                    &mut results,
                )
                .await;
            for ((k, password, set_at), (_, delivery)) in recovered.into_iter().zip(routes) {
                kept.push(Unsent {
                    item: k,
                    delivery,
                    password,
                    set_at,
                    recovered: true,
                });
            }
            kept
        };
        // 4. New passwords, sealed, and the intent stored before the PATCH.
        let passwords = self.announce(ctx, jobs, items, &mut ready, now).await;
        // 5. Set first: one PATCH per user, with the block when it is due in this round.
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
            .filter(|(k, _)| !in_ready.contains(k) && !jobs[items[*k].0].stopped)
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
        let set_at = now.replace_nanosecond(0).unwrap_or(now);
        let mut set: Vec<Unsent> = recovered;
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
                    if let Some(risk) = job.risk.as_mut().filter(|r| r.at_risk()) {
                        risk.risk_state = "remediated".into();
                    }
                    set.push(Unsent {
                        item: k,
                        delivery,
                        password,
                        set_at,
                        recovered: false,
                    });
                }
                // Not set: this password goes nowhere; the retry makes a new one.
                Err(e) => results[k] = Some(Err(Failure::from(e))),
            }
        }
        // 6. The accounts are contained: each password waits on its job for its delivery, in a
        //    later round, once the case's other containing actions are done.
        for entry in set {
            let (j, i) = items[entry.item];
            let job = &mut jobs[j];
            if let Some(intent) = job.case.actions[i].intent.as_mut() {
                intent.set_at = Some(entry.set_at);
            }
            let words = if entry.recovered {
                format!(
                    "temporary password set at {} by a worker that stopped before delivering it; delivery follows",
                    entry.set_at
                )
            } else {
                format!(
                    "temporary password set at {} (must be changed at next sign-in); delivery follows",
                    entry.set_at
                )
            };
            results[entry.item] = Some(Ok(Step::Contained(words)));
            job.undelivered.insert(i, entry);
        }
        (finish(results), companions)
    }

    /// The resets a worker announced (its intent names the PATCH) and stopped before
    /// recording: those Graph shows done whose password could be recovered, as
    /// (item, password, when it was set); every other item, to be reset now.
    async fn recover(
        &self,
        ctx: &Context<'_>,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        todo: &[usize],
    ) -> (Vec<(usize, SecretString, OffsetDateTime)>, Vec<usize>) {
        let mut recovered = Vec::new();
        let mut fresh = Vec::new();
        for &k in todo {
            let (j, i) = items[k];
            let job = &mut jobs[j];
            let Some(intent) = job.case.actions[i]
                .intent
                .clone()
                .filter(|intent| intent.request.is_some())
            else {
                fresh.push(k);
                continue;
            };
            let now = ctx.graph.now();
            let changed = job.facts.password_changed_at.filter(|at| {
                *at >= intent.at - CHANGE_SKEW
                    && intent
                        .password_changed_before
                        .is_none_or(|before| *at > before)
            });
            let Some(changed_at) = changed else {
                job.case.note(
                    now,
                    format!(
                        "reset_password: the worker that announced it at {} stopped before setting it (lastPasswordChangeDateTime has not moved): it is set now",
                        intent.at
                    ),
                );
                fresh.push(k);
                continue;
            };
            let opened = match (ctx.sealer, intent.sealed) {
                (None, _) => Err("no intent_sealing_key is configured".to_owned()),
                (Some(_), false) => Err("it was not kept sealed".to_owned()),
                (Some(sealer), true) => {
                    match ctx.ledger.sealed_intent(&job.case.case_id, i).await {
                        Ok(Some(sealed)) => sealer
                            .open(&sealed, &sealed_record(&job.case.case_id, i))
                            .map_err(|e| e.to_string()),
                        Ok(None) => Err("its sealed copy is gone".to_owned()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            match opened {
                Ok(password) => {
                    job.case.note(
                        now,
                        format!(
                            "reset_password: the password set at {changed_at} by a worker that stopped before delivering it is delivered now"
                        ),
                    );
                    recovered.push((k, password, changed_at));
                }
                Err(why) => {
                    job.case.note(
                        now,
                        format!(
                            "reset_password: a password was set at {changed_at} by a worker that stopped before delivering it, and cannot be recovered ({why}): a new one is set and delivered"
                        ),
                    );
                    job.case.actions[i].intent = None;
                    fresh.push(k);
                }
            }
        }
        (recovered, fresh)
    }

    /// The cooldown rail for `todo`, as a claim on each user's record; those refused get their
    /// result. Returns the items that may reset.
    #[allow(clippy::too_many_arguments)]
    async fn claim_cooldown(
        &self,
        ctx: &Context<'_>,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        todo: Vec<usize>,
        results: &mut [Option<Result<Step, Failure>>],
        now: OffsetDateTime,
    ) -> Vec<usize> {
        let hours = ctx.policy.safety.reset_cooldown_hours;
        let cooldown = time::Duration::hours(i64::from(hours));
        let mut granted = Vec::new();
        for k in todo {
            let (j, i) = items[k];
            let job = &mut jobs[j];
            if job.stopped {
                continue;
            }
            let forced = job.case.actions[i].approved_by.is_some();
            let claim = ctx
                .ledger
                .claim_reset(
                    tenant,
                    &job.case.user_id,
                    &job.case.case_id,
                    cooldown,
                    forced,
                    now,
                )
                .await;
            match claim {
                Ok(ResetClaim::Granted) => granted.push(k),
                Ok(ResetClaim::Held {
                    last_reset_at,
                    by_case,
                }) => {
                    let rail = format!(
                        "{RAIL_COOLDOWN} until {} (last automatic reset {last_reset_at} by case {by_case}, cooldown {hours} h)",
                        last_reset_at + cooldown
                    );
                    job.case.add_rail(rail.clone());
                    results[k] = Some(Ok(Step::Skipped(format!(
                        "{rail}: another case reset the password since the plan was made"
                    ))));
                }
                Err(e) => {
                    results[k] = Some(Err(Failure {
                        error: format!("the reset cooldown could not be claimed: {e}"),
                        transient: true,
                        needs_operator: false,
                    }))
                }
            }
        }
        granted
    }

    /// Where each of `todo`'s passwords goes, checked before anything is set; those that
    /// cannot be delivered get their result.
    async fn deliveries(
        &self,
        ctx: &Context<'_>,
        tenant: &str,
        jobs: &[Job],
        items: &[(usize, usize)],
        todo: Vec<usize>,
        results: &mut [Option<Result<Step, Failure>>],
    ) -> Vec<(usize, Delivery)> {
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
        ready
    }

    /// New passwords for `ready`, each sealed beside its case (when a key is configured), and
    /// the intent stored on each case before its PATCH. A case that could not be saved (a
    /// person skipped it meanwhile, or another worker holds it now) drops out of `ready`.
    async fn announce(
        &self,
        ctx: &Context<'_>,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        ready: &mut Vec<(usize, Delivery)>,
        now: OffsetDateTime,
    ) -> Vec<SecretString> {
        let mut passwords: Vec<SecretString> = Vec::with_capacity(ready.len());
        for (k, _) in ready.iter() {
            let (j, i) = items[*k];
            let password = generate_temporary_password();
            let job = &mut jobs[j];
            let sealed = match ctx.sealer {
                Some(sealer) => match sealer.seal(&password, &sealed_record(&job.case.case_id, i))
                {
                    Ok(sealed) => ctx
                        .ledger
                        .keep_sealed_intent(&job.case.case_id, i, &sealed)
                        .await
                        .map_err(|e| {
                            tracing::warn!(case_id = %job.case.case_id, error = %e, "sealed password not kept: a resumed case would set a new one")
                        })
                        .is_ok(),
                    Err(_) => false,
                },
                None => false,
            };
            job.case.actions[i].intent = Some(Intent {
                at: now,
                by: ctx.holder.to_owned(),
                password_changed_before: job.facts.password_changed_at,
                sealed,
                request: Some(PATCH_REQUEST.to_owned()),
                set_at: None,
            });
            passwords.push(password);
        }
        let which: Vec<usize> = ready.iter().map(|(k, _)| items[*k].0).collect();
        ctx.checkpoints.record(jobs, &which).await;
        let mut kept = Vec::with_capacity(ready.len());
        let mut kept_passwords = Vec::with_capacity(ready.len());
        for ((k, delivery), password) in ready.drain(..).zip(passwords) {
            let (j, i) = items[k];
            let job = &jobs[j];
            // Announced and stored (still this worker's, still to run): it goes ahead.
            if !job.stopped
                && job.case.actions[i]
                    .intent
                    .as_ref()
                    .is_some_and(|x| x.at == now)
            {
                kept.push((k, delivery));
                kept_passwords.push(password);
            }
        }
        *ready = kept;
        kept_passwords
    }

    /// Delivers what was set (mail, or the case's vault secret) and forgets the sealed copies
    /// of what was delivered.
    async fn deliver(
        &self,
        ctx: &Context<'_>,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        set: Vec<Unsent>,
        results: &mut [Option<Result<Step, Failure>>],
    ) {
        let sealed = |jobs: &[Job], k: usize| {
            let (j, i) = items[k];
            jobs[j].case.actions[i]
                .intent
                .as_ref()
                .is_some_and(|intent| intent.sealed)
        };
        let undelivered = |sealed: bool,
                           set_at: OffsetDateTime,
                           what: &str,
                           e: &dyn std::fmt::Display| {
            let retry = if sealed {
                "the retry delivers it from its sealed copy"
            } else {
                "the retry sets a new password and delivers that one"
            };
            format!(
                "temporary password set at {set_at} (must be changed at next sign-in), but {what} \
                 failed: {e}; {retry}"
            )
        };
        let how = |set: &Unsent| {
            if set.recovered {
                format!(
                    "temporary password set at {} by a worker that stopped before delivering it (must be changed at next sign-in)",
                    set.set_at
                )
            } else {
                format!(
                    "temporary password set at {} (must be changed at next sign-in)",
                    set.set_at
                )
            }
        };
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
        let mut delivered = Vec::new();
        for entry in set {
            let k = entry.item;
            match &entry.delivery {
                Delivery::Mail(recipients) => {
                    let (subject, text) = password_mail(&jobs[items[k].0].case, &entry.password);
                    mails.push(mail_item(sender, recipients, &subject, &text));
                    mailed.push((k, recipients.len(), how(&entry), entry.set_at));
                }
                Delivery::Vault(name) => {
                    let Some(vault) = ctx.vault else {
                        continue;
                    };
                    results[k] = Some(match vault.store(name, &entry.password, ttl_hours).await {
                        Ok(id) => {
                            delivered.push(k);
                            Ok(Step::Done(Some(format!(
                                "{} and stored in Secrets Manager as {id}",
                                how(&entry)
                            ))))
                        }
                        Err(error) => Err(Failure {
                            error: undelivered(
                                sealed(jobs, k),
                                entry.set_at,
                                "storing it in the vault",
                                &error,
                            ),
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
        for ((k, n, how, set_at), answer) in mailed.into_iter().zip(answers) {
            results[k] = Some(match answer {
                Ok(_) => {
                    delivered.push(k);
                    Ok(Step::Done(Some(format!(
                        "{how} and mailed to {n} recipient(s)"
                    ))))
                }
                Err(e) => Err(Failure {
                    error: undelivered(sealed(jobs, k), set_at, "its mail", &e),
                    transient: e.is_transient(),
                    needs_operator: e.needs_operator() || !e.is_transient(),
                }),
            });
        }
        // The sealed copies are forgotten once the case has recorded the delivery (a worker
        // stopped in between resumes by delivering the same password again, not by setting
        // another): see `Job::delivered_sealed`.
        for k in delivered {
            let (j, i) = items[k];
            jobs[j].delivered_sealed.push(i);
        }
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
mod plan_tests;
