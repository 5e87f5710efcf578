//! Planning: once per case, from the policy's rules and the findings, through the safety rails
//! that need no counter (protected accounts). The blast-radius limit needs the tenant's count
//! and the reset cooldown the user's last reset: the worker applies those.

use time::OffsetDateTime;

use super::case::{ActionState, Case};
use super::findings::Findings;
use super::policy::{Mode, Policy};

/// Rail name for protected accounts.
pub const RAIL_PROTECTED: &str = "protected account";
/// Rail name for the per-tenant blast-radius limit.
pub const RAIL_BLAST_RADIUS: &str = "blast-radius limit";

/// Plans `case` from `findings` under `policy` (its mode already recorded on the case).
pub fn plan_case(case: &mut Case, policy: &Policy, findings: &Findings, now: OffsetDateTime) {
    let identity_protection_episode = matches!(
        case.episode,
        super::case::Episode::IdentityProtection { .. }
    );
    if let Some(risk) = findings.risk.as_ref().filter(|r| r.at_risk()) {
        case.risk_level = case.risk_level.max(risk.level());
    }
    if identity_protection_episode && !findings.at_risk() {
        let state = findings
            .risk
            .as_ref()
            .map_or("none", |r| r.risk_state.as_str());
        case.set_plan(
            None,
            Some(format!("user is no longer at risk (riskState {state})")),
            now,
        );
    } else {
        let blocked = findings.blocked_sign_ins.count;
        match policy.rule_for(case.risk_level, blocked, case.opened_by) {
            Some(rule) => case.set_plan(Some(rule), None, now),
            None => case.set_plan(
                None,
                Some(format!(
                    "no rule matches risk level {:?} with {blocked} blocked sign-ins",
                    case.risk_level
                )),
                now,
            ),
        }
    }
    if case.mode == Mode::ReportOnly {
        for action in &mut case.actions {
            action.state = ActionState::Planned;
        }
    }
    if let Some(reason) = &findings.protected {
        let rail = format!("{RAIL_PROTECTED}: {reason}");
        // Nothing that changes the account without a person; the SOC is told it waits.
        case.hold(&rail, true, now);
    }
    case.findings = Some(findings.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::case::{CaseStatus, Episode, SignalRef};
    use crate::cases::findings::{RiskRecord, SignInSummary, UserFacts};
    use crate::cases::policy::Action;
    use crate::event::{EventSource, RiskLevel};

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap()
    }

    fn findings(state: &str, level: &str, blocked: u32) -> Findings {
        Findings {
            user: UserFacts {
                user_id: "u".into(),
                ..UserFacts::default()
            },
            risk: Some(RiskRecord {
                risk_level: level.into(),
                risk_state: state.into(),
                risk_detail: None,
                last_updated: Some(now()),
            }),
            blocked_sign_ins: SignInSummary {
                count: blocked,
                since: now(),
                newest: Vec::new(),
            },
            registration: None,
            protected: None,
            investigated_at: now(),
        }
    }

    fn case(mode: Mode) -> Case {
        Case::open(
            "t",
            "u",
            None,
            Episode::IdentityProtection {
                risk_last_updated: Some(now()),
                risk_state: "atRisk".into(),
            },
            SignalRef {
                signal_id: "s".into(),
                source: EventSource::GraphUser,
                source_id: "n".into(),
                risk_level: RiskLevel::Unknown,
                detected_at: now(),
            },
            RiskLevel::Unknown,
            mode,
            now(),
        )
    }

    #[test]
    fn the_identity_protection_level_picks_the_rule() {
        let mut c = case(Mode::Enforce);
        plan_case(
            &mut c,
            &Policy::default_policy(),
            &findings("atRisk", "high", 3),
            now(),
        );
        assert_eq!(c.risk_level, RiskLevel::High);
        assert!(
            c.actions
                .iter()
                .any(|a| a.action == Action::ConfirmCompromised)
        );
        assert!(c.actions.iter().all(|a| a.state == ActionState::Pending));
    }

    #[test]
    fn report_only_marks_every_action_planned() {
        let mut c = case(Mode::ReportOnly);
        plan_case(
            &mut c,
            &Policy::default_policy(),
            &findings("atRisk", "medium", 0),
            now(),
        );
        assert!(!c.actions.is_empty());
        assert!(c.actions.iter().all(|a| a.state == ActionState::Planned));
    }

    #[test]
    fn a_user_no_longer_at_risk_gets_an_empty_plan_with_the_reason() {
        let mut c = case(Mode::Enforce);
        plan_case(
            &mut c,
            &Policy::default_policy(),
            &findings("remediated", "none", 3),
            now(),
        );
        assert!(c.actions.is_empty());
        assert!(c.plan_note.as_deref().unwrap().contains("remediated"));
        c.settle(now());
        assert_eq!(c.status, CaseStatus::Completed);
    }

    #[test]
    fn protected_accounts_are_held_but_the_soc_is_told() {
        let mut c = case(Mode::Enforce);
        let mut f = findings("atRisk", "high", 3);
        f.protected = Some("listed break-glass account".into());
        plan_case(&mut c, &Policy::default_policy(), &f, now());
        for a in &c.actions {
            if a.action == Action::Notify {
                assert_eq!(a.state, ActionState::Pending);
            } else {
                assert!(matches!(a.state, ActionState::Held { .. }), "{a:?}");
            }
        }
        assert!(c.rails[0].starts_with(RAIL_PROTECTED));
    }
}
