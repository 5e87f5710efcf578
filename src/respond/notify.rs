//! Texts of the mails the worker sends. None of them ever holds a temporary password except
//! the password-delivery mail, which goes only to the configured delivery channel.

use std::fmt::Write;

use crate::cases::Case;
use crate::cases::case::ActionState;
use crate::secrets::SecretString;

fn who(case: &Case) -> &str {
    case.user_principal_name.as_deref().unwrap_or(&case.user_id)
}

/// The SOC's mail about a case: subject and plain-text body. No password, ever.
pub fn soc_mail(case: &Case) -> (String, String) {
    let subject = format!(
        "risk-responder: {} ({:?} risk) case {} {}",
        who(case),
        case.risk_level,
        case.case_id,
        case.status.as_str()
    );
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Case {} for {} (tenant {}).",
        case.case_id,
        who(case),
        case.tenant_id
    );
    let _ = writeln!(
        text,
        "Risk level {:?}; mode {:?}; {} signal(s) merged, opened by {}.",
        case.risk_level,
        case.mode,
        case.signals.count,
        case.opened_by.as_str()
    );
    if let Some(findings) = &case.findings {
        if let Some(risk) = &findings.risk {
            let _ = writeln!(
                text,
                "Identity Protection: riskLevel {}, riskState {}.",
                risk.risk_level, risk.risk_state
            );
        }
        sign_in_lines(&mut text, case);
        if let Some(reason) = &findings.protected {
            let _ = writeln!(text, "Protected account: {reason}.");
        }
    }
    if !case.rules.is_empty() {
        let _ = writeln!(text, "Rule(s): {}.", case.rules.join("; "));
    }
    if let Some(note) = &case.plan_note {
        let _ = writeln!(text, "Plan: {note}.");
    }
    let _ = writeln!(text, "Actions:");
    for action in &case.actions {
        let detail = match &action.state {
            ActionState::Done { detail, .. } => detail.clone().unwrap_or_default(),
            ActionState::Skipped { reason, .. } => reason.clone(),
            ActionState::Held { rail } => rail.clone(),
            ActionState::Failed { error, .. } => error.clone(),
            _ => String::new(),
        };
        let _ = writeln!(
            text,
            "  {} - {} {}",
            action.action.as_str(),
            action.state.word(),
            detail
        );
    }
    if !case.rails.is_empty() {
        let _ = writeln!(text, "Safety rails: {}.", case.rails.join("; "));
    }
    let _ = writeln!(text, "Next: {}.", case.next_actor());
    (subject, text)
}

/// The 53011 sign-ins of the case's findings: count, then the newest few, one line each (time,
/// application, IP address, location, client app, device).
fn sign_in_lines(text: &mut String, case: &Case) {
    let Some(findings) = &case.findings else {
        return;
    };
    let signins = &findings.blocked_sign_ins;
    let _ = writeln!(
        text,
        "Sign-ins blocked with AADSTS53011 since {}: {}.",
        signins.since.date(),
        signins.count
    );
    for s in &signins.newest {
        let _ = writeln!(
            text,
            "  {}  app {}  IP {}  location {}  client {}  device {}",
            s.at,
            s.app.as_deref().unwrap_or("-"),
            s.ip_address.as_deref().unwrap_or("-"),
            s.location.as_deref().unwrap_or("-"),
            s.client_app.as_deref().unwrap_or("-"),
            s.device.as_deref().unwrap_or("-"),
        );
    }
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
    sign_in_lines(&mut text, case);
    (subject, text)
}

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
