//! Remediation: carries out the pending actions of many cases in rounds. Each round takes every
//! case's next action and runs each kind of action for all those cases together (one request
//! for up to 60 users where Graph accepts a list), so a case keeps its own order while a tenant's
//! cases share requests. Every action checks its own precondition first and records why it
//! skipped. Temporary passwords are generated here, delivered before they are set, and never
//! logged or stored.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::notify;
use super::vault::PasswordVault;
use crate::cases::case::{ActionState, Case};
use crate::cases::findings::{RiskRecord, UserFacts};
use crate::cases::policy::{Action, PasswordDelivery, Policy};
use crate::graph::{GraphClient, GraphError};
use crate::ledger::Ledger;
use crate::secrets::SecretString;

/// Users per dismiss/confirmCompromised request (Graph's documented maximum is 60).
pub const RISK_ACTION_BATCH: usize = 60;

/// One case being worked on, with what is known about its user now.
pub struct Job {
    pub case: Case,
    /// The stored version the case was leased at.
    pub version: u64,
    /// The case as leased, to reconcile with concurrent changes when saving.
    pub base: Case,
    /// Directory facts, read in this run.
    pub facts: UserFacts,
    /// Identity Protection's record, read in this run.
    pub risk: Option<RiskRecord>,
    /// An action failed in this run: the case waits for its retry.
    pub stopped: bool,
}

/// What one action did.
enum Step {
    Done(Option<String>),
    Skipped(String),
}

/// Why one action failed.
struct Failure {
    error: String,
    transient: bool,
    needs_operator: bool,
}

impl From<GraphError> for Failure {
    fn from(e: GraphError) -> Self {
        Failure {
            transient: e.is_transient(),
            needs_operator: e.needs_operator() || !e.is_transient(),
            error: e.to_string(),
        }
    }
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

/// Carries out plans.
pub struct Remediator<'a> {
    pub graph: &'a GraphClient,
    pub policy: &'a Policy,
    pub ledger: &'a Ledger,
    pub vault: Option<&'a dyn PasswordVault>,
}

impl Remediator<'_> {
    /// Runs the pending actions of `jobs` (one tenant's cases) until each is done, held, or
    /// stopped by a failure.
    pub async fn run(&self, tenant: &str, jobs: &mut [Job]) {
        loop {
            let mut groups: BTreeMap<Action, Vec<(usize, usize)>> = BTreeMap::new();
            for (j, job) in jobs.iter().enumerate() {
                if job.stopped {
                    continue;
                }
                if let Some(i) = job.case.actions.iter().position(|a| a.state.runnable()) {
                    groups
                        .entry(job.case.actions[i].action)
                        .or_default()
                        .push((j, i));
                }
            }
            if groups.is_empty() {
                return;
            }
            for (action, items) in groups {
                let results = self.run_action(tenant, action, jobs, &items).await;
                let now = OffsetDateTime::now_utc();
                for (&(j, i), result) in items.iter().zip(results) {
                    let job = &mut jobs[j];
                    let entry = &mut job.case.actions[i];
                    entry.attempts += 1;
                    let (state, what) = match result {
                        Ok(Step::Done(detail)) => {
                            let what = format!(
                                "{} done{}",
                                action.as_str(),
                                detail
                                    .as_deref()
                                    .map(|d| format!(": {d}"))
                                    .unwrap_or_default()
                            );
                            (ActionState::Done { at: now, detail }, what)
                        }
                        Ok(Step::Skipped(reason)) => {
                            let what = format!("{} skipped: {reason}", action.as_str());
                            (ActionState::Skipped { at: now, reason }, what)
                        }
                        Err(failure) => {
                            job.stopped = true;
                            job.case.last_error = Some(failure.error.clone());
                            let what = format!("{} failed: {}", action.as_str(), failure.error);
                            (
                                ActionState::Failed {
                                    at: now,
                                    error: failure.error,
                                    transient: failure.transient,
                                    needs_operator: failure.needs_operator,
                                },
                                what,
                            )
                        }
                    };
                    tracing::info!(case_id = %job.case.case_id, tenant_id = %tenant, action = action.as_str(), state = state.word(), "remediation action");
                    entry.state = state;
                    job.case.note(now, what);
                }
            }
        }
    }

    async fn run_action(
        &self,
        tenant: &str,
        action: Action,
        jobs: &mut [Job],
        items: &[(usize, usize)],
    ) -> Vec<Result<Step, Failure>> {
        match action {
            Action::DismissRisk | Action::ConfirmCompromised => {
                self.risk_action(tenant, action, jobs, items).await
            }
            _ => {
                let mut results = Vec::with_capacity(items.len());
                for &(j, _) in items {
                    results.push(self.one(tenant, action, &mut jobs[j]).await);
                }
                results
            }
        }
    }

    /// Dismiss or confirm: skips users whose state makes it pointless, then one request per
    /// [`RISK_ACTION_BATCH`] users.
    async fn risk_action(
        &self,
        tenant: &str,
        action: Action,
        jobs: &mut [Job],
        items: &[(usize, usize)],
    ) -> Vec<Result<Step, Failure>> {
        let mut results: Vec<Option<Result<Step, Failure>>> = Vec::with_capacity(items.len());
        let mut todo = Vec::new();
        for (k, &(j, _)) in items.iter().enumerate() {
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
                Action::DismissRisk => self.graph.dismiss_risk(tenant, &ids).await,
                _ => self.graph.confirm_compromised(tenant, &ids).await,
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

    async fn one(&self, tenant: &str, action: Action, job: &mut Job) -> Result<Step, Failure> {
        let user = job.case.user_id.clone();
        match action {
            Action::RevokeSessions => {
                self.graph.revoke_sign_in_sessions(tenant, &user).await?;
                Ok(Step::Done(None))
            }
            Action::BlockSignIn => {
                if job.facts.account_enabled == Some(false) {
                    return Ok(Step::Skipped("sign-in is already blocked".into()));
                }
                self.graph.set_account_enabled(tenant, &user, false).await?;
                job.facts.account_enabled = Some(false);
                Ok(Step::Done(None))
            }
            Action::UnblockSignIn => {
                if job.facts.account_enabled == Some(true) {
                    return Ok(Step::Skipped("sign-in is already allowed".into()));
                }
                self.graph.set_account_enabled(tenant, &user, true).await?;
                job.facts.account_enabled = Some(true);
                Ok(Step::Done(None))
            }
            Action::ResetPassword => self.reset_password(tenant, job).await,
            Action::Notify => {
                let Some(notify) = &self.policy.notify else {
                    return Err(Failure {
                        error: "[notify] is not configured".into(),
                        transient: false,
                        needs_operator: true,
                    });
                };
                let (subject, text) = notify::soc_mail(&job.case);
                self.graph
                    .send_mail(tenant, &notify.sender, &notify.to, &subject, &text)
                    .await?;
                Ok(Step::Done(Some(format!(
                    "mailed to {} recipient(s)",
                    notify.to.len()
                ))))
            }
            Action::DismissRisk | Action::ConfirmCompromised => {
                unreachable!("risk actions run in bulk")
            }
        }
    }

    async fn reset_password(&self, tenant: &str, job: &mut Job) -> Result<Step, Failure> {
        let ledger_failure = |e: crate::ledger::LedgerError| Failure {
            error: e.to_string(),
            transient: true,
            needs_operator: false,
        };
        let (record, _) = self
            .ledger
            .user(tenant, &job.case.user_id)
            .await
            .map_err(ledger_failure)?;
        let cooldown = time::Duration::hours(i64::from(self.policy.safety.reset_cooldown_hours));
        let now = OffsetDateTime::now_utc();
        if let Some(at) = record.last_reset_at.filter(|at| now - *at < cooldown) {
            let reason = format!(
                "a password was reset automatically at {at} (cooldown {} h): not again so soon",
                self.policy.safety.reset_cooldown_hours
            );
            if !job
                .case
                .rails
                .iter()
                .any(|r| r.starts_with("reset cooldown"))
            {
                job.case
                    .rails
                    .push(format!("reset cooldown: last reset {at}"));
            }
            return Ok(Step::Skipped(reason));
        }
        let password = generate_temporary_password();
        let delivered = self.deliver(tenant, &job.case, &password).await?;
        self.graph
            .reset_password(tenant, &job.case.user_id, &password)
            .await?;
        if let Err(e) = self
            .ledger
            .record_reset(tenant, &job.case.user_id, now)
            .await
        {
            tracing::error!(case_id = %job.case.case_id, error = %e, "password reset done but its time could not be recorded for the cooldown");
        }
        if let Some(risk) = job.risk.as_mut().filter(|r| r.risk_state == "atRisk") {
            risk.risk_state = "remediated".into();
        }
        Ok(Step::Done(Some(delivered)))
    }

    /// Delivers the password through the configured channel; returns where it went (never the
    /// password).
    async fn deliver(
        &self,
        tenant: &str,
        case: &Case,
        password: &SecretString,
    ) -> Result<String, Failure> {
        let operator = |error: String| Failure {
            error,
            transient: false,
            needs_operator: true,
        };
        match &self.policy.password_delivery {
            None => Err(operator("[password_delivery] is not configured".into())),
            Some(PasswordDelivery::Mail {
                sender,
                to,
                to_manager,
            }) => {
                let mut recipients = to.clone();
                if *to_manager
                    && let Some(mail) = self.graph.manager_mail(tenant, &case.user_id).await?
                {
                    recipients.push(mail);
                }
                if recipients.is_empty() {
                    return Err(operator(
                        "password delivery has no recipient (no manager and no fixed address)"
                            .into(),
                    ));
                }
                let (subject, text) = notify::password_mail(case, password);
                self.graph
                    .send_mail(tenant, sender, &recipients, &subject, &text)
                    .await?;
                Ok(format!(
                    "temporary password mailed to {} recipient(s)",
                    recipients.len()
                ))
            }
            Some(PasswordDelivery::SecretsManager {
                name_prefix,
                ttl_hours,
            }) => {
                let vault = self.vault.ok_or_else(|| {
                    operator("no Secrets Manager client for password delivery".into())
                })?;
                let name = format!("{name_prefix}{tenant}/{}/{}", case.user_id, case.case_id);
                let id = vault
                    .store(&name, password, *ttl_hours)
                    .await
                    .map_err(|error| Failure {
                        error: format!("password vault: {error}"),
                        transient: true,
                        needs_operator: false,
                    })?;
                Ok(format!(
                    "temporary password stored in Secrets Manager as {id}"
                ))
            }
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
