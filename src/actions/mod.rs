//! Remediation actions, one module each: what the action is for people (its label and the
//! words of its outcome), its own rail checks when it is planned ([`ActionRules`]) and when it
//! runs, the Graph calls it makes, and what it records. Adding an action touches its file, a
//! line of [`of`], its tests and the docs.
//!
//! The work path (`respond::remediate`) carries a tenant's cases out in rounds: each case's next
//! action, each kind of action for all its cases at once through its module's
//! [`Remediation::run`], so a case keeps its own order while a tenant's cases share requests.

pub mod block;
pub mod notify;
pub mod notify_user;
pub mod password;
pub mod revoke;
pub mod risk_feedback;
pub mod words;

use std::collections::HashMap;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;

use crate::cases::Case;
use crate::cases::findings::{RiskRecord, UserFacts};
use crate::cases::plan::{ActionRules, PlanStep};
use crate::cases::policy::{Action, Policy};
use crate::graph::api::segment;
use crate::graph::batch::BatchItem;
use crate::graph::{GraphClient, GraphError};
use crate::ledger::Ledger;
use crate::vault::PasswordVault;

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
    /// Temporary passwords this worker set and has not delivered yet, by action index (held in
    /// memory only; a resumed case recovers them from their sealed copies).
    pub undelivered: HashMap<usize, password::Unsent>,
    /// Resets whose password was delivered in this run: their sealed copies are forgotten
    /// once the case is stored saying so.
    pub delivered_sealed: Vec<usize>,
}

impl Job {
    /// Forgets the sealed copies of the passwords this run delivered, once the case that says
    /// so is stored (call after a checkpoint that did not stop the job). A copy not deleted
    /// expires on its own.
    pub async fn forget_delivered(&mut self, ledger: &Ledger) {
        for i in std::mem::take(&mut self.delivered_sealed) {
            if let Err(e) = ledger.forget_sealed_intent(&self.case.case_id, i).await {
                tracing::warn!(case_id = %self.case.case_id, error = %e, "sealed password of a delivered reset not deleted");
            }
        }
    }
}

/// What one action did.
#[derive(Clone)]
pub enum Step {
    Done(Option<String>),
    Skipped(String),
    /// The action's containing part is done (a password set); the rest (its delivery) runs in
    /// a later round. The words say what was done.
    Contained(String),
    /// Nothing: the case is another worker's now (this worker's lease ran out), left as it
    /// was stored.
    Untouched,
}

/// Why one action failed.
#[derive(Clone)]
pub struct Failure {
    pub error: String,
    pub transient: bool,
    pub needs_operator: bool,
}

impl From<GraphError> for Failure {
    fn from(e: GraphError) -> Self {
        let mut error = e.to_string();
        if matches!(&e, GraphError::Forbidden { code, .. } if code == "Authorization_RequestDenied")
        {
            // The usual cause when the permissions are granted: the target is an administrator.
            error.push_str(
                ". For a user who holds an administrator role, Graph lets the application change the password or sign-in only if its service principal holds the Privileged Authentication Administrator role (User Administrator covers users without admin roles): a person must do it, or grant that role",
            );
        }
        Failure {
            transient: e.is_transient(),
            needs_operator: e.needs_operator() || !e.is_transient(),
            error,
        }
    }
}

/// A failure a person must fix (configuration, a refusal we did not plan for).
pub fn operator(error: &str) -> Failure {
    Failure {
        error: error.to_owned(),
        transient: false,
        needs_operator: true,
    }
}

/// What an action gives per item, and per case whose companion action rode along in the same
/// request (block sign-in with the password reset).
pub struct Ran {
    pub results: Vec<Result<Step, Failure>>,
    /// (job, action index, result) of each companion.
    pub along: Vec<(usize, usize, Result<Step, Failure>)>,
}

impl From<Vec<Result<Step, Failure>>> for Ran {
    fn from(results: Vec<Result<Step, Failure>>) -> Self {
        Ran {
            results,
            along: Vec::new(),
        }
    }
}

/// Every result, an action left without one counted as not attempted.
pub fn finish(results: Vec<Option<Result<Step, Failure>>>) -> Vec<Result<Step, Failure>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Ok(Step::Skipped("not attempted".into()))))
        .collect()
}

/// Records cases in the ledger in the middle of a round: before a mail is sent, each case it
/// covers is stored saying which mail that is.
#[async_trait]
pub trait Checkpoints: Sync {
    /// Stores `jobs[j]` for every `j` in `which` (renewing the lease); a job whose lease ran
    /// out, so another worker holds its case, comes back `stopped`.
    async fn record(&self, jobs: &mut [Job], which: &[usize]);
}

/// The order in which a tenant's waves of cases send their password mails: wave `n` waits until
/// waves `0..n` have sent theirs (or have none to send), so each wave's mails get a mailbox's
/// slots before the next one's, and the earlier waves go on to their next actions while the
/// later ones mail.
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

/// What every action runs with: the ports, the policy, the user-mail texts, the wave's mail
/// turn, and the checkpoints of the worker running it.
pub struct Context<'a> {
    pub graph: &'a GraphClient,
    pub policy: &'a Policy,
    pub ledger: &'a Ledger,
    pub vault: Option<&'a dyn PasswordVault>,
    pub templates: &'a notify_user::templates::Templates,
    /// The wave these jobs are, and the turns of its tenant's waves: its password mails wait
    /// for the earlier waves' (none: they go at once).
    pub turn: Option<(&'a MailTurns, usize)>,
    pub checkpoints: &'a dyn Checkpoints,
    /// Seals a temporary password between its `PATCH` and its delivery (none configured: a
    /// resumed case sets a new password instead of delivering the one it cannot recover).
    pub sealer: Option<&'a crate::support::seal::Sealer>,
    /// The worker running the actions (named on the intents it stores).
    pub holder: &'a str,
}

impl Context<'_> {
    /// Passes this wave's mail turn (see [`MailTurns`]).
    pub fn pass_turn(&self) {
        if let Some((turns, wave)) = self.turn {
            turns.pass(wave);
        }
    }

    /// The mail address of each job's user's manager (`None`: no manager, or one without a
    /// mailbox): as read with the user (`$expand=manager`, see
    /// [`crate::respond::investigate::user_facts_bulk`]); for a user read without it,
    /// `GET /users/{id}/manager` through `$batch`.
    pub async fn manager_mails(
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
    pub async fn per_user(
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
}

/// A plain-text `sendMail` request, not saved to Sent Items.
pub fn mail_item(sender: &str, to: &[String], subject: &str, text: &str) -> BatchItem {
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

/// One remediation step's module.
#[async_trait]
pub trait Remediation: Sync {
    /// What people read for `action` (one of the actions this module carries out): a short
    /// label, e.g. "reset the password".
    fn label(&self, action: Action) -> &'static str;

    /// An action that rides along in the same request when it is this one's neighbour in a
    /// case's plan (block sign-in goes in the password reset's `PATCH /users/{id}`).
    fn companion(&self) -> Option<Action> {
        None
    }

    /// For an action a worker stored its intent for and stopped before recording its outcome:
    /// whether Graph, as read for this run, shows its effect already (then it is recorded done
    /// with these words instead of being carried out again). `None`: carry it out (it is safe
    /// to repeat, or the module reconciles it itself).
    fn already_done(&self, _action: Action, _job: &Job) -> Option<String> {
        None
    }

    /// Carries out `action` for `items` (job index, action index) of `jobs`, one tenant's
    /// cases, all at once; `along` names, per job, the index of its companion action due in
    /// the same request. One result per item, in order.
    async fn run(
        &self,
        ctx: &Context<'_>,
        action: Action,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        along: &HashMap<usize, usize>,
    ) -> Ran;
}

/// The module of each action: the registry.
pub fn of(action: Action) -> &'static dyn Remediation {
    match action {
        Action::RevokeSessions => &revoke::Revoke,
        Action::BlockSignIn | Action::UnblockSignIn => &block::Block,
        Action::ResetPassword => &password::Password,
        Action::DismissRisk | Action::ConfirmCompromised => &risk_feedback::RiskFeedback,
        Action::Notify => &notify::Notify,
        Action::NotifyUser => &notify_user::NotifyUser,
    }
}

/// What people read for `action`.
pub fn label(action: Action) -> &'static str {
    of(action).label(action)
}

/// Every action's own rails at plan time, in the order they depend on each other (the
/// dismiss follows what became of the reset).
pub struct Rules;

impl ActionRules for Rules {
    fn at_plan(&self, step: &mut PlanStep<'_>) {
        password::plan_rail(step);
        risk_feedback::plan_rail(step);
    }
}
