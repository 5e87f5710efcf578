//! The worker: takes a batch of work items (SQS or inline), merges each signal into its user's
//! case, and works the cases that need it (investigate and plan once, then carry out pending
//! actions), recording everything in the ledger. A message is done when its signal's case is
//! settled (closed, or waiting for a person's approval) or held by another worker; it is kept
//! for retry otherwise, so nothing is lost and nothing is done twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures_util::stream::{self, StreamExt};
use tracing::Instrument;

pub use super::disposition::Disposition;
use super::investigate::{self, Resolved, RoleCache};
use super::view::{RiskView, ViewError};
use crate::cases::Policy;
use crate::cases::case::SignalRef;
use crate::cases::findings::RiskRecord;
use crate::cases::incident::IncidentRef;
use crate::event::{EventSource, RiskEvent, Subject};
use crate::graph::{GraphClient, GraphError};
use crate::ingress::graph::{LifecycleKind, LifecycleNotice};
use crate::ledger::{Ledger, LedgerError};
use crate::queue::WorkItem;
use crate::respond::subscriptions::SubscriptionManager;
use crate::vault::PasswordVault;

/// How long a worker holds a case without recording progress: twice the worker's Lambda
/// timeout (300 s), so a live worker never loses it, and short enough that a case whose worker
/// died is resumed by the watchdog (see [`Worker::watchdog`]) within SQS's longest delay.
pub const CASE_LEASE: time::Duration = time::Duration::minutes(10);
/// When a case's watchdog message arrives: its lease has run out by then.
pub const WATCHDOG_DELAY: std::time::Duration = std::time::Duration::from_secs(11 * 60);
const _: () =
    assert!(CASE_LEASE.whole_seconds() <= crate::cases::lease::LONGEST_LEASE.whole_seconds());
const _: () = assert!(WATCHDOG_DELAY.as_secs() <= crate::queue::LONGEST_DELAY.as_secs());
const _: () = assert!(WATCHDOG_DELAY.as_secs() as i64 > CASE_LEASE.whole_seconds());
/// Tenants worked on at once.
const TENANTS_AT_ONCE: usize = 4;
/// A tenant's records (signals resolved, users merged, cases leased, recorded and saved)
/// worked on at once; Graph requests stay paced by the per-tenant limiter.
pub const RECORDS_AT_ONCE: usize = 16;

/// What merging a signal gave.
pub(super) enum Merged {
    Case { case_id: String, note: String },
    NoCase(String),
}

/// A signal about a resolved user: its index in the batch, the signal, the user's UPN.
type UserSignal<'a> = (usize, &'a RiskEvent, Option<String>);

/// What merging a signal gave.
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
    /// Protected accounts as last read (shared by the workers of one process).
    pub roles: Arc<RoleCache>,
    /// The texts users receive.
    pub templates: crate::actions::notify_user::templates::Templates,
    /// The tenants' 53011 sign-ins as last listed (shared by groups within a minute).
    pub sign_ins: Arc<investigate::SignInCache>,
    /// How old a view of Identity Protection a `users` notification accepts.
    pub view_max_age: time::Duration,
    /// Writes case outcomes onto the Sentinel incidents they came from (off when `None`).
    pub incident_comments: Option<Arc<super::writeback::IncidentCommenter>>,
    /// Seals a temporary password between its `PATCH` and its delivery (the Graph secret's
    /// `intent_sealing_key`).
    pub sealer: Option<Arc<crate::support::seal::Sealer>>,
    /// The work queue, when it delivers later (SQS): each case this worker takes up while it
    /// is new or open sends a `Resume` of itself delivered after [`WATCHDOG_DELAY`]. If the worker dies (timeout, out
    /// of memory, a deploy), that message resumes the case once the lease ran out; if the case
    /// settled, it finds nothing to do.
    pub watchdog: Option<Arc<dyn crate::queue::WorkQueue>>,
}

/// Default for [`Worker::view_max_age`]: two sweep periods.
pub const VIEW_MAX_AGE: time::Duration = time::Duration::minutes(10);

pub(super) fn ledger_retry(e: LedgerError) -> Disposition {
    Disposition::Retry(format!("ledger: {e}"))
}

pub(super) fn graph_failure(e: &GraphError) -> Disposition {
    if e.needs_operator() {
        Disposition::Retry(format!("needs an operator: {e}"))
    } else {
        Disposition::Retry(e.to_string())
    }
}

/// Runs `futures` at most [`RECORDS_AT_ONCE`] at a time; outputs in completion order.
pub(super) async fn at_once<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    stream::iter(futures)
        .buffer_unordered(RECORDS_AT_ONCE)
        .collect()
        .await
}

pub(super) fn signal_ref(signal: &RiskEvent) -> SignalRef {
    SignalRef {
        signal_id: signal.event_id.clone(),
        source: signal.source,
        source_id: signal.source_id.clone(),
        risk_level: signal.risk_level,
        detected_at: signal.detected_at,
        claimed_upn: match &signal.subject {
            Subject::User { upn, .. } => upn.clone(),
            Subject::SecurityAlert { .. } => None,
        },
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
        // A ledger with a work index is a local file: its workers are processes of this host,
        // whose leases end when the process is gone.
        let holder = crate::cases::lease::holder_id(ledger.keeps_work_index());
        Self {
            ledger,
            graph,
            policy,
            vault,
            subscriptions,
            allowed_tenants,
            holder,
            roles: Arc::default(),
            sign_ins: Arc::default(),
            templates: crate::actions::notify_user::templates::Templates::embedded(),
            view_max_age: VIEW_MAX_AGE,
            incident_comments: None,
            sealer: None,
            watchdog: None,
        }
    }

    /// Another worker of this process with the same clients, settings and caches, and a
    /// lease-holder id of its own (two consumers never both hold one case).
    pub fn sibling(&self) -> Worker {
        Worker {
            ledger: self.ledger.clone(),
            graph: self.graph.clone(),
            policy: self.policy.clone(),
            vault: self.vault.clone(),
            subscriptions: self.subscriptions.clone(),
            allowed_tenants: self.allowed_tenants.clone(),
            holder: crate::cases::lease::holder_id(self.ledger.keeps_work_index()),
            roles: self.roles.clone(),
            sign_ins: self.sign_ins.clone(),
            templates: self.templates.clone(),
            view_max_age: self.view_max_age,
            incident_comments: self.incident_comments.clone(),
            sealer: self.sealer.clone(),
            watchdog: self.watchdog.clone(),
        }
    }

    pub(super) fn tenant_allowed(&self, tenant: &str) -> bool {
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
            // The binding of the signal's caller, checked again: a queue message is not trusted.
            if let WorkItem::Risk(signal) = item
                && let Some(origin) = &signal.origin
                && !origin.covers(tenant)
            {
                tracing::error!(
                    security_event = "foreign_tenant",
                    signal_id = %signal.event_id,
                    tenant_id = %tenant,
                    via = ?origin.via,
                    by = %origin.by,
                    bound_to = %serde_json::json!(origin.tenants),
                    "signal names a tenant its caller may not name: dropped"
                );
                out[index] = Some(Disposition::Done(format!(
                    "signal {} names tenant {tenant}, which {} may not name: dropped",
                    signal.event_id, origin.by
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
    pub(super) async fn tenant_round(
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
        let started = self.graph.now();
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
        if let Some(commenter) = &self.incident_comments {
            let writer = super::writeback::Writer {
                commenter,
                ledger: &self.ledger,
                holder: &self.holder,
            };
            super::writeback::write_back(&writer, signals, &case_of_signal, &work, &mut outcomes)
                .await;
        }
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
    pub(super) async fn tell_incident_no_user(
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

    pub(super) async fn settle_signal(
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

    pub(super) async fn lifecycle(&self, notice: &LifecycleNotice) -> Disposition {
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
