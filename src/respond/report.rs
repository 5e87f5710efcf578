//! A case as text for people at a terminal (`cases show`, replay, the demo): who, what was
//! found, the plan with each action's label and outcome, the rails, the decisions, the
//! incident comments, and who acts next.

use crate::actions;
use crate::cases::Case;
use crate::cases::case::{ActionState, Episode};
use crate::cases::incident::WriteBackReport;

/// A case as text, for the CLI and replay (indented two spaces).
pub struct CaseReport<'a>(pub &'a Case);

impl std::fmt::Display for CaseReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.0;
        writeln!(
            f,
            "  case {}  {}  {:?}  user {}  tenant {}  risk {:?}",
            c.case_id,
            c.status.as_str(),
            c.mode,
            c.user_principal_name.as_deref().unwrap_or(&c.user_id),
            c.tenant_id,
            c.risk_level
        )?;
        match &c.episode {
            Episode::IdentityProtection {
                risk_last_updated,
                risk_state,
            } => writeln!(
                f,
                "    episode: Identity Protection, riskState {risk_state}, riskLastUpdatedDateTime {}",
                risk_last_updated.map_or("-".to_owned(), |t| t.to_string())
            )?,
            Episode::Source { source, source_id } => {
                writeln!(f, "    episode: {} detection {source_id}", source.as_str())?
            }
        }
        let sources: Vec<String> = c
            .signals
            .recent
            .iter()
            .map(|s| {
                format!(
                    "{} ({}, {:?})",
                    s.signal_id,
                    s.source.as_str(),
                    s.risk_level
                )
            })
            .collect();
        writeln!(
            f,
            "    signals: {} merged; newest: {}",
            c.signals.count,
            sources.join(", ")
        )?;
        let plain = crate::support::clock::plain;
        match (c.time_to_contain(), c.time_to_close()) {
            (Some(contain), Some(close)) => writeln!(
                f,
                "    time to contain: {}; to remediate: {} (from its first signal's arrival)",
                plain(contain),
                plain(close)
            )?,
            (Some(contain), None) => writeln!(
                f,
                "    time to contain: {} (from its first signal's arrival); not closed yet",
                plain(contain)
            )?,
            (None, Some(close)) => writeln!(
                f,
                "    not contained (nothing that contains the account was done); closed after {}",
                plain(close)
            )?,
            (None, None) => {}
        }
        if let Some(findings) = &c.findings {
            let risk = findings
                .risk
                .as_ref()
                .map_or("no Identity Protection record".to_owned(), |r| {
                    format!("riskLevel {} riskState {}", r.risk_level, r.risk_state)
                });
            writeln!(
                f,
                "    findings: {risk}; {} sign-in(s) blocked with 53011 since {}",
                findings.blocked_sign_ins.count, findings.blocked_sign_ins.since
            )?;
            for line in findings.account_lines() {
                writeln!(f, "    account: {line}")?;
            }
            for s in &findings.blocked_sign_ins.newest {
                writeln!(
                    f,
                    "      {}  {}  {}  {}  {}  {}",
                    s.at,
                    s.app.as_deref().unwrap_or("-"),
                    s.ip_address.as_deref().unwrap_or("-"),
                    s.location.as_deref().unwrap_or("-"),
                    s.client_app.as_deref().unwrap_or("-"),
                    s.device.as_deref().unwrap_or("-")
                )?;
            }
        }
        if !c.rules.is_empty() {
            writeln!(f, "    plan: rule(s) {}", c.rules.join("; "))?;
        }
        if let Some(note) = &c.plan_note {
            writeln!(f, "    plan: {note}")?;
        }
        for a in &c.actions {
            let detail = match &a.state {
                ActionState::Done { detail, at } => {
                    format!(
                        "{at}{}",
                        detail
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    )
                }
                ActionState::Skipped { reason, .. } => reason.clone(),
                ActionState::Held { rail } => rail.clone(),
                ActionState::Failed { error, .. } => error.clone(),
                ActionState::Pending | ActionState::Planned => String::new(),
            };
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            };
            writeln!(
                f,
                "    - {:<20} {:<8} {}{detail}",
                a.action.as_str(),
                a.state.word(),
                actions::label(a.action)
            )?;
        }
        if !c.rails.is_empty() {
            writeln!(f, "    rails: {}", c.rails.join("; "))?;
        }
        for d in &c.decisions {
            writeln!(
                f,
                "    decision: {} by {} at {}: {}",
                d.decision, d.by, d.at, d.reason
            )?;
        }
        write!(f, "{}", WriteBackReport(&c.write_back))?;
        writeln!(f, "    next: {}", c.next_actor())
    }
}
