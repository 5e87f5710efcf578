//! Remediation: carries out the pending actions of many cases in rounds. Each round takes every
//! case's next action and runs each kind of action for all those cases together, through its
//! module (`crate::actions`), so a case keeps its own order while a tenant's cases share
//! requests. A case whose next two actions are an action and its companion (the password reset
//! and the block) has both in one round and one request.

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

use crate::actions::risk_feedback::RISK_ACTION_BATCH;
use crate::actions::{self, Context, Failure, Job, Step};
use crate::cases::case::{ActionState, Intent};
use crate::cases::policy::Action;

/// Cases in one wave. A tenant's cases are remediated in waves that run at once (each its own
/// rounds, so every case is contained at once), the waves delivering their passwords one after
/// another ([`actions::MailTurns`]): a wave's confirm or dismiss (one request for the whole
/// wave: the size of [`RISK_ACTION_BATCH`]) and its SOC digest go while the next wave's
/// password mails are sent, instead of every case's mail waiting for the slowest step of the
/// round.
pub const WAVE: usize = RISK_ACTION_BATCH;

/// Runs the pending actions of `jobs` (one tenant's cases) until each is done, held, or
/// stopped by a failure.
pub async fn run(ctx: &Context<'_>, tenant: &str, jobs: &mut [Job]) {
    while !run_round(ctx, tenant, jobs).await.is_empty() {}
}

/// One round: each case's next runnable action, each kind for all cases together. Returns what
/// ran, as (job index, action); empty when nothing is left to run.
///
/// Write-ahead: before anything runs, every action of the round that changes an account is
/// marked with its intent and each case is saved, conditional on the version last stored. A
/// case a person decided on meanwhile (skipped it) stops there, nothing of it runs. An action
/// found with the intent of a worker that stopped before recording its outcome is reconciled
/// first: if Graph shows its effect, it is recorded done, not carried out again.
pub async fn run_round(ctx: &Context<'_>, tenant: &str, jobs: &mut [Job]) -> Vec<(usize, Action)> {
    let mut ran = Vec::new();
    let picked = pick(jobs);
    if picked.is_empty() {
        return ran;
    }
    let now = ctx.graph.now();
    // Resumed intents whose effect Graph shows: done, not repeated.
    let mut to_run = Vec::with_capacity(picked.len());
    for item in picked {
        let (j, i) = (item.job, item.action);
        let action = jobs[j].case.actions[i].action;
        let reconciled = jobs[j].case.actions[i]
            .intent
            .is_some()
            .then(|| actions::of(action).already_done(action, &jobs[j]))
            .flatten();
        match reconciled {
            Some(detail) => {
                record(
                    tenant,
                    &mut jobs[j],
                    i,
                    action,
                    Ok(Step::Done(Some(detail))),
                    now,
                );
                ran.push((j, action));
            }
            None => to_run.push(item),
        }
    }
    // Intents, then one conditional save of every case of the round before anything runs.
    for item in &to_run {
        for i in std::iter::once(item.action).chain(item.companion) {
            let entry = &mut jobs[item.job].case.actions[i];
            if entry.action.changes_account() && entry.intent.is_none() {
                entry.intent = Some(Intent {
                    at: now,
                    by: ctx.holder.to_owned(),
                    password_changed_before: None,
                    sealed: false,
                    request: None,
                    set_at: None,
                });
            }
        }
    }
    let mut saving: Vec<usize> = to_run.iter().map(|item| item.job).collect();
    saving.dedup();
    ctx.checkpoints.record(jobs, &saving).await;
    // What a person's decision (or another worker) changed meanwhile does not run.
    // A stopped case still delivers a password this worker set.
    to_run.retain(|item| {
        let job = &jobs[item.job];
        (!job.stopped || job.undelivered.contains_key(&item.action))
            && job.case.actions[item.action].state.runnable()
    });
    let mut groups: BTreeMap<Action, Vec<(usize, usize)>> = BTreeMap::new();
    let mut along: HashMap<Action, HashMap<usize, usize>> = HashMap::new();
    for item in to_run {
        groups
            .entry(item.leader)
            .or_default()
            .push((item.job, item.action));
        if let Some(c) = item.companion
            && jobs[item.job].case.actions[c].state.runnable()
        {
            along.entry(item.leader).or_default().insert(item.job, c);
        }
    }
    for (action, items) in groups {
        ran.extend(items.iter().map(|&(j, _)| (j, action)));
        let along = along.remove(&action).unwrap_or_default();
        let outcome = actions::of(action)
            .run(ctx, action, tenant, jobs, &items, &along)
            .await;
        let now = ctx.graph.now();
        for (&(j, i), result) in items.iter().zip(outcome.results) {
            record(tenant, &mut jobs[j], i, action, result, now);
        }
        for (j, i, result) in outcome.along {
            let companion = jobs[j].case.actions[i].action;
            ran.push((j, companion));
            record(tenant, &mut jobs[j], i, companion, result, now);
        }
    }
    ran
}

/// One case's part of a round: its next runnable action and, when the action after it is that
/// action's companion (or the other way round), both, in one request.
struct Picked {
    job: usize,
    /// The action that leads (its module runs both).
    leader: Action,
    action: usize,
    companion: Option<usize>,
}

/// Each case's next runnable action (with its companion when they are neighbours).
fn pick(jobs: &[Job]) -> Vec<Picked> {
    let mut picked = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        if job.stopped {
            // Stopped by a failure or a person's decision: a password this worker set is
            // delivered all the same (a case another worker took over has none left here).
            if let Some(i) = job
                .undelivered
                .keys()
                .copied()
                .filter(|&i| job.case.actions[i].awaits_delivery())
                .min()
            {
                picked.push(Picked {
                    job: j,
                    leader: job.case.actions[i].action,
                    action: i,
                    companion: None,
                });
            }
            continue;
        }
        let mut runnable = job
            .case
            .actions
            .iter()
            .enumerate()
            .filter(|(_, a)| a.state.runnable())
            .peekable();
        // A password set waits for its delivery until the case's other containing actions
        // are done: containing comes before telling.
        let deferred = runnable
            .peek()
            .filter(|(_, a)| a.awaits_delivery())
            .and_then(|_| {
                job.case.actions.iter().enumerate().find(|(_, a)| {
                    a.state.runnable() && a.action.contains() && !a.awaits_delivery()
                })
            });
        if let Some((i, action)) = deferred {
            picked.push(Picked {
                job: j,
                leader: action.action,
                action: i,
                companion: None,
            });
            continue;
        }
        let Some((i, first)) = runnable.next() else {
            continue;
        };
        let second = runnable.next().map(|(k, a)| (k, a.action));
        let pairs = |leader: Action, other: Action| actions::of(leader).companion() == Some(other);
        let (leader, action, companion) = match second {
            Some((k, next)) if pairs(first.action, next) => (first.action, i, Some(k)),
            Some((k, next)) if pairs(next, first.action) => (next, k, Some(i)),
            _ => (first.action, i, None),
        };
        picked.push(Picked {
            job: j,
            leader,
            action,
            companion,
        });
    }
    picked
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
    if let Ok(Step::Contained(what)) = result {
        tracing::info!(case_id = %job.case.case_id, tenant_id = %tenant, action = action.as_str(), "remediation action contained the account");
        job.case.note(now, format!("{}: {what}", action.as_str()));
        job.case.note_containment(now);
        return;
    }
    let entry = &mut job.case.actions[i];
    entry.attempts += 1;
    let (state, what) = match result {
        Ok(Step::Untouched | Step::Contained(_)) => return,
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
    // The outcome is what the case says now; the intent has served. Except for a password
    // that Graph accepted and that is kept sealed but was not delivered: its retry delivers
    // that same password (from the sealed copy) instead of setting another.
    let undelivered_sealed = action == crate::cases::policy::Action::ResetPassword
        && matches!(entry.state, ActionState::Failed { .. })
        && entry
            .intent
            .as_ref()
            .is_some_and(|i| i.set_at.is_some() && i.sealed);
    if !undelivered_sealed {
        entry.intent = None;
    }
    job.case.note(now, what);
    job.case.note_containment(now);
}
