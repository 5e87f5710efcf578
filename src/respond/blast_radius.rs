//! The blast-radius rail: at most `max_enforced_cases_per_hour` enforced cases per tenant in any
//! hour (a sliding window kept in the ledger). Past it, the case is held whole and one alert
//! an hour tells the SOC; the alert is marked sent only once its mail went out.

use time::OffsetDateTime;

use super::worker::Worker;
use crate::actions::Job;
use crate::actions::words::who;
use crate::cases::Case;
use crate::cases::case::ActionState;
use crate::cases::plan::RAIL_BLAST_RADIUS;
use crate::ledger::Admission;

/// The one alert per tenant and hour when the blast-radius limit holds new cases.
pub fn blast_radius_mail(tenant: &str, limit: u32, case: &Case) -> (String, String) {
    let subject = format!("risk-responder: blast-radius limit reached in tenant {tenant}");
    let text = format!(
        "More than {limit} cases would have been remediated automatically in tenant {tenant} within \
         an hour. New cases now wait for a person, starting with case {} ({}).\n\
         Review them with `risk-responder cases list --status awaiting_approval` and approve or skip \
         each. This alert is sent once per hour.\n",
        case.case_id,
        who(case)
    );
    (subject, text)
}

impl Worker {
    /// The per-tenant blast-radius rail, for a case about to change an account in enforce mode
    /// (a new plan, or an escalation's appended actions).
    pub(super) async fn blast_radius(&self, tenant: &str, job: &mut Job, now: OffsetDateTime) {
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
    pub(super) async fn send_blast_alert(&self, tenant: &str, job: &mut Job, now: OffsetDateTime) {
        let limit = self.policy.safety.max_enforced_cases_per_hour;
        let sent = match &self.policy.notify {
            None => {
                job.case
                    .note(now, "blast-radius limit reached; no [notify] to alert");
                Ok(())
            }
            Some(notify) => {
                let (subject, text) = blast_radius_mail(tenant, limit, &job.case);
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
}
