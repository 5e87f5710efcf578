//! Planning: once per case, from the policy's rules and the findings, through the safety rails
//! that need no counter (protected accounts). The blast-radius limit needs the tenant's count
//! and the reset cooldown the user's last reset: the worker applies those.

use time::OffsetDateTime;

use super::case::{ActionState, Case, CaseAction};
use super::findings::Findings;
use super::policy::{Action, Mode, Policy, UserTraits};

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
        let traits = UserTraits {
            mfa_registered: findings.registration.as_ref().map(|r| r.is_mfa_registered),
            synced: findings.user.on_premises_sync_enabled,
        };
        match policy.rule_for_user(case.risk_level, blocked, case.opened_by, traits) {
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
    let resets = case
        .actions
        .iter()
        .any(|a| a.action == Action::ResetPassword);
    // A contained account (blocked, or confirmed compromised) is not handed back to its user:
    // the admin reset stays.
    let contains = case
        .actions
        .iter()
        .any(|a| matches!(a.action, Action::BlockSignIn | Action::ConfirmCompromised));
    let can_self_remediate = !contains
        && findings
            .registration
            .as_ref()
            .is_some_and(|r| r.is_mfa_registered && r.is_sspr_registered);
    // A synced user's password is mastered on-premises: without password writeback neither an
    // admin reset nor self-service password reset reaches Active Directory.
    let hybrid_without_writeback =
        findings.user.on_premises_sync_enabled == Some(true) && !policy.password_writeback;
    if resets && hybrid_without_writeback {
        skip_reset(
            case,
            "the user is synced from on-premises Active Directory and password writeback is \
             not configured (password_writeback = false): a cloud reset would not take effect",
            now,
        );
        let rail = "hybrid user without password writeback: reset refused".to_owned();
        if !case.rails.contains(&rail) {
            case.rails.push(rail);
        }
    } else if resets && policy.self_remediation.enabled && can_self_remediate {
        skip_reset(
            case,
            "the user is registered for MFA and self-service password reset: they change \
             their own password (SSPR), no admin reset",
            now,
        );
        if !case.actions.iter().any(|a| a.action == Action::NotifyUser) {
            let rule = case.rules.first().cloned().unwrap_or_default();
            case.actions.push(CaseAction {
                action: Action::NotifyUser,
                rule: format!("{rule} (self-remediation)"),
                state: ActionState::Pending,
                attempts: 0,
            });
        }
        case.note(
            now,
            "self-remediation: notify_user with SSPR instructions instead of a reset",
        );
    }
    if case.mode == Mode::ReportOnly {
        for action in &mut case.actions {
            if action.state == ActionState::Pending {
                action.state = ActionState::Planned;
            }
        }
    }
    if let Some(reason) = &findings.protected {
        let rail = format!("{RAIL_PROTECTED}: {reason}");
        // Nothing that changes the account without a person; the SOC is told it waits.
        case.hold(&rail, true, now);
    }
    case.findings = Some(findings.clone());
}

fn skip_reset(case: &mut Case, reason: &str, now: OffsetDateTime) {
    for action in &mut case.actions {
        if action.action == Action::ResetPassword && action.state == ActionState::Pending {
            action.state = ActionState::Skipped {
                at: now,
                reason: reason.to_owned(),
            };
        }
    }
    case.note(now, format!("reset_password refused: {reason}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::case::{CaseStatus, Episode, SignalRef};
    use crate::cases::findings::{RiskRecord, SignInSummary, UserFacts};
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
            registration_unknown: None,
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

#[cfg(test)]
mod runbook_tests {
    use super::*;
    use crate::cases::case::{Episode, SignalRef};
    use crate::cases::findings::{Registration, RiskRecord, SignInSummary, UserFacts};
    use crate::event::{EventSource, RiskLevel};

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap()
    }

    fn policy(extra: &str) -> Policy {
        let text = crate::cases::policy::DEFAULT_POLICY
            .replace("mode = \"report-only\"", "mode = \"enforce\"");
        // Top-level keys before the first table, tables after.
        let (top, extra) = if extra.starts_with('[') {
            ("", extra)
        } else {
            (extra, "")
        };
        Policy::from_toml(&format!("{top}\n{text}\n{extra}")).unwrap()
    }

    fn findings(synced: bool, registration: Option<Registration>) -> Findings {
        Findings {
            user: UserFacts {
                user_id: "u".into(),
                on_premises_sync_enabled: Some(synced),
                ..UserFacts::default()
            },
            risk: Some(RiskRecord {
                risk_level: "medium".into(),
                risk_state: "atRisk".into(),
                risk_detail: None,
                last_updated: Some(now()),
            }),
            blocked_sign_ins: SignInSummary::empty(now()),
            registration,
            registration_unknown: None,
            protected: None,
            investigated_at: now(),
        }
    }

    fn case() -> Case {
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
                source: EventSource::Sentinel,
                source_id: "a".into(),
                risk_level: RiskLevel::Medium,
                detected_at: now(),
            },
            RiskLevel::Medium,
            Mode::Enforce,
            now(),
        )
    }

    fn state(c: &Case, action: Action) -> ActionState {
        c.actions
            .iter()
            .find(|a| a.action == action)
            .unwrap()
            .state
            .clone()
    }

    #[test]
    fn a_synced_user_without_writeback_is_not_reset() {
        let mut c = case();
        plan_case(&mut c, &policy(""), &findings(true, None), now());
        assert!(
            matches!(state(&c, Action::ResetPassword), ActionState::Skipped { reason, .. } if reason.contains("password writeback"))
        );
        assert!(c.rails.iter().any(|r| r.contains("hybrid")));
        let mut c = case();
        plan_case(
            &mut c,
            &policy("password_writeback = true"),
            &findings(true, None),
            now(),
        );
        assert_eq!(state(&c, Action::ResetPassword), ActionState::Pending);
    }

    #[test]
    fn a_registered_user_self_remediates_when_the_policy_says_so() {
        let registered = Registration {
            is_mfa_registered: true,
            is_sspr_registered: true,
            methods_registered: vec!["microsoftAuthenticatorPush".into()],
            capable: None,
        };
        let extra = "[self_remediation]\nenabled = true\n[notify_user]\nsender = \"rr@contoso.com\"\nhelpdesk = \"x\"";
        let mut c = case();
        plan_case(
            &mut c,
            &policy(extra),
            &findings(false, Some(registered.clone())),
            now(),
        );
        assert!(matches!(
            state(&c, Action::ResetPassword),
            ActionState::Skipped { .. }
        ));
        assert_eq!(state(&c, Action::NotifyUser), ActionState::Pending);
        // Not registered for SSPR: the admin reset stays.
        let mut c = case();
        let partial = Registration {
            is_sspr_registered: false,
            ..registered
        };
        plan_case(
            &mut c,
            &policy(extra),
            &findings(false, Some(partial)),
            now(),
        );
        assert_eq!(state(&c, Action::ResetPassword), ActionState::Pending);
    }
}
