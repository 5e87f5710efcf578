//! Working the cases of a batch: each case leased (so one worker at a time), prepared
//! (investigated and planned once, or resumed), carried out in waves, recorded after every
//! round that did what cannot be repeated, and saved, reconciled with what changed meanwhile.

use std::collections::HashMap;

use super::disposition::Disposition;
use super::remediate::WAVE;
use super::worker::{CASE_LEASE, WATCHDOG_DELAY, Worker, at_once, ledger_retry};
use crate::actions::{Checkpoints, Context, Job, MailTurns};
use crate::cases::case::{ActionState, Lease};
use crate::cases::findings::{RiskRecord, UserFacts};
use crate::cases::{Case, CaseStatus};
use crate::ledger::LedgerError;
use crate::queue::WorkItem;

/// Optimistic-concurrency rounds before a save is left for retry.
const MAX_CONFLICTS: usize = 32;
/// Passes over cases that changed under us (an escalation while we worked) in one batch.
const MAX_PASSES: usize = 3;

/// A case as the lease found it.
enum Leased {
    /// Ours now, at this version; `true` if it needs a watchdog (see [`Worker::watchdog`]).
    Mine(Box<Case>, u64, bool),
    Busy,
    Idle(Box<Case>),
}

/// How a message whose signal went to `case` is disposed of.
pub(super) fn disposition_of(case: &Case) -> Disposition {
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

/// Whether someone else decided on the case since `base` was read: a person's decision, or a
/// plan version that is not ours.
fn decided_meanwhile(base: &Case, fresh: &Case) -> bool {
    fresh.decisions != base.decisions || fresh.plan_version != base.plan_version
}

/// `fresh` (the stored case, changed meanwhile) with what this worker did to `ours` since
/// `base` (the case as leased or last checkpointed): our actions' outcomes win for the actions
/// we ran, our plan (if the stored case had none) and what we appended, rails, history lines,
/// the rail flags; everything else (signals merged, a person's decision) is kept, and after a
/// person's decision what we only intended gives way to it.
fn reconcile(ours: &Case, base: &Case, mut fresh: Case) -> Case {
    // A person's decision (or another plan) since `base` wins over what we only intended:
    // only the outcomes of what we already ran are kept then.
    let decided = decided_meanwhile(base, &fresh);
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
            let Some(before) = base.actions.get(i) else {
                continue;
            };
            // A password set (its delivery still to come) ran, as much as a finished action.
            let ran = before.state != action.state
                || (action.awaits_delivery() && !before.awaits_delivery());
            if before != action
                && (ran || !decided)
                && let Some(slot) = fresh.actions.get_mut(i)
            {
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
    async fn lease(&self, case_id: &str) -> Result<Option<Leased>, LedgerError> {
        for _ in 0..MAX_CONFLICTS {
            let Some((mut case, version)) = self.ledger.case(case_id).await? else {
                return Ok(None);
            };
            if !case.needs_worker() {
                return Ok(Some(Leased::Idle(Box::new(case))));
            }
            let now = self.graph.now();
            if case
                .lease
                .as_ref()
                .is_some_and(|l| l.holder != self.holder && l.is_held(now))
            {
                return Ok(Some(Leased::Busy));
            }
            // A lease of another worker that does not hold (checked above): that worker
            // stopped, or its lease ran out while the case was in progress.
            let stranded = case
                .lease
                .as_ref()
                .filter(|l| {
                    l.holder != self.holder
                        && (l.until > now
                            || matches!(case.status, CaseStatus::New | CaseStatus::Open))
                })
                .map(|l| (l.holder.clone(), l.until > now));
            // A case in `retry` or waiting for an operator keeps its own message for
            // redelivery (and SQS's receive count): only work in progress needs a watchdog, so
            // a case that keeps failing is not retried for ever by watchdogs.
            let arm_watchdog = case.lease.as_ref().is_none_or(|l| l.holder != self.holder)
                && matches!(case.status, CaseStatus::New | CaseStatus::Open);
            case.lease = Some(Lease {
                holder: self.holder.clone(),
                until: now + CASE_LEASE,
            });
            if let Some(version) = self.ledger.save_case(&case, version).await? {
                if let Some((holder, before_its_end)) = stranded {
                    let why = if before_its_end {
                        "its lease holds nothing (the process that held it is gone, or its clock ran ahead)"
                    } else {
                        "its worker stopped before finishing it"
                    };
                    tracing::error!(case_id = %case.case_id, was_held_by = %holder, status = case.status.as_str(), "stranded case taken over: {why}");
                }
                return Ok(Some(Leased::Mine(Box::new(case), version, arm_watchdog)));
            }
        }
        Ok(Some(Leased::Busy))
    }

    /// Sends the watchdogs of the cases just leased (see [`Worker::watchdog`]), in as few
    /// requests as the queue takes. A watchdog that cannot be sent is logged: the case's own
    /// message still comes back after the queue's visibility timeout.
    async fn arm_watchdogs(&self, resumes: &[WorkItem]) {
        let Some(queue) = self.watchdog.as_ref().filter(|_| !resumes.is_empty()) else {
            return;
        };
        if let Err(e) = queue.send_later(resumes, WATCHDOG_DELAY).await {
            tracing::warn!(cases = resumes.len(), error = %e, "case watchdogs not sent: a stopped worker's cases wait for their messages' redelivery");
        }
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

    pub(super) async fn work_pass(
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
        let watched: Vec<WorkItem> = leased
            .iter()
            .filter_map(|(_, lease)| match lease {
                Ok(Some(Leased::Mine(case, _, true))) => Some(WorkItem::Resume {
                    tenant_id: case.tenant_id.clone(),
                    case_id: case.case_id.clone(),
                }),
                _ => None,
            })
            .collect();
        self.arm_watchdogs(&watched).await;
        for (id, lease) in leased {
            match lease {
                Ok(Some(Leased::Mine(case, version, _))) => {
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
                        undelivered: Default::default(),
                        delivered_sealed: Vec::new(),
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
        let now = self.graph.now();
        let pass_started = now;
        self.prepare_all(tenant, &mut jobs, risks, now).await;
        // In waves of WAVE cases, all at once: their passwords are mailed wave after wave.
        let turns = MailTurns::default();
        let waves = jobs.chunks_mut(WAVE).enumerate().map(|(wave, jobs)| {
            let ctx = Context {
                graph: &self.graph,
                policy: &self.policy,
                ledger: &self.ledger,
                vault: self.vault.as_deref(),
                templates: &self.templates,
                turn: Some((&turns, wave)),
                checkpoints: self,
                sealer: self.sealer.as_deref(),
                holder: &self.holder,
            };
            async move { self.remediate_wave(tenant, &ctx, jobs).await }
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
                    // Once per case (the run that contained it, the run that closed it):
                    // embedded-metric figures in Lambda, log lines elsewhere.
                    let mut figures = Vec::new();
                    if let Some(contain) = case
                        .time_to_contain()
                        .filter(|_| case.contained_at >= Some(pass_started))
                    {
                        tracing::info!(case_id = %id, seconds = contain.as_seconds_f64(), "case contained");
                        figures.push(("TimeToContain", contain.as_seconds_f64()));
                    }
                    if let Some(close) = case
                        .time_to_close()
                        .filter(|_| case.closed_at >= Some(pass_started))
                        .filter(|_| case.contained_at.is_some())
                    {
                        figures.push(("TimeToRemediate", close.as_seconds_f64()));
                    }
                    if !figures.is_empty() {
                        crate::support::metrics::seconds(&figures, ("Mode", case.mode.as_str()));
                    }
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
    pub(super) async fn remediate_wave(&self, tenant: &str, ctx: &Context<'_>, jobs: &mut [Job]) {
        loop {
            let resets_left = jobs.iter().any(|job| {
                (!job.stopped || !job.undelivered.is_empty())
                    && job.case.actions.iter().any(|a| {
                        a.action == crate::cases::Action::ResetPassword && a.state.runnable()
                    })
            });
            if !resets_left {
                ctx.pass_turn();
            }
            let ran = super::remediate::run_round(ctx, tenant, jobs).await;
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
                    saves.push(async move {
                        let before = job.version;
                        self.checkpoint(job).await;
                        // Stored (a new version): the case says the password was delivered.
                        if job.version != before {
                            job.forget_delivered(&self.ledger).await;
                        }
                    });
                }
            }
            at_once(saves).await;
        }
        ctx.pass_turn();
    }

    /// Records a job's progress mid-run, keeping the lease. A case changed meanwhile (a signal
    /// merged) is reconciled; a case another worker leased (ours ran out) stops this job: what
    /// it did is reconciled when it finishes, and nothing more runs here.
    pub(super) async fn checkpoint(&self, job: &mut Job) {
        let now = self.graph.now();
        // Nothing runs on what the ledger does not hold: a checkpoint that cannot be stored stops
        // the job (its intents were not written ahead), and the case is retried.
        let unstored = |job: &mut Job, why: String| {
            tracing::warn!(case_id = %job.case.case_id, error = %why, "checkpoint not stored: the case stops here and is retried");
            job.stopped = true;
            job.case.last_error = Some(format!("progress could not be recorded: {why}"));
        };
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
            Err(e) => return unstored(job, e.to_string()),
        }
        for _ in 0..MAX_CONFLICTS {
            let (fresh, version) = match self.ledger.case(&job.case.case_id).await {
                Ok(Some(found)) => found,
                Ok(None) => return unstored(job, "the case is gone".into()),
                Err(e) => return unstored(job, e.to_string()),
            };
            if fresh
                .lease
                .as_ref()
                .is_some_and(|l| l.holder != self.holder && l.is_held(now))
            {
                tracing::error!(case_id = %job.case.case_id, "lease ran out and another worker holds the case: stopping");
                job.stopped = true;
                // The worker that holds it now delivers any password set here (sealed copy).
                job.undelivered.clear();
                job.case.note(
                    now,
                    "this worker's lease ran out: another worker resumes the case",
                );
                return;
            }
            // Ours is adopted only once it is stored: until then `base` stays what the store
            // last had from us, so a later reconcile still sees every outcome of this run.
            let decided = decided_meanwhile(&job.base, &fresh);
            let mut merged = reconcile(&job.case, &job.base, fresh);
            merged.lease = Some(Lease {
                holder: self.holder.clone(),
                until: now + CASE_LEASE,
            });
            if decided {
                // A person decided while this worker held the case: what they decided stands,
                // and nothing more of this run goes ahead.
                merged.note(
                    now,
                    "a person's decision arrived while a worker held the case: the worker stops before its next step",
                );
            }
            match self.ledger.save_case(&merged, version).await {
                Ok(Some(saved)) => {
                    job.base = merged.clone();
                    job.case = merged;
                    job.version = saved;
                    if decided {
                        job.stopped = true;
                    }
                    return;
                }
                Ok(None) => {}
                Err(e) => return unstored(job, e.to_string()),
            }
        }
        unstored(job, "the case kept changing".into());
    }

    /// Saves the worked case, releasing the lease; reconciles with changes made meanwhile (a
    /// signal merged, an escalation, a person's decision): our actions' outcomes win for the
    /// actions we ran, everything else is kept.
    pub(super) async fn finish(&self, job: Job) -> Result<Case, LedgerError> {
        let now = self.graph.now();
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
        ours.count_attempt();
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
            fresh.count_attempt();
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
}
