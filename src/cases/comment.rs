//! The comment a case writes onto its Sentinel incidents: what happened (case, user, status,
//! mode, every action and its state, the rails, who must act next), built only from the case,
//! so nothing secret can be in it (a case never holds a temporary password, a token or a
//! credential). Text from elsewhere (names, locations, Graph errors) is escaped.

use std::fmt::Write;

use time::OffsetDateTime;

use super::case::{ActionState, Case, CaseStatus, NextActor};
use super::incident::{MAX_COMMENT_CHARS, esc};
use super::policy::Mode;
use crate::event::derive_event_id;

/// Whether the case is in a state its incidents hear about: completed, skipped, awaiting a
/// person's approval, or needing an operator.
pub fn settled(case: &Case) -> bool {
    matches!(
        case.status,
        CaseStatus::Completed
            | CaseStatus::Skipped
            | CaseStatus::AwaitingApproval
            | CaseStatus::NeedsOperator
    )
}

/// What the comment reports, as a short digest: status, mode, each action and its state, the
/// rails and the plan note. Two runs that leave the case the same give the same key (a retry
/// writes nothing new); a later state gives a new one.
pub fn outcome_key(case: &Case) -> String {
    let mut parts: Vec<String> = vec![
        "outcome".into(),
        case.status.as_str().into(),
        format!("{:?}", case.mode),
        case.plan_note.clone().unwrap_or_default(),
    ];
    for action in &case.actions {
        parts.push(format!(
            "{}={}",
            action.action.as_str(),
            action.state.word()
        ));
    }
    parts.extend(case.rails.iter().cloned());
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    derive_event_id(&refs)[..16].to_owned()
}

/// The line that ends every comment: it names the case and the outcome, so the Graph path can
/// tell whether an incident already carries this outcome.
pub fn marker(case: &Case, outcome: &str) -> String {
    format!("risk-responder case {} · outcome {outcome}", case.case_id)
}

/// As [`esc`], keeping the code spans of a text that mixes our own commands (in backticks)
/// with values from elsewhere (errors, rails): paired backticks stay, so our commands still
/// show as code; everything between and around them is escaped all the same (our commands hold
/// no other metacharacter, so nothing shows differently inside a span, and a span that Markdown
/// would not pair up can expose nothing). An unpaired backtick is escaped.
fn esc_keeping_code(value: &str) -> String {
    let parts: Vec<&str> = value.split('`').collect();
    let paired = (parts.len() - 1) / 2 * 2;
    let mut out = String::with_capacity(value.len() + 8);
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            out.push_str(&esc(part));
            continue;
        }
        out.push_str(if i <= paired { "`" } else { "\\`" });
        // Not at the start of the value: a leading marker is just text here.
        out.push_str(esc(&format!(" {part}")).get(1..).unwrap_or(""));
    }
    out
}

/// Length as Sentinel counts it: UTF-16 code units.
fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// The longest prefix of `text` within `limit` UTF-16 code units, cut between characters.
fn clip_utf16(text: &str, limit: usize) -> &str {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += c.len_utf16();
        if used > limit {
            return &text[..at];
        }
    }
    text
}

fn when(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

fn action_detail(state: &ActionState) -> String {
    match state {
        ActionState::Done { detail, at } => match detail {
            Some(d) => format!("{}: {d}", when(*at)),
            None => when(*at),
        },
        ActionState::Skipped { reason, .. } => reason.clone(),
        ActionState::Held { rail } => rail.clone(),
        ActionState::Failed { error, .. } => error.clone(),
        ActionState::Pending | ActionState::Planned => String::new(),
    }
}

/// The comment about `case` whose outcome is `outcome` (Markdown that reads as plain text, at
/// most [`MAX_COMMENT_CHARS`] characters). Never holds a password: nothing in a case does.
pub fn comment_text(case: &Case, outcome: &str) -> String {
    let who = case.user_principal_name.as_deref().unwrap_or(&case.user_id);
    let report_only = case.mode == Mode::ReportOnly;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "**risk-responder**: case {} for {} is **{}**{}.",
        case.case_id,
        esc(who),
        case.status.as_str().replace('_', " "),
        if report_only {
            " (report-only: nothing was changed; this is the plan)"
        } else {
            ""
        }
    );
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "- Risk level {:?}; mode {}; {} signal(s) merged, opened by {}.",
        case.risk_level,
        if report_only {
            "report-only"
        } else {
            "enforce"
        },
        case.signals.count,
        case.opened_by.as_str()
    );
    if let Some(findings) = &case.findings {
        if let Some(risk) = &findings.risk {
            let _ = writeln!(
                t,
                "- Identity Protection when investigated: riskLevel {}, riskState {}.",
                esc(&risk.risk_level),
                esc(&risk.risk_state)
            );
        }
        let signins = &findings.blocked_sign_ins;
        let _ = writeln!(
            t,
            "- Sign-ins blocked with AADSTS53011 since {}: {}.",
            signins.since.date(),
            signins.count
        );
        for s in &signins.newest {
            let _ = writeln!(
                t,
                "  - {}  app {}  IP {}  location {}",
                esc(&s.at),
                esc(s.app.as_deref().unwrap_or("-")),
                esc(s.ip_address.as_deref().unwrap_or("-")),
                esc(s.location.as_deref().unwrap_or("-")),
            );
        }
        if let Some(reason) = &findings.protected {
            let _ = writeln!(t, "- Protected account: {}.", esc(reason));
        }
    }
    if !case.rules.is_empty() {
        let _ = writeln!(t, "- Rule(s): {}.", esc(&case.rules.join("; ")));
    }
    if let Some(note) = &case.plan_note {
        let _ = writeln!(t, "- Plan: {}.", esc(note));
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "{}",
        if report_only {
            "Planned actions:"
        } else {
            "Actions:"
        }
    );
    let _ = writeln!(t);
    if case.actions.is_empty() {
        let _ = writeln!(t, "- none");
    }
    for action in &case.actions {
        let detail = action_detail(&action.state);
        let _ = writeln!(
            t,
            "- {}: {}{}",
            action.action.as_str(),
            action.state.word(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", esc(&detail))
            }
        );
    }
    let _ = writeln!(t);
    if case.rails.is_empty() {
        let _ = writeln!(t, "Safety rails: none applied.");
    } else {
        let _ = writeln!(t, "Safety rails: {}.", esc(&case.rails.join("; ")));
    }
    let _ = writeln!(t);
    for d in &case.decisions {
        let _ = writeln!(
            t,
            "Decision: {} by {} at {}: {}.",
            esc(&d.decision),
            esc(&d.by),
            when(d.at),
            esc(&d.reason)
        );
        let _ = writeln!(t);
    }
    let next = match (report_only, case.next_actor()) {
        (true, _) if case.status == CaseStatus::Completed => format!(
            "a person carries out the plan with `risk-responder cases approve {}` (or leaves it)",
            case.case_id
        ),
        (_, NextActor::Person(what)) => format!("a person: {what}"),
        (_, NextActor::Worker(what)) => format!("risk-responder: {what}"),
        (_, NextActor::Nobody) => "nobody; the case is closed".to_owned(),
    };
    let _ = writeln!(t, "**Next**: {}.", esc_keeping_code(&next));
    let _ = writeln!(t);
    let end = marker(case, outcome);
    let shortened = "\n\n… (shortened; `risk-responder cases show` has it all)\n\n";
    let room = MAX_COMMENT_CHARS.saturating_sub(utf16_len(&end) + utf16_len(shortened));
    if utf16_len(&t) > room {
        t = clip_utf16(&t, room).to_owned();
        t.push_str(shortened);
    }
    t.push_str(&end);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(esc("<img src=x>&\n"), "&lt;img src=x&gt;&amp; ");
    }

    #[test]
    fn markdown_in_names_cannot_make_links_or_formatting() {
        let hostile = "[Reset your password](https://evil.example/login) ![p](https://evil.example/p.png) **urgent** _x_ `code` # h | t | ~~s~~ {a} \\";
        let escaped = esc(hostile);
        assert_eq!(
            escaped,
            r"\[Reset your password\]\(https://evil.example/login\) \!\[p\]\(https://evil.example/p.png\) \*\*urgent\*\* \_x\_ \`code\` \# h \| t \| \~\~s\~\~ \{a\} \\"
        );
        // Every metacharacter is escaped: none stands unescaped.
        let bytes = escaped.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if b"[]()*_`#!|~{}".contains(b) {
                assert_eq!(bytes[i - 1], b'\\', "unescaped {} in {escaped}", *b as char);
            }
        }
        // A leading list, quote or heading marker.
        assert_eq!(esc("- item"), r"\- item");
        assert_eq!(esc("+ item"), r"\+ item");
        assert_eq!(esc("> quote"), "&gt; quote");
        assert_eq!(esc("a-b"), "a-b", "only a leading marker");
    }

    #[test]
    fn our_commands_stay_code_and_outside_text_around_them_is_escaped() {
        let next = "`cases approve c-1` or `cases skip c-1 --reason ...` (blast radius [x](https://evil.example) <b>)";
        assert_eq!(
            esc_keeping_code(next),
            r"`cases approve c-1` or `cases skip c-1 --reason ...` \(blast radius \[x\]\(https://evil.example\) &lt;b&gt;\)"
        );
        // A backtick from an error message cannot open a span of its own around a link.
        let error =
            "fix it, then `cases retry c-2`: Graph said ` [x](https://evil.example) <img src=x>";
        let escaped = esc_keeping_code(error);
        assert_eq!(
            escaped,
            r"fix it, then `cases retry c-2`: Graph said \` \[x\]\(https://evil.example\) &lt;img src=x&gt;"
        );
        // Inside a span from elsewhere, markup is escaped too.
        assert_eq!(
            esc_keeping_code("a `<img>[x](y)` b"),
            r"a `&lt;img&gt;\[x\]\(y\)` b"
        );
        assert_eq!(esc_keeping_code("- x"), r"\- x");
        assert_eq!(esc_keeping_code("`a` - x"), "`a` - x");
    }

    #[test]
    fn comments_are_clipped_in_utf16_units_between_characters() {
        // "😀" is one char but two UTF-16 units.
        assert_eq!(utf16_len("a😀"), 3);
        assert_eq!(clip_utf16("a😀b", 2), "a");
        assert_eq!(clip_utf16("a😀b", 3), "a😀");
        assert_eq!(clip_utf16("abc", 10), "abc");
    }
}
