//! Preparing leased cases: risk records for resumed cases, escalations first, then the new
//! cases investigated in bulk and planned once (through every rail), the resumed ones' directory
//! facts read again; then the blast-radius rail for what the plans would enforce.

use std::collections::HashMap;

use time::OffsetDateTime;

use super::investigate;
use super::view::{RiskView, ViewError};
use super::worker::{Worker, at_once};
use crate::actions::{Job, Rules};
use crate::cases::case::ActionState;
use crate::cases::findings::{RiskRecord, SignInSummary, UserFacts};
use crate::cases::plan::{RAIL_PROTECTED, escalate_case, plan_case};
use crate::cases::{Case, CaseStatus};
use crate::graph::GraphError;
use crate::ledger::LedgerError;

impl Worker {
    /// Investigates and plans the new cases (in bulk), and reads what the resumed cases'
    /// actions check (directory facts, in bulk; risk from the view).
    pub(super) async fn prepare_all(
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
        // Rails at run time: who is protected now (read at most PROTECTION_TTL ago), for every
        // resumed case; before escalations, which pass through the same rail.
        self.protect_resumed(tenant, jobs, now).await;
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
                        job.case
                            .name_from_directory(found.user.user_principal_name.as_deref(), now);
                        let last_reset =
                            match last_resets.remove(&job.case.case_id).unwrap_or(Ok(None)) {
                                Ok(last) => last,
                                Err(e) => {
                                    self.stop(job, &GraphError::RateLimiter(e.to_string()), now);
                                    continue;
                                }
                            };
                        plan_case(&mut job.case, &self.policy, &found, last_reset, &Rules, now);
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
                        job.case
                            .name_from_directory(found.user_principal_name.as_deref(), now);
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
    pub(super) async fn last_reset(
        &self,
        tenant: &str,
        case: &Case,
    ) -> Result<Option<OffsetDateTime>, LedgerError> {
        let (record, _) = self.ledger.user(tenant, &case.user_id).await?;
        Ok(record.last_reset_by_another(&case.case_id))
    }

    /// Escalates a planned case to the level a signal raised it to, with the rule for that
    /// level, the user's traits and the signal's source, through every rail.
    pub(super) async fn escalate(&self, tenant: &str, job: &mut Job, now: OffsetDateTime) {
        match self.escalate_case(tenant, &mut job.case, now).await {
            Ok(appended) => {
                tracing::info!(case_id = %job.case.case_id, appended, level = ?job.case.risk_level, "case escalated");
            }
            Err(e) => self.stop(job, &GraphError::RateLimiter(e.to_string()), now),
        }
    }

    pub(super) async fn escalate_case(
        &self,
        tenant: &str,
        case: &mut Case,
        now: OffsetDateTime,
    ) -> Result<usize, LedgerError> {
        let (record, _) = self.ledger.user(tenant, &case.user_id).await?;
        // A closed case reopens only while it is still its user's current case.
        if case.is_terminal()
            && let Some(newer) = record
                .current_case
                .as_deref()
                .filter(|current| *current != case.case_id)
        {
            case.decline_escalation(newer, now);
            return Ok(0);
        }
        let last_reset = record.last_reset_by_another(&case.case_id);
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
            &Rules,
            now,
        ))
    }

    pub(super) fn stop(&self, job: &mut Job, e: &GraphError, now: OffsetDateTime) {
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

    /// The protected-account rail again, for every resumed case: a user protected since the
    /// plan was made (added to a protected group or role, listed as break-glass) has every
    /// action that would change the account held for a person, unless a person approved it
    /// already. Escalations then use this verdict, not the one of the plan.
    async fn protect_resumed(&self, tenant: &str, jobs: &mut [Job], now: OffsetDateTime) {
        let users: Vec<String> = jobs
            .iter()
            .filter(|j| !j.stopped && j.case.findings.is_some())
            .map(|j| j.case.user_id.clone())
            .collect();
        if users.is_empty() {
            return;
        }
        let mut verdicts =
            investigate::protection_bulk(&self.graph, &self.roles, &self.policy, tenant, &users)
                .await;
        for job in jobs
            .iter_mut()
            .filter(|j| !j.stopped && j.case.findings.is_some())
        {
            match verdicts.remove(&job.case.user_id).unwrap_or(Ok(None)) {
                Err(e) => self.stop(job, &e, now),
                Ok(verdict) => {
                    if let Some(findings) = job.case.findings.as_mut() {
                        findings.protected = verdict.clone();
                    }
                    let Some(reason) = verdict else { continue };
                    let rail = format!("{RAIL_PROTECTED}: {reason}");
                    let mut held = 0;
                    for action in &mut job.case.actions {
                        if action.action.changes_account()
                            && action.state.runnable()
                            && action.approved_by.is_none()
                        {
                            action.state = ActionState::Held { rail: rail.clone() };
                            action.intent = None;
                            held += 1;
                        }
                    }
                    if held > 0 {
                        job.case.add_rail(rail.clone());
                        job.case.note(
                            now,
                            format!("{held} action(s) held when they were to run: {rail}"),
                        );
                    }
                }
            }
        }
    }
}
