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
    findings_and_plan(&mut text, case, "", usize::MAX);
    let _ = writeln!(text, "Actions:");
    for action in &case.actions {
        let detail = action_detail(&action.state);
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

/// What the investigation found (Identity Protection's record, the 53011 sign-ins with at most
/// `most` of the newest listed, a protected account) and what the plan rests on (rules, note),
/// each line after `indent`.
fn findings_and_plan(text: &mut String, case: &Case, indent: &str, most: usize) {
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
fn action_detail(state: &ActionState) -> String {
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
fn sign_in_lines(text: &mut String, case: &Case, indent: &str, most: usize) {
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

/// Most cases in one SOC digest mail.
pub const DIGEST_MAX_CASES: usize = 100;
/// Most text in one SOC digest mail. Graph refuses a request over 4 MB, and mails go four to a
/// `$batch`: four digests at this bound stay near 1 MB.
pub const DIGEST_MAX_BYTES: usize = 256 * 1024;
/// Blocked sign-ins shown per case in a digest (the count covers them all).
const DIGEST_SIGN_INS: usize = 3;

/// One case's section of a SOC digest: the case, the user and the level; what was done or is
/// planned; the short 53011 summary (count and the newest three); rails; who must act next once
/// this mail is sent. No password, ever.
pub fn digest_section(case: &Case) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Case {}: {} ({:?} risk; mode {:?}; {} signal(s), opened by {}).",
        case.case_id,
        who(case),
        case.risk_level,
        case.mode,
        case.signals.count,
        case.opened_by.as_str()
    );
    findings_and_plan(&mut text, case, "  ", DIGEST_SIGN_INS);
    let _ = writeln!(text, "  Actions:");
    let now = time::OffsetDateTime::now_utc();
    let mut projected = case.clone();
    for action in &mut projected.actions {
        let this_mail = action.action == crate::cases::Action::Notify && action.state.runnable();
        let detail = if this_mail {
            "this digest".to_owned()
        } else {
            action_detail(&action.state)
        };
        let word = if this_mail {
            "sending"
        } else {
            action.state.word()
        };
        let _ = writeln!(text, "    {} - {} {}", action.action.as_str(), word, detail);
        if this_mail {
            action.state = ActionState::Done {
                at: now,
                detail: None,
            };
        }
    }
    if !case.rails.is_empty() {
        let _ = writeln!(text, "  Safety rails: {}.", case.rails.join("; "));
    }
    // Who acts once this mail is out (the case as it settles without anything else failing).
    if projected.findings.is_some() {
        projected.settle(now);
    }
    let _ = writeln!(text, "  Next: {}.", projected.next_actor());
    text
}

/// Splits digest sections into mails: in order, at most [`DIGEST_MAX_CASES`] sections and
/// [`DIGEST_MAX_BYTES`] of text a mail (a section larger than that goes alone). Returns each
/// mail's section indices.
pub fn pack_digests(sizes: &[usize], max_cases: usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let mut mails: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let fits = mails
            .last()
            .is_some_and(|m| m.len() < max_cases && bytes + size <= max_bytes);
        if fits {
            bytes += size;
            if let Some(last) = mails.last_mut() {
                last.push(i);
            }
        } else {
            mails.push(vec![i]);
            bytes = size;
        }
    }
    mails
}

/// The SOC digest of several cases of one tenant: subject and plain-text body, one section per
/// case ([`digest_section`]); `part` is (this mail, of how many) when the round's cases took
/// more than one mail. No password, ever.
pub fn soc_digest(
    tenant: &str,
    mail_id: &str,
    cases: &[&Case],
    sections: &[String],
    part: Option<(usize, usize)>,
) -> (String, String) {
    let mut levels: Vec<(crate::event::RiskLevel, usize)> = Vec::new();
    for case in cases {
        match levels.iter_mut().find(|(l, _)| *l == case.risk_level) {
            Some((_, n)) => *n += 1,
            None => levels.push((case.risk_level, 1)),
        }
    }
    levels.sort_by_key(|(level, _)| std::cmp::Reverse(*level));
    let levels: Vec<String> = levels
        .iter()
        .map(|(l, n)| format!("{n} {}", format!("{l:?}").to_ascii_lowercase()))
        .collect();
    let part_text = part
        .map(|(i, n)| format!(" (part {i} of {n})"))
        .unwrap_or_default();
    let subject = format!(
        "risk-responder: {} cases in tenant {tenant} ({}){part_text}",
        cases.len(),
        levels.join(", ")
    );
    let waiting = sections
        .iter()
        .filter(|s| s.contains("  Next: person:"))
        .count();
    let mut text = format!(
        "SOC digest {mail_id}{part_text}: {} case(s) of tenant {tenant} worked in one round; {waiting}          wait for a person. One section per case.\n\n",
        cases.len()
    );
    for section in sections {
        text.push_str(section);
        text.push('\n');
    }
    (subject, text)
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
    sign_in_lines(&mut text, case, "", usize::MAX);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_split_at_the_case_and_size_bounds() {
        let sizes = vec![1_000; 250];
        let mails = pack_digests(&sizes, DIGEST_MAX_CASES, DIGEST_MAX_BYTES);
        assert_eq!(
            mails.iter().map(Vec::len).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        let flat: Vec<usize> = mails.concat();
        assert_eq!(
            flat,
            (0..250).collect::<Vec<_>>(),
            "every case once, in order"
        );
        // By size: 100 KiB sections, two to a 256 KiB mail; an oversized one alone.
        let sizes = [100 * 1024, 100 * 1024, 100 * 1024, 300 * 1024, 10];
        assert_eq!(
            pack_digests(&sizes, DIGEST_MAX_CASES, DIGEST_MAX_BYTES),
            [vec![0, 1], vec![2], vec![3], vec![4]]
        );
        assert!(pack_digests(&[], 100, 100).is_empty());
    }
}
