//! Remediation: carries out the pending actions of many cases in rounds. Each round takes every
//! case's next action and runs each kind of action for all those cases together (one request
//! for up to 60 users where Graph accepts a list), so a case keeps its own order while a tenant's
//! cases share requests. Every action checks its own precondition first and records why it
//! skipped. Temporary passwords are generated here, set first and only then delivered (a
//! password that was never set is never handed out), and never logged or stored in a case.

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

use super::notify;
use super::templates::{Templates, UserMail};
use super::vault::PasswordVault;
use reqwest::Method;
use serde_json::json;

use crate::cases::Case;
use crate::cases::case::ActionState;
use crate::cases::findings::{RiskRecord, UserFacts};
use crate::cases::plan::{RAIL_COOLDOWN, RISK_LEFT};
use crate::cases::policy::{Action, PasswordDelivery, Policy};
use crate::graph::api::segment;
use crate::graph::batch::{BatchItem, MAIL_BATCH_MAX};
use crate::graph::{GraphClient, GraphError};
use crate::ledger::{Ledger, SocMailRecord};
use crate::secrets::SecretString;

/// Users per dismiss/confirmCompromised request (Graph's documented maximum is 60).
pub const RISK_ACTION_BATCH: usize = 60;

/// Cases in one wave. A tenant's cases are remediated in waves that run at once (each its own
/// rounds, so every case is contained at once), the waves delivering their passwords one after
/// another ([`MailTurns`]): a wave's confirm or dismiss (one request for the whole wave: the
/// size of [`RISK_ACTION_BATCH`]) and its SOC digest go while the next wave's password mails
/// are sent, instead of every case's mail waiting for the slowest step of the round.
pub const WAVE: usize = RISK_ACTION_BATCH;

/// The order in which waves send their password mails: wave `n` waits until waves `0..n` have
/// sent theirs (or have none to send), so each wave's mails get a mailbox's slots before the
/// next one's, and the earlier waves go on to their next actions while the later ones mail.
pub struct MailTurns {
    /// The first wave that has not passed its turn, and the later waves that have.
    passed: std::sync::Mutex<(usize, std::collections::BTreeSet<usize>)>,
    next: tokio::sync::watch::Sender<usize>,
}

impl Default for MailTurns {
    fn default() -> Self {
        Self {
            passed: std::sync::Mutex::new((0, std::collections::BTreeSet::new())),
            next: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl MailTurns {
    /// Waits until every wave before `wave` has passed its turn.
    pub async fn wait(&self, wave: usize) {
        let mut next = self.next.subscribe();
        // The sender lives as long as `self`: the wait ends when the turn comes.
        let _ = next.wait_for(|n| *n >= wave).await;
    }

    /// `wave` is done with its password mails (or has none); passing twice changes nothing.
    pub fn pass(&self, wave: usize) {
        let mut passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        passed.1.insert(wave);
        loop {
            let first = passed.0;
            if !passed.1.remove(&first) {
                break;
            }
            passed.0 += 1;
        }
        self.next.send_replace(passed.0);
    }
}

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
#[derive(Clone)]
enum Step {
    Done(Option<String>),
    Skipped(String),
    /// Nothing: the case is another worker's now (this worker's lease ran out), left as it
    /// was stored.
    Untouched,
}

/// Records cases in the ledger in the middle of a round: before a SOC mail is sent, each case
/// it covers is stored saying which mail that is (see [`Remediator::run_round`]).
#[async_trait::async_trait]
pub trait Checkpoints: Sync {
    /// Stores `jobs[j]` for every `j` in `which` (renewing the lease); a job whose lease ran
    /// out, so another worker holds its case, comes back `stopped`.
    async fn record(&self, jobs: &mut [Job], which: &[usize]);
}

/// Where a temporary password goes.
enum Delivery {
    Mail(Vec<String>),
    Vault(String),
}

/// Why one action failed.
#[derive(Clone)]
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
    pub templates: &'a Templates,
    /// The wave these jobs are, and the turns of its tenant's waves: its password mails wait
    /// for the earlier waves' (none: they go at once).
    pub turn: Option<(&'a MailTurns, usize)>,
}

impl Remediator<'_> {
    /// Runs the pending actions of `jobs` (one tenant's cases) until each is done, held, or
    /// stopped by a failure.
    pub async fn run(&self, tenant: &str, jobs: &mut [Job], checkpoints: &dyn Checkpoints) {
        while !self.run_round(tenant, jobs, checkpoints).await.is_empty() {}
    }

    /// Passes this wave's mail turn (see [`MailTurns`]).
    pub fn pass_turn(&self) {
        if let Some((turns, wave)) = self.turn {
            turns.pass(wave);
        }
    }

    /// One round: each case's next runnable action, each kind for all cases together. Returns
    /// what ran, as (job index, action); empty when nothing is left to run.
    ///
    /// A case whose next two runnable actions are `block_sign_in` and `reset_password` (in
    /// either order) has both in this round: one `PATCH /users/{id}` sets `accountEnabled` and
    /// the `passwordProfile` together (see [`Remediator::reset_passwords`]).
    ///
    /// The `notify` of several cases goes as one SOC digest when the policy says so (see
    /// [`Remediator::notify`]); `checkpoints` stores the cases it covers before it is sent.
    pub async fn run_round(
        &self,
        tenant: &str,
        jobs: &mut [Job],
        checkpoints: &dyn Checkpoints,
    ) -> Vec<(usize, Action)> {
        let mut ran = Vec::new();
        let mut groups: BTreeMap<Action, Vec<(usize, usize)>> = BTreeMap::new();
        // Job index -> the index of its block_sign_in that goes with its reset_password.
        let mut blocks_with_reset: HashMap<usize, usize> = HashMap::new();
        for (j, job) in jobs.iter().enumerate() {
            if job.stopped {
                continue;
            }
            let mut runnable = job
                .case
                .actions
                .iter()
                .enumerate()
                .filter(|(_, a)| a.state.runnable());
            let Some((i, first)) = runnable.next() else {
                continue;
            };
            let second = runnable.next().map(|(k, a)| (k, a.action));
            match (first.action, second) {
                (Action::BlockSignIn, Some((r, Action::ResetPassword))) => {
                    groups
                        .entry(Action::ResetPassword)
                        .or_default()
                        .push((j, r));
                    blocks_with_reset.insert(j, i);
                }
                (Action::ResetPassword, Some((b, Action::BlockSignIn))) => {
                    groups
                        .entry(Action::ResetPassword)
                        .or_default()
                        .push((j, i));
                    blocks_with_reset.insert(j, b);
                }
                (action, _) => groups.entry(action).or_default().push((j, i)),
            }
        }
        if groups.is_empty() {
            return ran;
        }
        for (action, items) in groups {
            ran.extend(items.iter().map(|&(j, _)| (j, action)));
            let (results, companions) = if action == Action::ResetPassword {
                self.reset_passwords(tenant, jobs, &items, &blocks_with_reset)
                    .await
            } else {
                (
                    self.run_action(tenant, action, jobs, &items, checkpoints)
                        .await,
                    Vec::new(),
                )
            };
            let now = OffsetDateTime::now_utc();
            for (&(j, i), result) in items.iter().zip(results) {
                record(tenant, &mut jobs[j], i, action, result, now);
            }
            for (j, i, result) in companions {
                ran.push((j, Action::BlockSignIn));
                record(tenant, &mut jobs[j], i, Action::BlockSignIn, result, now);
            }
        }
        ran
    }

    async fn run_action(
        &self,
        tenant: &str,
        action: Action,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        checkpoints: &dyn Checkpoints,
    ) -> Vec<Result<Step, Failure>> {
        let picked: Vec<usize> = items.iter().map(|&(j, _)| j).collect();
        match action {
            Action::DismissRisk | Action::ConfirmCompromised => {
                self.risk_action(tenant, action, jobs, items).await
            }
            Action::RevokeSessions => {
                self.per_user(tenant, jobs, &picked, |job| {
                    Ok(BatchItem::new(
                        Method::POST,
                        format!("/users/{}/revokeSignInSessions", segment(&job.case.user_id)),
                        None,
                    ))
                })
                .await
            }
            Action::BlockSignIn | Action::UnblockSignIn => {
                let enable = action == Action::UnblockSignIn;
                let results = self
                    .per_user(tenant, jobs, &picked, |job| {
                        if job.facts.account_enabled == Some(enable) {
                            return Err(if enable {
                                "sign-in is already allowed"
                            } else {
                                "sign-in is already blocked"
                            });
                        }
                        Ok(BatchItem::new(
                            Method::PATCH,
                            format!("/users/{}", segment(&job.case.user_id)),
                            Some(json!({ "accountEnabled": enable })),
                        ))
                    })
                    .await;
                for (&j, result) in picked.iter().zip(&results) {
                    if matches!(result, Ok(Step::Done(_))) {
                        jobs[j].facts.account_enabled = Some(enable);
                    }
                }
                results
            }
            Action::ResetPassword => {
                self.reset_passwords(tenant, jobs, items, &HashMap::new())
                    .await
                    .0
            }
            Action::Notify => self.notify(tenant, jobs, items, checkpoints).await,
            Action::NotifyUser => self.notify_users(tenant, jobs, &picked).await,
        }
    }

    /// The mail address of each job's user's manager (`None`: no manager, or one without a
    /// mailbox): as read with the user (`$expand=manager`, see
    /// [`crate::respond::investigate::user_facts_bulk`]); for a user read without it,
    /// `GET /users/{id}/manager` through `$batch`.
    async fn manager_mails(
        &self,
        tenant: &str,
        jobs: &[Job],
        of_jobs: &[usize],
    ) -> Vec<Result<Option<String>, GraphError>> {
        let mut out: Vec<Option<Result<Option<String>, GraphError>>> = of_jobs
            .iter()
            .map(|&j| jobs[j].facts.manager.as_ref().map(|m| Ok(m.mail.clone())))
            .collect();
        let unread: Vec<usize> = (0..of_jobs.len()).filter(|&k| out[k].is_none()).collect();
        let requests: Vec<BatchItem> = unread
            .iter()
            .map(|&k| {
                BatchItem::get(format!(
                    "/users/{}/manager?$select=id,mail,userPrincipalName",
                    segment(&jobs[of_jobs[k]].case.user_id)
                ))
            })
            .collect();
        for (k, answer) in unread
            .into_iter()
            .zip(self.graph.batch(tenant, &requests).await)
        {
            out[k] = Some(match answer {
                Ok(v) => Ok(v["mail"].as_str().map(str::to_owned)),
                Err(GraphError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            });
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(GraphError::Decode("manager not read".into()))))
            .collect()
    }

    /// One request per user through `$batch`; `request` gives the request, or why the user's
    /// state makes it pointless (recorded as skipped).
    async fn per_user(
        &self,
        tenant: &str,
        jobs: &[Job],
        picked: &[usize],
        request: impl Fn(&Job) -> Result<BatchItem, &'static str>,
    ) -> Vec<Result<Step, Failure>> {
        let mut results: Vec<Option<Result<Step, Failure>>> = Vec::with_capacity(picked.len());
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        for (k, &j) in picked.iter().enumerate() {
            match request(&jobs[j]) {
                Ok(item) => {
                    results.push(None);
                    batch.push(item);
                    slots.push(k);
                }
                Err(reason) => results.push(Some(Ok(Step::Skipped(reason.to_owned())))),
            }
        }
        for (k, answer) in slots
            .into_iter()
            .zip(self.graph.batch(tenant, &batch).await)
        {
            results[k] = Some(answer.map(|_| Step::Done(None)).map_err(Failure::from));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Ok(Step::Skipped("not attempted".into()))))
            .collect()
    }

    /// The SOC mail: one per case, or, when the policy says `digest` and several cases of the
    /// tenant have their `notify` in this round, one digest listing them all (split at
    /// [`notify::DIGEST_MAX_CASES`] cases and [`notify::DIGEST_MAX_BYTES`]); mails go four to a
    /// `$batch` (Outlook's per-mailbox concurrency). Every case in a mail records that mail's
    /// outcome: all done, referencing it, or all failed and retried.
    ///
    /// Nothing a mail covers is mailed twice, though a worker may stop anywhere: each case is
    /// stored naming its mail before the mail is sent (`checkpoints`; a case whose lease ran
    /// out meanwhile is another worker's and is left out), and once Graph accepts the mail one
    /// ledger write records it, however many cases it covers. A worker that resumes a case
    /// naming a mail asks the ledger first: recorded means sent, and the case is done without
    /// another mail. What is left is the instant between Graph's answer and that one write:
    /// a worker stopped there sends the mail again on resume (never a case without its mail).
    async fn notify(
        &self,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        checkpoints: &dyn Checkpoints,
    ) -> Vec<Result<Step, Failure>> {
        let Some(config) = &self.policy.notify else {
            return items
                .iter()
                .map(|_| Err(operator("[notify] is not configured")))
                .collect();
        };
        let mut results: Vec<Option<Result<Step, Failure>>> = vec![None; items.len()];
        // 1. Mails named before (a worker stopped around their send): sent, if recorded.
        let named: Vec<String> = items
            .iter()
            .filter_map(|&(j, i)| jobs[j].case.actions[i].mail_id.clone())
            .collect();
        if !named.is_empty() {
            match self.ledger.soc_mails_sent(tenant, &named).await {
                Ok(sent) => {
                    for (k, &(j, i)) in items.iter().enumerate() {
                        let case = &jobs[j].case;
                        let Some(id) = &case.actions[i].mail_id else {
                            continue;
                        };
                        if let Some(record) = sent
                            .iter()
                            .find(|r| &r.mail_id == id && r.case_ids.contains(&case.case_id))
                        {
                            results[k] = Some(Ok(Step::Done(Some(format!(
                                "in SOC mail {id} of {} case(s), sent at {} (recorded here by the \
                                 worker that resumed the case)",
                                record.case_ids.len(),
                                record.sent_at
                            )))));
                        }
                    }
                }
                Err(e) => {
                    // Whether it went out is unknown: wait rather than risk a second mail.
                    for (k, &(j, i)) in items.iter().enumerate() {
                        if let Some(id) = &jobs[j].case.actions[i].mail_id {
                            results[k] = Some(Err(Failure {
                                error: format!(
                                    "whether SOC mail {id} was sent cannot be read: {e}"
                                ),
                                transient: true,
                                needs_operator: false,
                            }));
                        }
                    }
                }
            }
        }
        // 2. The others: a mail each, or digests.
        let todo: Vec<usize> = (0..items.len()).filter(|&k| results[k].is_none()).collect();
        let groups: Vec<Vec<usize>> = if config.digest && todo.len() > 1 {
            let sizes: Vec<usize> = todo
                .iter()
                .map(|&k| notify::digest_section(&jobs[items[k].0].case).len())
                .collect();
            notify::pack_digests(&sizes, notify::DIGEST_MAX_CASES, notify::DIGEST_MAX_BYTES)
                .into_iter()
                .map(|mail| mail.into_iter().map(|x| todo[x]).collect())
                .collect()
        } else {
            todo.iter().map(|&k| vec![k]).collect()
        };
        if groups.is_empty() {
            return finish(results);
        }
        // 3. Each case stored naming its mail before anything is sent.
        let mail_ids: Vec<String> = groups
            .iter()
            .map(|_| format!("soc-{}", uuid::Uuid::new_v4().simple()))
            .collect();
        let mut which = Vec::new();
        for (group, id) in groups.iter().zip(&mail_ids) {
            for &k in group {
                let (j, i) = items[k];
                jobs[j].case.actions[i].mail_id = Some(id.clone());
                which.push(j);
            }
        }
        checkpoints.record(jobs, &which).await;
        for &k in groups.iter().flatten() {
            let (j, i) = items[k];
            if jobs[j].stopped {
                // Another worker holds the case now: it is left as this worker last stored it.
                if let Some(stored) = jobs[j].base.actions.get(i).cloned() {
                    jobs[j].case.actions[i] = stored;
                }
                results[k] = Some(Ok(Step::Untouched));
            }
        }
        // 4. The mails; one ledger write for each Graph accepted; then the cases' outcomes.
        let parts = groups.iter().filter(|g| g.len() > 1).count();
        let mut mails = Vec::new();
        let mut sent: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut part = 0;
        for (g, group) in groups.iter().enumerate() {
            let members: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&k| results[k].is_none())
                .collect();
            let (subject, text) = match members.as_slice() {
                [] => continue,
                [one] => notify::soc_mail(&jobs[items[*one].0].case),
                _ => {
                    part += 1;
                    let cases: Vec<&Case> =
                        members.iter().map(|&k| &jobs[items[k].0].case).collect();
                    let sections: Vec<String> =
                        cases.iter().map(|c| notify::digest_section(c)).collect();
                    notify::soc_digest(
                        tenant,
                        &mail_ids[g],
                        &cases,
                        &sections,
                        (parts > 1).then_some((part, parts)),
                    )
                }
            };
            mails.push(mail_item(&config.sender, &config.to, &subject, &text));
            sent.push((g, members));
        }
        let answers = self.graph.batch_sized(tenant, &mails, MAIL_BATCH_MAX).await;
        let now = OffsetDateTime::now_utc();
        for ((g, members), answer) in sent.into_iter().zip(answers) {
            let id = &mail_ids[g];
            match answer {
                Ok(_) => {
                    let record = SocMailRecord {
                        mail_id: id.clone(),
                        case_ids: members
                            .iter()
                            .map(|&k| jobs[items[k].0].case.case_id.clone())
                            .collect(),
                        sent_at: now.replace_nanosecond(0).unwrap_or(now),
                    };
                    if let Err(e) = self.ledger.record_soc_mail(tenant, &record).await {
                        tracing::warn!(tenant_id = %tenant, mail_id = %id, error = %e, "SOC mail sent but not recorded; the cases record it");
                    }
                    let detail = if members.len() == 1 {
                        format!("mailed to {} recipient(s) (SOC mail {id})", config.to.len())
                    } else {
                        format!(
                            "in SOC digest {id} of {} cases, mailed to {} recipient(s)",
                            members.len(),
                            config.to.len()
                        )
                    };
                    for k in members {
                        results[k] = Some(Ok(Step::Done(Some(detail.clone()))));
                    }
                }
                Err(e) => {
                    for k in members {
                        results[k] = Some(Err(Failure::from(e.clone())));
                    }
                }
            }
        }
        finish(results)
    }

    /// Tells each user what happened and what to do, from the operator's templates: at their
    /// mailbox, or (when the plan blocks sign-in or confirms the compromise, so the mailbox is
    /// the thing at risk) at the manager's or the configured address. Never a password.
    async fn notify_users(
        &self,
        tenant: &str,
        jobs: &[Job],
        picked: &[usize],
    ) -> Vec<Result<Step, Failure>> {
        let Some(config) = &self.policy.notify_user else {
            return picked
                .iter()
                .map(|_| Err(operator("[notify_user] is not configured")))
                .collect();
        };
        let mut results: Vec<Option<Result<Step, Failure>>> = vec![None; picked.len()];
        let at_risk_mailbox = |case: &Case| {
            case.actions.iter().any(|a| {
                matches!(a.action, Action::BlockSignIn | Action::ConfirmCompromised)
                    && !matches!(a.state, ActionState::Skipped { .. })
            })
        };
        // Managers, for those whose own mailbox is at risk.
        let need_manager: Vec<usize> = (0..picked.len())
            .filter(|&k| {
                at_risk_mailbox(&jobs[picked[k]].case) && config.when_mailbox_at_risk == "manager"
            })
            .collect();
        let of_jobs: Vec<usize> = need_manager.iter().map(|&k| picked[k]).collect();
        let mut managers: HashMap<usize, Option<String>> = HashMap::new();
        for (k, answer) in need_manager
            .into_iter()
            .zip(self.manager_mails(tenant, jobs, &of_jobs).await)
        {
            match answer {
                Ok(mail) => {
                    managers.insert(k, mail);
                }
                Err(e) => results[k] = Some(Err(Failure::from(e))),
            }
        }
        let delivered_by = match &self.policy.password_delivery {
            Some(PasswordDelivery::Mail {
                to_manager: true, ..
            }) => "your manager or the helpdesk",
            _ => "the helpdesk",
        };
        let mut mails = Vec::new();
        let mut slots = Vec::new();
        for (k, &j) in picked.iter().enumerate() {
            if results[k].is_some() {
                continue;
            }
            let job = &jobs[j];
            let case = &job.case;
            let upn = case
                .user_principal_name
                .clone()
                .or_else(|| job.facts.user_principal_name.clone())
                .unwrap_or_else(|| case.user_id.clone());
            let recipient = if at_risk_mailbox(case) {
                if config.when_mailbox_at_risk == "manager" {
                    managers
                        .get(&k)
                        .cloned()
                        .flatten()
                        .or_else(|| config.when_no_manager.clone())
                } else {
                    Some(config.when_mailbox_at_risk.clone())
                }
            } else {
                job.facts.mail.clone().or_else(|| Some(upn.clone()))
            };
            let Some(recipient) = recipient else {
                results[k] = Some(Ok(Step::Skipped(
                    "the user's mailbox is at risk, they have no manager to tell and \
                     [notify_user] when_no_manager is not set"
                        .into(),
                )));
                continue;
            };
            let done = |a: Action| {
                case.actions
                    .iter()
                    .any(|x| x.action == a && matches!(x.state, ActionState::Done { .. }))
            };
            let self_service = case.actions.iter().any(|a| {
                a.action == Action::ResetPassword
                    && matches!(&a.state, ActionState::Skipped { reason, .. } if reason.contains("self-service"))
            });
            let kind = if done(Action::ResetPassword) {
                UserMail::Reset
            } else if self_service {
                UserMail::SelfService
            } else if done(Action::BlockSignIn) {
                UserMail::Blocked
            } else {
                UserMail::Advisory
            };
            let what: Vec<&str> = case
                .actions
                .iter()
                .filter(|a| matches!(a.state, ActionState::Done { .. }))
                .map(|a| a.action.as_str())
                .collect();
            let what = if what.is_empty() {
                "no change was needed".to_owned()
            } else {
                format!("done: {}", what.join(", "))
            };
            let display = job
                .facts
                .display_name
                .clone()
                .unwrap_or_else(|| upn.clone());
            let (subject, text) = self.templates.render(
                kind,
                &[
                    ("user", upn.as_str()),
                    ("display_name", display.as_str()),
                    ("case_id", case.case_id.as_str()),
                    ("sspr_url", config.sspr_url.as_str()),
                    ("helpdesk", config.helpdesk.as_str()),
                    ("delivered_by", delivered_by),
                    ("what_happened", what.as_str()),
                ],
            );
            mails.push(mail_item(&config.sender, &[recipient], &subject, &text));
            slots.push((k, kind));
        }
        let answers = self.graph.batch_sized(tenant, &mails, MAIL_BATCH_MAX).await;
        for ((k, kind), answer) in slots.into_iter().zip(answers) {
            results[k] = Some(
                answer
                    .map(|_| {
                        Step::Done(Some(format!(
                            "{} mail sent",
                            kind.file().trim_end_matches(".txt")
                        )))
                    })
                    .map_err(Failure::from),
            );
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Ok(Step::Skipped("not attempted".into()))))
            .collect()
    }

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
        let hours = self.policy.safety.reset_cooldown_hours;
        let cooldown = time::Duration::hours(i64::from(hours));
        let mut results: Vec<Option<Result<Step, Failure>>> = vec![None; items.len()];
        let mut todo: Vec<usize> = Vec::new();
        for (k, &(j, i)) in items.iter().enumerate() {
            let job = &mut jobs[j];
            if job.case.actions[i].approved_by.is_some() {
                todo.push(k);
                continue;
            }
            match self.ledger.user(tenant, &job.case.user_id).await {
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
        match &self.policy.password_delivery {
            None => {
                for k in todo {
                    results[k] = Some(Err(operator("[password_delivery] is not configured")));
                }
            }
            Some(PasswordDelivery::Mail { to, to_manager, .. }) => {
                let managers: Vec<Result<Option<String>, GraphError>> = if *to_manager {
                    let of_jobs: Vec<usize> = todo.iter().map(|&k| items[k].0).collect();
                    self.manager_mails(tenant, jobs, &of_jobs).await
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
                    if self.vault.is_none() {
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
        let mut answers = self.graph.batch(tenant, &patches).await;
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
                    if let Err(e) = self
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
        let sender = match &self.policy.password_delivery {
            Some(PasswordDelivery::Mail { sender, .. }) => sender.as_str(),
            _ => "",
        };
        let ttl_hours = match &self.policy.password_delivery {
            Some(PasswordDelivery::SecretsManager { ttl_hours, .. }) => *ttl_hours,
            _ => 24,
        };
        let mut mails = Vec::new();
        let mut mailed = Vec::new();
        for (k, delivery, password) in set {
            match delivery {
                Delivery::Mail(recipients) => {
                    let (subject, text) = notify::password_mail(&jobs[items[k].0].case, &password);
                    mails.push(mail_item(sender, &recipients, &subject, &text));
                    mailed.push((k, recipients.len()));
                }
                Delivery::Vault(name) => {
                    let Some(vault) = self.vault else {
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
        if let Some((turns, wave)) = self.turn {
            turns.wait(wave).await;
        }
        let answers = self.graph.batch_sized(tenant, &mails, MAIL_BATCH_MAX).await;
        self.pass_turn();
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
}

/// Every result, an action left without one counted as not attempted.
fn finish(results: Vec<Option<Result<Step, Failure>>>) -> Vec<Result<Step, Failure>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Ok(Step::Skipped("not attempted".into()))))
        .collect()
}

/// Records what one action of a job did.
fn record(
    tenant: &str,
    job: &mut Job,
    i: usize,
    action: Action,
    result: Result<Step, Failure>,
    now: OffsetDateTime,
) {
    if matches!(result, Ok(Step::Untouched)) {
        return;
    }
    let entry = &mut job.case.actions[i];
    entry.attempts += 1;
    let (state, what) = match result {
        Ok(Step::Untouched) => return,
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

fn operator(error: &str) -> Failure {
    Failure {
        error: error.to_owned(),
        transient: false,
        needs_operator: true,
    }
}

/// A plain-text `sendMail` request, not saved to Sent Items.
fn mail_item(sender: &str, to: &[String], subject: &str, text: &str) -> BatchItem {
    let recipients: Vec<_> = to
        .iter()
        .map(|address| json!({ "emailAddress": { "address": address } }))
        .collect();
    BatchItem::new(
        Method::POST,
        format!("/users/{}/sendMail", segment(sender)),
        Some(json!({
            "message": {
                "subject": subject,
                "body": { "contentType": "Text", "content": text },
                "toRecipients": recipients,
            },
            "saveToSentItems": false,
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waves_mail_in_turn_whatever_order_they_pass_in() {
        let turns = MailTurns::default();
        turns.wait(0).await;
        // Wave 2 had nothing to mail; wave 3 still waits for waves 0 and 1.
        turns.pass(2);
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), turns.wait(3));
        assert!(early.await.is_err(), "wave 3 waits for waves 0 and 1");
        turns.pass(0);
        turns.wait(1).await;
        turns.pass(0);
        turns.pass(1);
        tokio::time::timeout(std::time::Duration::from_millis(50), turns.wait(3))
            .await
            .expect("waves 0 to 2 passed");
    }

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
