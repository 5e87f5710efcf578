//! The worker: takes a batch of work items (SQS or inline), merges each signal into its user's
//! case, and works the cases that need it (investigate and plan once, then carry out pending
//! actions), recording everything in the ledger. A message is done when its signal's case is
//! settled (closed, or waiting for a person's approval) or held by another worker; it is kept
//! for retry otherwise, so nothing is lost and nothing is done twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures_util::stream::{self, StreamExt};
use time::OffsetDateTime;
use tracing::Instrument;

use super::investigate::{self, Resolved, RoleCache};
use super::notify;
use super::remediate::{Checkpoints, Job, MailTurns, Remediator, WAVE};
use super::vault::PasswordVault;
use super::view::{RiskView, ViewError};
use crate::cases::case::{ActionState, Lease, SignalRef};
use crate::cases::findings::{RiskRecord, SignInSummary, UserFacts};
use crate::cases::plan::{RAIL_BLAST_RADIUS, escalate_case, plan_case};
use crate::cases::writeback::IncidentRef;
use crate::cases::{Case, CaseStatus, Placement, Policy, place};
use crate::event::{EventSource, RiskEvent, Subject};
use crate::graph::{GraphClient, GraphError};
use crate::ingress::graph::{LifecycleKind, LifecycleNotice};
use crate::ledger::{Admission, Ledger, LedgerError};
use crate::queue::WorkItem;
use crate::subscriptions::SubscriptionManager;

/// How long a worker holds a case; longer than the worker's Lambda timeout.
pub const CASE_LEASE: time::Duration = time::Duration::minutes(15);
/// Optimistic-concurrency rounds before a merge is left for retry.
const MAX_CONFLICTS: usize = 32;
/// Passes over cases that changed under us (an escalation while we worked) in one batch.
const MAX_PASSES: usize = 3;
/// Tenants worked on at once.
const TENANTS_AT_ONCE: usize = 4;
/// A tenant's records (signals resolved, users merged, cases leased, recorded and saved)
/// worked on at once; Graph requests stay paced by the per-tenant limiter.
pub const RECORDS_AT_ONCE: usize = 16;

/// What became of one work item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Nothing left for this message: its case is settled, waits for a person, or is held by
    /// another worker; or the signal needs no case.
    Done(String),
    /// Keep the message: it is delivered again (and after maxReceiveCount reaches the DLQ).
    Retry(String),
}

impl Disposition {
    /// Whether the message must be kept for retry.
    pub fn is_retry(&self) -> bool {
        matches!(self, Disposition::Retry(_))
    }
}

/// A signal about a resolved user: its index in the batch, the signal, the user's UPN.
type UserSignal<'a> = (usize, &'a RiskEvent, Option<String>);

/// What merging a signal gave.
enum Merged {
    Case { case_id: String, note: String },
    NoCase(String),
}

enum Leased {
    Mine(Box<Case>, u64),
    Busy,
    Idle(Box<Case>),
}

/// The worker's dependencies, built once per cold start.
pub struct Worker {
    pub ledger: Ledger,
    pub graph: Arc<GraphClient>,
    pub policy: Arc<Policy>,
    pub vault: Option<Arc<dyn PasswordVault>>,
    pub subscriptions: Option<Arc<SubscriptionManager>>,
    /// Tenants whose work is accepted (re-checked here: a queue message is not trusted).
    pub allowed_tenants: Vec<String>,
    /// This worker's lease-holder id.
    pub holder: String,
    pub roles: RoleCache,
    /// The texts users receive.
    pub templates: super::templates::Templates,
    /// The tenants' 53011 sign-ins as last listed (shared by groups within a minute).
    pub sign_ins: investigate::SignInCache,
    /// How old a view of Identity Protection a `users` notification accepts.
    pub view_max_age: time::Duration,
    /// Writes case outcomes onto the Sentinel incidents they came from (off when `None`).
    pub incident_comments: Option<Arc<super::writeback::IncidentCommenter>>,
}

/// Default for [`Worker::view_max_age`]: two sweep periods.
pub const VIEW_MAX_AGE: time::Duration = time::Duration::minutes(10);

fn ledger_retry(e: LedgerError) -> Disposition {
    Disposition::Retry(format!("ledger: {e}"))
}

fn graph_failure(e: &GraphError) -> Disposition {
    if e.needs_operator() {
        Disposition::Retry(format!("needs an operator: {e}"))
    } else {
        Disposition::Retry(e.to_string())
    }
}

/// How a message whose signal went to `case` is disposed of.
fn disposition_of(case: &Case) -> Disposition {
    match case.status {
        CaseStatus::Completed | CaseStatus::Skipped | CaseStatus::AwaitingApproval => {
            Disposition::Done(format!("case {} {}", case.case_id, case.status.as_str()))
        }
        CaseStatus::NeedsOperator => Disposition::Retry(format!(
            "case {} needs an operator: {}",
            case.case_id,
            case.last_error.as_deref().unwrap_or("-")
        )),
        CaseStatus::Retry | CaseStatus::New | CaseStatus::Open => Disposition::Retry(format!(
            "case {} {}: {}",
            case.case_id,
            case.status.as_str(),
            case.last_error.as_deref().unwrap_or("not finished")
        )),
    }
}

/// `fresh` (the stored case, changed meanwhile) with what this worker did to `ours` since
/// `base` (the case as leased or last checkpointed): our actions' outcomes win for the actions
/// we ran, our plan (if the stored case had none) and what we appended, rails, history lines,
/// the rail flags; everything else (signals merged, a person's decision) is kept.
fn reconcile(ours: &Case, base: &Case, mut fresh: Case) -> Case {
    let added_history = (ours.history_dropped as usize + ours.history.len())
        .saturating_sub(base.history_dropped as usize + base.history.len());
    if fresh.findings.is_none() && ours.findings.is_some() {
        fresh.findings = ours.findings.clone();
        fresh.rules = ours.rules.clone();
        fresh.plan_note = ours.plan_note.clone();
        fresh.planned_level = ours.planned_level;
        fresh.risk_level = fresh.risk_level.max(ours.risk_level);
        let extra: Vec<_> = fresh.actions.drain(..).collect();
        fresh.actions = ours.actions.clone();
        fresh.actions.extend(extra);
    } else {
        let known = base.actions.len();
        for (i, action) in ours.actions.iter().enumerate().take(known) {
            let changed = base.actions.get(i) != Some(action);
            if changed && let Some(slot) = fresh.actions.get_mut(i) {
                *slot = action.clone();
            }
        }
        // What we appended (an escalation), after whatever was appended meanwhile.
        fresh
            .actions
            .extend(ours.actions.iter().skip(known).cloned());
        fresh.planned_level = fresh.planned_level.max(ours.planned_level);
        for rule in &ours.rules {
            if !fresh.rules.contains(rule) {
                fresh.rules.push(rule.clone());
            }
        }
    }
    fresh.admission_due = ours.admission_due;
    fresh.blast_alert_due = ours.blast_alert_due;
    for rail in &ours.rails {
        if !fresh.rails.contains(rail) {
            fresh.rails.push(rail.clone());
        }
    }
    let start = ours.history.len().saturating_sub(added_history);
    for entry in &ours.history[start..] {
        fresh.note(entry.at, entry.what.clone());
    }
    if fresh.user_principal_name.is_none() {
        fresh.user_principal_name = ours.user_principal_name.clone();
    }
    fresh.last_error = ours.last_error.clone();
    fresh
}

/// Runs `futures` at most [`RECORDS_AT_ONCE`] at a time; outputs in completion order.
async fn at_once<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    stream::iter(futures)
        .buffer_unordered(RECORDS_AT_ONCE)
        .collect()
        .await
}

fn signal_ref(signal: &RiskEvent) -> SignalRef {
    SignalRef {
        signal_id: signal.event_id.clone(),
        source: signal.source,
        source_id: signal.source_id.clone(),
        risk_level: signal.risk_level,
        detected_at: signal.detected_at,
    }
}

/// Cases stored in the middle of a round (before a SOC mail), as after it.
#[async_trait::async_trait]
impl Checkpoints for Worker {
    async fn record(&self, jobs: &mut [Job], which: &[usize]) {
        let which: std::collections::HashSet<usize> = which.iter().copied().collect();
        let saves: Vec<_> = jobs
            .iter_mut()
            .enumerate()
            .filter(|(j, _)| which.contains(j))
            .map(|(_, job)| self.checkpoint(job))
            .collect();
        at_once(saves).await;
    }
}

impl Worker {
    /// A worker with a fresh lease-holder id.
    pub fn new(
        ledger: Ledger,
        graph: Arc<GraphClient>,
        policy: Arc<Policy>,
        vault: Option<Arc<dyn PasswordVault>>,
        subscriptions: Option<Arc<SubscriptionManager>>,
        allowed_tenants: Vec<String>,
    ) -> Self {
        Self {
            ledger,
            graph,
            policy,
            vault,
            subscriptions,
            allowed_tenants,
            holder: format!("worker-{}", uuid::Uuid::new_v4()),
            roles: RoleCache::default(),
            sign_ins: investigate::SignInCache::default(),
            templates: super::templates::Templates::embedded(),
            view_max_age: VIEW_MAX_AGE,
            incident_comments: None,
        }
    }

    fn tenant_allowed(&self, tenant: &str) -> bool {
        self.allowed_tenants
            .iter()
            .any(|t| t.eq_ignore_ascii_case(tenant))
    }

    /// Handles one work item.
    pub async fn handle(&self, item: &WorkItem) -> Disposition {
        self.handle_batch(std::slice::from_ref(item))
            .await
            .pop()
            .unwrap_or_else(|| Disposition::Retry("no disposition".into()))
    }

    /// Handles a batch: signals grouped per tenant and worked together. Returns one
    /// disposition per item, in order.
    pub async fn handle_batch(&self, items: &[WorkItem]) -> Vec<Disposition> {
        let mut out: Vec<Option<Disposition>> = vec![None; items.len()];
        #[allow(clippy::type_complexity)]
        let mut per_tenant: BTreeMap<
            String,
            (Vec<(usize, RiskEvent)>, Vec<(usize, String)>),
        > = BTreeMap::new();
        for (index, item) in items.iter().enumerate() {
            let tenant = match item {
                WorkItem::Risk(signal) => signal.tenant_id.as_str(),
                WorkItem::Lifecycle(notice) => notice.tenant_id.as_str(),
                WorkItem::Resume { tenant_id, .. } => tenant_id.as_str(),
            };
            if !self.tenant_allowed(tenant) {
                tracing::error!(tenant_id = %tenant, "work item for a tenant that is not allowed: dropped");
                out[index] = Some(Disposition::Done(format!(
                    "tenant {tenant} is not allowed: dropped"
                )));
                continue;
            }
            match item {
                WorkItem::Risk(signal) => per_tenant
                    .entry(signal.tenant_id.to_ascii_lowercase())
                    .or_default()
                    .0
                    .push((index, signal.clone())),
                WorkItem::Resume { tenant_id, case_id } => per_tenant
                    .entry(tenant_id.to_ascii_lowercase())
                    .or_default()
                    .1
                    .push((index, case_id.clone())),
                WorkItem::Lifecycle(notice) => {
                    let span = tracing::info_span!("lifecycle", subscription_id = %notice.subscription_id, tenant_id = %notice.tenant_id);
                    out[index] = Some(self.lifecycle(notice).instrument(span).await);
                }
            }
        }
        let tenants: Vec<_> = per_tenant.into_iter().collect();
        for chunk in tenants.chunks(TENANTS_AT_ONCE) {
            let rounds = chunk.iter().map(|(tenant, (signals, resumes))| {
                let span = tracing::info_span!("tenant", tenant_id = %tenant);
                self.tenant_round(tenant, signals, resumes).instrument(span)
            });
            for (index, disposition) in futures_util::future::join_all(rounds)
                .await
                .into_iter()
                .flatten()
            {
                out[index] = Some(disposition);
            }
        }
        out.into_iter()
            .map(|d| d.unwrap_or_else(|| Disposition::Retry("not handled".into())))
            .collect()
    }

    /// One tenant's signals and resumed cases.
    async fn tenant_round(
        &self,
        tenant: &str,
        signals: &[(usize, RiskEvent)],
        resumes: &[(usize, String)],
    ) -> Vec<(usize, Disposition)> {
        let mut out = Vec::new();
        // 1. Who each signal is about.
        //    Object ids as they are; UPNs looked up 15 to a request, not one read each.
        let subjects: Vec<_> = signals.iter().map(|(_, s)| s.subject.clone()).collect();
        let answers: Vec<(usize, &RiskEvent, Result<Resolved, GraphError>)> = signals
            .iter()
            .zip(investigate::resolve_bulk(&self.graph, tenant, &subjects).await)
            .map(|((index, signal), answer)| (*index, signal, answer))
            .collect();
        let mut resolved: Vec<(usize, &RiskEvent, String, Option<String>)> = Vec::new();
        let mut no_user = Vec::new();
        for (index, signal, answer) in answers {
            match answer {
                Ok(Resolved::User { id, upn }) => resolved.push((index, signal, id, upn)),
                Ok(Resolved::NoUser(reason)) => {
                    tracing::info!(signal_id = %signal.event_id, %reason, "signal names no user to act on");
                    no_user.push((index, signal, reason));
                }
                Err(e) => out.push((index, graph_failure(&e))),
            }
        }
        let settled: Vec<(usize, Disposition)> = at_once(
            no_user
                .into_iter()
                .map(|(index, signal, reason)| async move {
                    if let Some(retry) = self.tell_incident_no_user(tenant, signal, &reason).await {
                        return (index, Disposition::Retry(retry));
                    }
                    (index, self.settle_signal(signal, None, &reason).await)
                })
                .collect(),
        )
        .await;
        out.extend(settled);
        // 2. What Identity Protection says about each user, from the tenant's view: a `users`
        //    notification accepts a view of up to `view_max_age`, anything that carries a
        //    detection wants one listing at least as new as this batch.
        let started = OffsetDateTime::now_utc();
        let mut users: Vec<String> = resolved.iter().map(|(_, _, u, _)| u.clone()).collect();
        users.sort();
        users.dedup();
        let view = RiskView {
            graph: &self.graph,
            ledger: &self.ledger,
        };
        let mut risks: HashMap<String, Option<RiskRecord>> = HashMap::new();
        let mut failed_users: HashMap<String, Disposition> = HashMap::new();
        if !users.is_empty() {
            // A view up to `view_max_age` old answers everything it shows at risk; a detection
            // (Sentinel, sweep) about a user it does not show at risk asks for one listing at
            // least as new as this batch before the user is judged not at risk.
            let mut answer = view
                .risks(tenant, &users, started - self.view_max_age)
                .await;
            let recheck = match &answer {
                Ok(found) => resolved.iter().any(|(_, signal, user, _)| {
                    signal.source != crate::event::EventSource::GraphUser
                        && !found
                            .get(user)
                            .and_then(Option::as_ref)
                            .is_some_and(RiskRecord::at_risk)
                }),
                Err(_) => false,
            };
            if recheck {
                answer = view.risks(tenant, &users, started).await;
            }
            match answer {
                Ok(found) => risks = found,
                Err(e) => {
                    let failure = match &e {
                        ViewError::Graph(g) => graph_failure(g),
                        ViewError::Ledger(l) => ledger_retry(l.clone()),
                    };
                    failed_users = users.iter().map(|u| (u.clone(), failure.clone())).collect();
                }
            }
        }
        // 3. Each signal into its user's case: users at once, a user's signals one after
        //    another (they go to the same case).
        let mut per_user: BTreeMap<String, Vec<UserSignal>> = BTreeMap::new();
        for (index, signal, user, upn) in resolved {
            if let Some(failure) = failed_users.get(&user) {
                out.push((index, failure.clone()));
                continue;
            }
            per_user.entry(user).or_default().push((index, signal, upn));
        }
        let risks_ref = &risks;
        let merged: Vec<Vec<(usize, Result<String, Disposition>)>> = at_once(
            per_user
                .into_iter()
                .map(|(user, items)| async move {
                let risk = risks_ref.get(&user).cloned().flatten();
                let mut results = Vec::new();
                for (index, signal, upn) in items {
                    let result = match self.merge(tenant, signal, &user, upn, risk.as_ref()).await
                    {
                        Ok(Merged::Case { case_id, note }) => {
                            tracing::info!(signal_id = %signal.event_id, %case_id, %note, "signal merged");
                            match self
                                .ledger
                                .settle_signal(signal, Some(&case_id), &note)
                                .await
                            {
                                Ok(()) => Ok(case_id),
                                Err(e) => Err(ledger_retry(e)),
                            }
                        }
                        Ok(Merged::NoCase(reason)) => {
                            tracing::info!(signal_id = %signal.event_id, %reason, "signal needs no case");
                            Err(self.settle_signal(signal, None, &reason).await)
                        }
                        Err(e) => Err(ledger_retry(e)),
                    };
                    results.push((index, result));
                }
                results
            })
                .collect(),
        )
        .await;
        let mut case_of_signal: Vec<(usize, String)> = Vec::new();
        let mut work: Vec<String> = Vec::new();
        for (index, result) in merged.into_iter().flatten() {
            match result {
                Ok(case_id) => {
                    if !work.contains(&case_id) {
                        work.push(case_id.clone());
                    }
                    case_of_signal.push((index, case_id));
                }
                Err(disposition) => out.push((index, disposition)),
            }
        }
        for (_, case_id) in resumes {
            if !work.contains(case_id) {
                work.push(case_id.clone());
            }
        }
        // 4. Work the cases.
        let mut outcomes = self.work_cases(tenant, &work, &risks).await;
        // 5. Tell the Sentinel incidents the cases came from (issue 11, write-back).
        super::writeback::write_back(self, signals, &case_of_signal, &work, &mut outcomes).await;
        let resumed = resumes.iter().map(|(i, c)| (*i, c.clone()));
        for (index, case_id) in case_of_signal.into_iter().chain(resumed) {
            let disposition = outcomes
                .get(&case_id)
                .cloned()
                .unwrap_or_else(|| Disposition::Retry(format!("case {case_id} not worked")));
            out.push((index, disposition));
        }
        out
    }

    /// A Sentinel incident's account that names no user to act on: the incident is told, so
    /// the analyst sees it there and not only in the playbook's run history. Returns why the
    /// message must be kept when the comment failed and may succeed later.
    async fn tell_incident_no_user(
        &self,
        tenant: &str,
        signal: &RiskEvent,
        reason: &str,
    ) -> Option<String> {
        let commenter = self.incident_comments.as_ref()?;
        if signal.source != EventSource::Sentinel {
            return None;
        }
        let incident = signal
            .resource_data
            .as_ref()
            .and_then(IncidentRef::from_signal_context)?;
        let account = match &signal.subject {
            Subject::User { upn: Some(upn), .. } => upn.clone(),
            Subject::User { id: Some(id), .. } => id.clone(),
            _ => "(no account)".to_owned(),
        };
        match commenter
            .write_unresolved(tenant, &incident, &signal.event_id, &account, reason)
            .await
        {
            super::writeback::Written::Failed { error, retry: true } => Some(format!(
                "signal {}: incident {} comment failed, kept for retry: {error}",
                signal.event_id,
                incident.label()
            )),
            _ => None,
        }
    }

    async fn settle_signal(
        &self,
        signal: &RiskEvent,
        case: Option<&str>,
        why: &str,
    ) -> Disposition {
        match self.ledger.settle_signal(signal, case, why).await {
            Ok(()) => Disposition::Done(why.to_owned()),
            Err(e) => ledger_retry(e),
        }
    }

    /// Places `signal` in its user's case (opening one if its episode is new), escalating the
    /// case when the signal's level calls for more.
    async fn merge(
        &self,
        tenant: &str,
        signal: &RiskEvent,
        user_id: &str,
        upn: Option<String>,
        risk: Option<&RiskRecord>,
    ) -> Result<Merged, LedgerError> {
        let now = OffsetDateTime::now_utc();
        let reference = signal_ref(signal);
        let window = time::Duration::hours(i64::from(self.policy.safety.source_episode_hours));
        let level = match risk.filter(|r| r.at_risk()) {
            Some(risk) => signal.risk_level.max(risk.level()),
            None => signal.risk_level,
        };
        // A redelivered signal that was merged already (its case may keep only the newest few).
        if let Some(case_id) = self
            .ledger
            .signal(&signal.event_id)
            .await?
            .and_then(|r| r.case_id)
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
                    if self.ledger.save_case(&case, version).await?.is_some() {
                        return Ok(Merged::Case { case_id, note });
                    }
                }
                Placement::Open(episode) => {
                    let case = Case::open(
                        tenant,
                        user_id,
                        upn.clone(),
                        episode,
                        reference.clone(),
                        level,
                        self.policy.mode,
                        now,
                    );
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

    async fn lease(&self, case_id: &str) -> Result<Option<Leased>, LedgerError> {
        for _ in 0..MAX_CONFLICTS {
            let Some((mut case, version)) = self.ledger.case(case_id).await? else {
                return Ok(None);
            };
            if !case.needs_worker() {
                return Ok(Some(Leased::Idle(Box::new(case))));
            }
            let now = OffsetDateTime::now_utc();
            if case
                .lease
                .as_ref()
                .is_some_and(|l| l.holder != self.holder && l.until > now)
            {
                return Ok(Some(Leased::Busy));
            }
            case.lease = Some(Lease {
                holder: self.holder.clone(),
                until: now + CASE_LEASE,
            });
            case.attempts += 1;
            if let Some(version) = self.ledger.save_case(&case, version).await? {
                return Ok(Some(Leased::Mine(Box::new(case), version)));
            }
        }
        Ok(Some(Leased::Busy))
    }

    /// Works the cases `ids` of `tenant`; returns each case's disposition.
    pub async fn work_cases(
        &self,
        tenant: &str,
        ids: &[String],
        risks: &HashMap<String, Option<RiskRecord>>,
    ) -> HashMap<String, Disposition> {
        let mut out = HashMap::new();
        let mut todo: Vec<String> = ids.to_vec();
        for _ in 0..MAX_PASSES {
            if todo.is_empty() {
                break;
            }
            let again = self.work_pass(tenant, &todo, risks, &mut out).await;
            todo = again;
        }
        out
    }

    async fn work_pass(
        &self,
        tenant: &str,
        ids: &[String],
        risks: &HashMap<String, Option<RiskRecord>>,
        out: &mut HashMap<String, Disposition>,
    ) -> Vec<String> {
        let mut jobs = Vec::new();
        let leased: Vec<(&String, Result<Option<Leased>, LedgerError>)> = at_once(
            ids.iter()
                .map(|id| async move { (id, self.lease(id).await) })
                .collect(),
        )
        .await;
        for (id, lease) in leased {
            match lease {
                Ok(Some(Leased::Mine(case, version))) => {
                    let base = (*case).clone();
                    jobs.push(Job {
                        facts: UserFacts {
                            user_id: case.user_id.clone(),
                            ..UserFacts::default()
                        },
                        risk: None,
                        case: *case,
                        version,
                        base,
                        stopped: false,
                    });
                }
                Ok(Some(Leased::Busy)) => {
                    out.insert(
                        id.clone(),
                        Disposition::Done(format!("case {id} is held by another worker")),
                    );
                }
                Ok(Some(Leased::Idle(case))) => {
                    out.insert(id.clone(), disposition_of(&case));
                }
                Ok(None) => {
                    out.insert(
                        id.clone(),
                        Disposition::Done(format!("case {id} does not exist")),
                    );
                }
                Err(e) => {
                    out.insert(id.clone(), ledger_retry(e));
                }
            }
        }
        let now = OffsetDateTime::now_utc();
        self.prepare_all(tenant, &mut jobs, risks, now).await;
        // In waves of WAVE cases, all at once: their passwords are mailed wave after wave.
        let turns = MailTurns::default();
        let waves = jobs.chunks_mut(WAVE).enumerate().map(|(wave, jobs)| {
            let remediator = Remediator {
                graph: &self.graph,
                policy: &self.policy,
                ledger: &self.ledger,
                vault: self.vault.as_deref(),
                templates: &self.templates,
                turn: Some((&turns, wave)),
            };
            async move { self.remediate_wave(tenant, &remediator, jobs).await }
        });
        futures_util::future::join_all(waves).await;
        let mut again = Vec::new();
        let finished: Vec<(String, Result<Case, LedgerError>)> = at_once(
            jobs.into_iter()
                .map(|job| async move {
                    let id = job.case.case_id.clone();
                    (id, self.finish(job).await)
                })
                .collect(),
        )
        .await;
        for (id, result) in finished {
            match result {
                Ok(case) => {
                    let pending = case.status == CaseStatus::Open
                        && case.actions.iter().any(|a| a.state == ActionState::Pending);
                    if pending {
                        again.push(id.clone());
                    }
                    tracing::info!(case_id = %id, status = case.status.as_str(), next = %case.next_actor(), "case worked");
                    out.insert(id, disposition_of(&case));
                }
                Err(e) => {
                    out.insert(id, ledger_retry(e));
                }
            }
        }
        again
    }

    /// Carries out one wave's actions round after round, recording after each what cannot
    /// be repeated; passes the wave's mail turn once no password of it is left to deliver.
    async fn remediate_wave(&self, tenant: &str, remediator: &Remediator<'_>, jobs: &mut [Job]) {
        loop {
            let resets_left = jobs.iter().any(|job| {
                !job.stopped
                    && job.case.actions.iter().any(|a| {
                        a.action == crate::cases::Action::ResetPassword && a.state.runnable()
                    })
            });
            if !resets_left {
                remediator.pass_turn();
            }
            let ran = remediator.run_round(tenant, jobs, self).await;
            if ran.is_empty() {
                break;
            }
            // What cannot be repeated safely (a new password, a mail) is recorded before the
            // next round: a worker that stops after it leaves a case that says it was done.
            let record: std::collections::HashSet<usize> = ran
                .into_iter()
                .filter(|(_, action)| !action.idempotent())
                .map(|(j, _)| j)
                .collect();
            let mut saves = Vec::new();
            for (j, job) in jobs.iter_mut().enumerate() {
                if record.contains(&j) {
                    saves.push(self.checkpoint(job));
                }
            }
            at_once(saves).await;
        }
        remediator.pass_turn();
    }

    /// Investigates and plans the new cases (in bulk), and reads what the resumed cases'
    /// actions check (directory facts, in bulk; risk from the view).
    async fn prepare_all(
        &self,
        tenant: &str,
        jobs: &mut [Job],
        risks: &HashMap<String, Option<RiskRecord>>,
        now: OffsetDateTime,
    ) {
        // Risk records the batch did not read (resumed cases): from the view.
        let missing: Vec<String> = jobs
            .iter()
            .map(|j| j.case.user_id.clone())
            .filter(|u| !risks.contains_key(u))
            .collect();
        let mut risks = risks.clone();
        if !missing.is_empty() {
            let view = RiskView {
                graph: &self.graph,
                ledger: &self.ledger,
            };
            match view.risks(tenant, &missing, now - self.view_max_age).await {
                Ok(found) => risks.extend(found),
                Err(ViewError::Graph(e)) => {
                    for job in jobs
                        .iter_mut()
                        .filter(|j| missing.contains(&j.case.user_id))
                    {
                        self.stop(job, &e, now);
                    }
                }
                Err(ViewError::Ledger(e)) => {
                    let e = GraphError::RateLimiter(e.to_string());
                    for job in jobs
                        .iter_mut()
                        .filter(|j| missing.contains(&j.case.user_id))
                    {
                        self.stop(job, &e, now);
                    }
                }
            }
        }
        // Resumed cases a signal raised above their plan: escalated first, so what the new
        // actions check is read below.
        let mut escalations = Vec::new();
        for job in jobs.iter_mut() {
            if !job.stopped && job.case.findings.is_some() && job.case.needs_escalation() {
                escalations.push(self.escalate(tenant, job, now));
            }
        }
        at_once(escalations).await;
        let new: Vec<(String, Option<RiskRecord>)> = jobs
            .iter()
            .filter(|j| !j.stopped && j.case.findings.is_none())
            .map(|j| {
                (
                    j.case.user_id.clone(),
                    risks.get(&j.case.user_id).cloned().flatten(),
                )
            })
            .collect();
        let mut findings = investigate::investigate_bulk(
            &self.graph,
            &self.roles,
            &self.sign_ins,
            &self.policy,
            tenant,
            &new,
        )
        .await;
        let resumed: Vec<String> = jobs
            .iter()
            .filter(|j| {
                !j.stopped
                    && j.case.findings.is_some()
                    && j.case.actions.iter().any(|a| a.state.runnable())
            })
            .map(|j| j.case.user_id.clone())
            .collect();
        let mut facts = investigate::user_facts_bulk(
            &self.graph,
            tenant,
            &resumed,
            self.policy.mails_managers(),
        )
        .await;
        // The cooldown rail of each new plan: the users' last resets, read at once.
        let planned: Vec<String> = jobs
            .iter()
            .filter(|j| !j.stopped && j.case.findings.is_none())
            .map(|j| j.case.case_id.clone())
            .collect();
        let mut reads = Vec::new();
        for job in jobs.iter().filter(|j| planned.contains(&j.case.case_id)) {
            reads.push(async move {
                (
                    job.case.case_id.clone(),
                    self.last_reset(tenant, &job.case).await,
                )
            });
        }
        let mut last_resets: HashMap<String, Result<Option<OffsetDateTime>, LedgerError>> =
            at_once(reads).await.into_iter().collect();
        for job in jobs.iter_mut().filter(|j| !j.stopped) {
            let user = job.case.user_id.clone();
            let risk = risks.get(&user).cloned().flatten();
            if job.case.findings.is_none() {
                match findings.remove(&user) {
                    Some(Ok(found)) => {
                        if job.case.user_principal_name.is_none() {
                            job.case.user_principal_name = found.user.user_principal_name.clone();
                        }
                        let last_reset =
                            match last_resets.remove(&job.case.case_id).unwrap_or(Ok(None)) {
                                Ok(last) => last,
                                Err(e) => {
                                    self.stop(job, &GraphError::RateLimiter(e.to_string()), now);
                                    continue;
                                }
                            };
                        plan_case(&mut job.case, &self.policy, &found, last_reset, now);
                        job.facts = found.user.clone();
                        job.risk = found.risk.clone();
                    }
                    Some(Err(GraphError::NotFound { .. })) => {
                        job.case.findings = Some(crate::cases::Findings {
                            user: UserFacts {
                                user_id: user.clone(),
                                ..UserFacts::default()
                            },
                            risk,
                            blocked_sign_ins: SignInSummary::empty(now),
                            registration: None,
                            registration_unknown: None,
                            protected: None,
                            investigated_at: now,
                        });
                        job.case.set_plan(
                            None,
                            Some("the user no longer exists in the directory".into()),
                            now,
                        );
                    }
                    Some(Err(e)) => self.stop(job, &e, now),
                    None => {}
                }
            } else if let Some(result) = facts.remove(&user) {
                match result {
                    Ok(found) => {
                        job.facts = found;
                        job.risk = risk;
                    }
                    Err(GraphError::NotFound { .. }) => {
                        for action in &mut job.case.actions {
                            if action.state.runnable() {
                                action.state = ActionState::Skipped {
                                    at: now,
                                    reason: "the user no longer exists in the directory".into(),
                                };
                            }
                        }
                    }
                    Err(e) => self.stop(job, &e, now),
                }
            }
        }
        // The blast-radius rail, for what the plan or an escalation would enforce; and a
        // blast-radius alert that could not be sent before.
        for job in jobs.iter_mut().filter(|j| !j.stopped) {
            if job.case.admission_due {
                self.blast_radius(tenant, job, now).await;
            }
            if job.case.blast_alert_due && !job.stopped && !job.case.admission_due {
                match self.ledger.claim_blast_alert(tenant, now).await {
                    Ok(true) => self.send_blast_alert(tenant, job, now).await,
                    Ok(false) => {
                        job.case.blast_alert_due = false;
                        job.case
                            .note(now, "the blast-radius alert went out with another case");
                    }
                    Err(e) => tracing::warn!(error = %e, "blast-radius alert could not be claimed"),
                }
            }
        }
    }

    /// The user's last automatic password reset by another case (the cooldown rail).
    async fn last_reset(
        &self,
        tenant: &str,
        case: &Case,
    ) -> Result<Option<OffsetDateTime>, LedgerError> {
        let (record, _) = self.ledger.user(tenant, &case.user_id).await?;
        Ok(record.last_reset_by_another(&case.case_id))
    }

    /// Escalates a planned case to the level a signal raised it to, with the rule for that
    /// level, the user's traits and the signal's source, through every rail.
    async fn escalate(&self, tenant: &str, job: &mut Job, now: OffsetDateTime) {
        match self.escalate_case(tenant, &mut job.case, now).await {
            Ok(appended) => {
                tracing::info!(case_id = %job.case.case_id, appended, level = ?job.case.risk_level, "case escalated");
            }
            Err(e) => self.stop(job, &GraphError::RateLimiter(e.to_string()), now),
        }
    }

    async fn escalate_case(
        &self,
        tenant: &str,
        case: &mut Case,
        now: OffsetDateTime,
    ) -> Result<usize, LedgerError> {
        let last_reset = self.last_reset(tenant, case).await?;
        let level = case.risk_level;
        // The newest signal at that level (rules may be limited to sources).
        let source = case
            .signals
            .recent
            .iter()
            .rev()
            .find(|s| s.risk_level >= level)
            .map_or(case.opened_by, |s| s.source);
        Ok(escalate_case(
            case,
            &self.policy,
            level,
            source,
            last_reset,
            now,
        ))
    }

    fn stop(&self, job: &mut Job, e: &GraphError, now: OffsetDateTime) {
        tracing::warn!(case_id = %job.case.case_id, error = %e, "case could not be prepared");
        job.stopped = true;
        job.case.last_error = Some(e.to_string());
        job.case.note(now, format!("investigation failed: {e}"));
        if job.case.findings.is_none() {
            job.case.status = if e.needs_operator() {
                CaseStatus::NeedsOperator
            } else {
                CaseStatus::Retry
            };
        } else {
            // Resumed case: the next run retries its pending actions.
            for action in &mut job.case.actions {
                if action.state.runnable() {
                    action.state = ActionState::Failed {
                        at: now,
                        error: e.to_string(),
                        transient: e.is_transient(),
                        needs_operator: e.needs_operator(),
                    };
                    break;
                }
            }
        }
    }

    /// The per-tenant blast-radius rail, for a case about to change an account in enforce mode
    /// (a new plan, or an escalation's appended actions).
    async fn blast_radius(&self, tenant: &str, job: &mut Job, now: OffsetDateTime) {
        let acts = job
            .case
            .actions
            .iter()
            .any(|a| a.state == ActionState::Pending && a.action.changes_account());
        if !acts {
            job.case.admission_due = false;
            return;
        }
        let limit = self.policy.safety.max_enforced_cases_per_hour;
        match self
            .ledger
            .admit_enforced(tenant, &job.case.case_id, limit, now)
            .await
        {
            Ok(Admission::Admitted) => job.case.admission_due = false,
            Ok(Admission::Refused { announce }) => {
                job.case.admission_due = false;
                let rail = format!(
                    "{RAIL_BLAST_RADIUS}: more than {limit} enforced cases in the tenant within an hour"
                );
                job.case.hold(&rail, false, now);
                if announce {
                    self.send_blast_alert(tenant, job, now).await;
                }
            }
            Err(e) => {
                // Nothing runs until the count is read: the case is retried.
                tracing::warn!(case_id = %job.case.case_id, error = %e, "blast-radius count could not be read");
                job.stopped = true;
                let error =
                    format!("{RAIL_BLAST_RADIUS}: the tenant's count could not be read: {e}");
                job.case.note(now, error.clone());
                job.case.last_error = Some(error);
            }
        }
    }

    /// Sends the tenant's blast-radius alert this worker claimed; the ledger marks it sent only
    /// when it was. A failure keeps the case for retry (`blast_alert_due`) and frees the claim,
    /// so this case's retry or the next refused case sends it.
    async fn send_blast_alert(&self, tenant: &str, job: &mut Job, now: OffsetDateTime) {
        let limit = self.policy.safety.max_enforced_cases_per_hour;
        let sent = match &self.policy.notify {
            None => {
                job.case
                    .note(now, "blast-radius limit reached; no [notify] to alert");
                Ok(())
            }
            Some(notify) => {
                let (subject, text) = notify::blast_radius_mail(tenant, limit, &job.case);
                self.graph
                    .send_mail(tenant, &notify.sender, &notify.to, &subject, &text)
                    .await
            }
        };
        let ok = sent.is_ok();
        match sent {
            Ok(()) => {
                job.case.blast_alert_due = false;
                if self.policy.notify.is_some() {
                    job.case.note(now, "blast-radius alert sent to the SOC");
                }
            }
            Err(e) => {
                tracing::error!(case_id = %job.case.case_id, error = %e, "blast-radius alert could not be sent; kept for retry");
                job.case.blast_alert_due = true;
                let error = format!("blast-radius alert failed: {e}");
                job.case.note(now, error.clone());
                job.case.last_error = Some(error);
            }
        }
        if let Err(e) = self.ledger.blast_alert_done(tenant, ok, now).await {
            tracing::error!(error = %e, sent = ok, "blast-radius alert outcome could not be recorded");
        }
    }

    /// Records a job's progress mid-run, keeping the lease. A case changed meanwhile (a signal
    /// merged) is reconciled; a case another worker leased (ours ran out) stops this job: what
    /// it did is reconciled when it finishes, and nothing more runs here.
    async fn checkpoint(&self, job: &mut Job) {
        let now = OffsetDateTime::now_utc();
        // The lease is renewed with the progress (a long run keeps it).
        if let Some(lease) = job.case.lease.as_mut().filter(|l| l.holder == self.holder) {
            lease.until = now + CASE_LEASE;
        }
        match self.ledger.save_case(&job.case, job.version).await {
            Ok(Some(version)) => {
                job.version = version;
                job.base = job.case.clone();
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(case_id = %job.case.case_id, error = %e, "checkpoint failed; the case is saved when the run ends");
                return;
            }
        }
        for _ in 0..MAX_CONFLICTS {
            let Ok(Some((fresh, version))) = self.ledger.case(&job.case.case_id).await else {
                return;
            };
            if fresh
                .lease
                .as_ref()
                .is_some_and(|l| l.holder != self.holder && l.until > now)
            {
                tracing::error!(case_id = %job.case.case_id, "lease ran out and another worker holds the case: stopping");
                job.stopped = true;
                job.case.note(
                    now,
                    "this worker's lease ran out: another worker resumes the case",
                );
                return;
            }
            // Ours is adopted only once it is stored: until then `base` stays what the store
            // last had from us, so a later reconcile still sees every outcome of this run.
            let mut merged = reconcile(&job.case, &job.base, fresh);
            merged.lease = Some(Lease {
                holder: self.holder.clone(),
                until: now + CASE_LEASE,
            });
            match self.ledger.save_case(&merged, version).await {
                Ok(Some(saved)) => {
                    job.base = merged.clone();
                    job.case = merged;
                    job.version = saved;
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(case_id = %job.case.case_id, error = %e, "checkpoint failed; the case is saved when the run ends");
                    return;
                }
            }
        }
    }

    /// Saves the worked case, releasing the lease; reconciles with changes made meanwhile (a
    /// signal merged, an escalation, a person's decision): our actions' outcomes win for the
    /// actions we ran, everything else is kept.
    async fn finish(&self, job: Job) -> Result<Case, LedgerError> {
        let now = OffsetDateTime::now_utc();
        let Job {
            case: mut ours,
            version,
            base,
            ..
        } = job;
        ours.lease = None;
        // A signal merged before a checkpoint of ours raised the case above its plan.
        if ours.findings.is_some() && ours.needs_escalation() {
            let tenant = ours.tenant_id.clone();
            let appended = self.escalate_case(&tenant, &mut ours, now).await?;
            tracing::info!(case_id = %ours.case_id, appended, "case escalated after a signal merged meanwhile");
        }
        if ours.findings.is_some() {
            ours.settle(now);
        }
        if self.ledger.save_case(&ours, version).await?.is_some() {
            return Ok(ours);
        }
        for _ in 0..MAX_CONFLICTS {
            let Some((fresh, fresh_version)) = self.ledger.case(&ours.case_id).await? else {
                return Err(LedgerError(format!("case {} vanished", ours.case_id)));
            };
            let mut fresh = reconcile(&ours, &base, fresh);
            if fresh
                .lease
                .as_ref()
                .is_some_and(|l| l.holder == self.holder)
            {
                fresh.lease = None;
            }
            // A signal merged while we worked raised the case above the plan we made or
            // resumed: escalate now (the next pass carries the appended actions out).
            if fresh.findings.is_some() && fresh.needs_escalation() {
                let appended = self
                    .escalate_case(&fresh.tenant_id.clone(), &mut fresh, now)
                    .await?;
                tracing::info!(case_id = %fresh.case_id, appended, "case escalated after a signal merged meanwhile");
            }
            if fresh.status != CaseStatus::Skipped {
                if fresh.findings.is_some() && ours.findings.is_some() {
                    fresh.settle(now);
                } else {
                    fresh.status = ours.status;
                }
            }
            if self
                .ledger
                .save_case(&fresh, fresh_version)
                .await?
                .is_some()
            {
                return Ok(fresh);
            }
        }
        Err(LedgerError(format!(
            "case {} kept changing; the lease expires and the case is retried",
            ours.case_id
        )))
    }

    async fn lifecycle(&self, notice: &LifecycleNotice) -> Disposition {
        let Some(subscriptions) = &self.subscriptions else {
            tracing::error!(kind = ?notice.kind, "lifecycle notification but no subscription manager (RR_NOTIFICATION_URL unset)");
            return Disposition::Retry(
                "needs an operator: no subscription manager configured (RR_NOTIFICATION_URL)"
                    .into(),
            );
        };
        let result = match notice.kind {
            LifecycleKind::ReauthorizationRequired => {
                subscriptions
                    .reauthorize(&notice.tenant_id, &notice.subscription_id)
                    .await
            }
            LifecycleKind::SubscriptionRemoved => {
                subscriptions.ensure(&notice.tenant_id).await.map(drop)
            }
            LifecycleKind::Missed => {
                tracing::warn!(
                    "Graph reports missed notifications: the sweep covers what they would have said"
                );
                Ok(())
            }
        };
        match result {
            Ok(()) => Disposition::Done("lifecycle handled".into()),
            Err(e) => {
                tracing::error!(error = %e, "lifecycle handling failed");
                graph_failure(&e)
            }
        }
    }

    /// Handles an SQS batch; items kept for retry are reported as failures for redelivery
    /// (and, after the queue's maxReceiveCount, the DLQ). Unreadable messages fail too.
    pub async fn handle_sqs(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        let mut items = Vec::new();
        let mut ids = Vec::new();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            match serde_json::from_str::<WorkItem>(record.body.as_deref().unwrap_or("")) {
                Ok(item) => {
                    items.push(item);
                    ids.push(id);
                }
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "unreadable message left for the DLQ");
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = id;
                    response.batch_item_failures.push(failure);
                }
            }
        }
        let dispositions = self.handle_batch(&items).await;
        for (id, disposition) in ids.into_iter().zip(dispositions) {
            if let Disposition::Retry(reason) = &disposition {
                tracing::warn!(message_id = %id, %reason, "message left for retry");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }
}
