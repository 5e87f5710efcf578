//! The words of a case people read, shared by every text about it (the SOC mail and digest,
//! the password mail, `cases show`, the incident comment): who it is about, what investigation
//! found, each action's label and outcome. Never a password: a case holds none.

use std::fmt::Write;

use crate::cases::Case;
use crate::cases::case::ActionState;

/// Who the case is about: the directory's user principal name, else the object id.
pub fn who(case: &Case) -> &str {
    case.user_principal_name.as_deref().unwrap_or(&case.user_id)
}

/// What the investigation found (Identity Protection's record, the 53011 sign-ins with at most
/// `most` of the newest listed, a protected account) and what the plan rests on (rules, note),
/// each line after `indent`.
pub fn findings_and_plan(text: &mut String, case: &Case, indent: &str, most: usize) {
    if let Some(findings) = &case.findings {
        if let Some(risk) = &findings.risk {
            let _ = writeln!(
                text,
                "{indent}Identity Protection: riskLevel {}, riskState {}.",
                risk.risk_level, risk.risk_state
            );
        }
        sign_in_lines(text, case, indent, most);
        for line in findings.account_lines() {
            let _ = writeln!(text, "{indent}Account: {line}.");
        }
        if let Some(reason) = &findings.protected {
            let _ = writeln!(text, "{indent}Protected account: {reason}.");
        }
    }
    if !case.rules.is_empty() {
        let _ = writeln!(text, "{indent}Rule(s): {}.", case.rules.join("; "));
    }
    if let Some(note) = &case.plan_note {
        let _ = writeln!(text, "{indent}Plan: {note}.");
    }
}

/// What an action's line says after its state: the result, the reason it was skipped, the rail
/// that holds it, or the error.
pub fn action_detail(state: &ActionState) -> String {
    match state {
        ActionState::Done { detail, .. } => detail.clone().unwrap_or_default(),
        ActionState::Skipped { reason, .. } => reason.clone(),
        ActionState::Held { rail } => rail.clone(),
        ActionState::Failed { error, .. } => error.clone(),
        _ => String::new(),
    }
}

/// The 53011 sign-ins of the case's findings: count, then at most `most` of the newest, one
/// line each (time, application, IP address, location, client app, device), each line after
/// `indent`.
pub fn sign_in_lines(text: &mut String, case: &Case, indent: &str, most: usize) {
    let Some(findings) = &case.findings else {
        return;
    };
    let signins = &findings.blocked_sign_ins;
    let _ = writeln!(
        text,
        "{indent}Sign-ins blocked with AADSTS53011 since {}: {}.",
        signins.since.date(),
        signins.count
    );
    for s in signins.newest.iter().take(most) {
        let _ = writeln!(
            text,
            "{indent}  {}  app {}  IP {}  location {}  client {}  device {}",
            s.at,
            s.app.as_deref().unwrap_or("-"),
            s.ip_address.as_deref().unwrap_or("-"),
            s.location.as_deref().unwrap_or("-"),
            s.client_app.as_deref().unwrap_or("-"),
            s.device.as_deref().unwrap_or("-"),
        );
    }
}
