//! Planning: once per case, from the policy's rules and the findings, through the safety rails;
//! and escalation, whose appended actions pass through the same rails. The rails that need no
//! I/O are applied here (protected accounts, hybrid users without password writeback,
//! self-remediation, the reset cooldown from the user's last reset the worker read, the
//! policy's mode). The blast-radius limit needs the tenant's count: the worker applies it to
//! cases marked `admission_due`.

use time::OffsetDateTime;

use super::case::{ActionState, Case, CaseAction, CaseStatus};
use super::findings::{Findings, Registration};
use super::policy::{Action, Mode, Policy, UserTraits};
use crate::event::{EventSource, RiskLevel};

/// Rail name for protected accounts.
pub const RAIL_PROTECTED: &str = "protected account";
/// Rail name for the per-tenant blast-radius limit.
pub const RAIL_BLAST_RADIUS: &str = "blast-radius limit";
/// Rail name for the per-user reset cooldown.
pub const RAIL_COOLDOWN: &str = "reset cooldown";
/// Rail name for synced users whose password cannot be reset from the cloud.
pub const RAIL_HYBRID: &str = "hybrid user without password writeback";
/// Rail name for an escalation of a case a person skipped.
pub const RAIL_SKIPPED_CASE: &str = "escalation of a case a person skipped";
/// Why a dismiss is skipped when the password is not reset by us.
pub const RISK_LEFT: &str =
    "risk left for the user's own secure password change / Conditional Access";

/// Why a synced user's reset is refused.
const HYBRID_REASON: &str = "the user is synced from on-premises Active Directory and password \
     writeback is not configured (password_writeback = false): a cloud reset would not take effect";
/// Why a self-remediating user's reset is skipped (the user mail looks for "self-service").
const SELF_SERVICE_REASON: &str = "the user is registered for MFA and self-service password \
     reset: they change their own password (SSPR), no admin reset";

/// Sign-ins listed in the planning note of the audit trail.
const SIGN_INS_NOTED: usize = 3;

fn traits(findings: &Findings) -> UserTraits {
    UserTraits {
        // Registered with methods the tenant's policies let the user use (`isMfaCapable`),
        // where Graph said so.
        mfa_registered: findings.registration.as_ref().map(Registration::can_mfa),
        synced: findings.user.on_premises_sync_enabled,
    }
}

/// Plans `case` from `findings` under `policy` (its mode already recorded on the case).
/// `last_reset` is the user's last automatic password reset by another case (the cooldown).
pub fn plan_case(
    case: &mut Case,
    policy: &Policy,
    findings: &Findings,
    last_reset: Option<OffsetDateTime>,
    now: OffsetDateTime,
) {
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
        match policy.rule_for_user(case.risk_level, blocked, case.opened_by, traits(findings)) {
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
    case.findings = Some(findings.clone());
    let blocked = &findings.blocked_sign_ins;
    if blocked.count > 0 {
        case.note(now, blocked.short_text(SIGN_INS_NOTED));
    }
    if let Some(why) = &findings.registration_unknown {
        case.note(now, format!("{why}; no self-remediation offered"));
    }
    if findings.user.on_premises_sync_enabled == Some(true) && policy.password_writeback {
        case.note(
            now,
            "synced from on-premises Active Directory: a reset takes effect only through \
             password writeback (password_writeback = true)",
        );
    }
    let mode = case.mode;
    apply_rails(
        case,
        policy,
        findings,
        last_reset,
        0..case.actions.len(),
        mode,
        now,
    );
}

/// Escalates a planned case to `level` (a signal from `source` raised it): the rule for that
/// level and the user's traits gives the missing actions, which pass through every rail the
/// first plan passed through, in the policy's mode now (an approval of the earlier actions
/// does not carry over). A case that completed reopens only for actions that may run; a case
/// a person skipped holds them for a person. Returns how many actions were appended.
pub fn escalate_case(
    case: &mut Case,
    policy: &Policy,
    level: RiskLevel,
    source: EventSource,
    last_reset: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> usize {
    let Some(findings) = case.findings.clone() else {
        return 0;
    };
    let blocked = findings.blocked_sign_ins.count;
    let rule = policy.rule_for_user(level, blocked, source, traits(&findings));
    let range = case.escalate(level, rule, now);
    if range.is_empty() {
        return 0;
    }
    apply_rails(
        case,
        policy,
        &findings,
        last_reset,
        range.clone(),
        policy.mode,
        now,
    );
    let range = range.start..case.actions.len();
    if case.status == CaseStatus::Skipped {
        let rail = format!("{RAIL_SKIPPED_CASE}: a person decides again");
        let mut held = 0;
        for action in &mut case.actions[range.clone()] {
            if action.state == ActionState::Pending {
                action.state = ActionState::Held { rail: rail.clone() };
                held += 1;
            }
        }
        if held > 0 {
            push_rail(case, rail.clone());
            case.note(now, format!("{held} action(s) held: {rail}"));
        }
    }
    let appended = &case.actions[range.clone()];
    let runs = appended.iter().any(|a| a.state == ActionState::Pending);
    let waits = appended
        .iter()
        .any(|a| matches!(a.state, ActionState::Held { .. }));
    let reopened = match case.status {
        CaseStatus::Completed | CaseStatus::AwaitingApproval if runs => Some(CaseStatus::Open),
        CaseStatus::Completed | CaseStatus::Skipped if waits => Some(CaseStatus::AwaitingApproval),
        _ => None,
    };
    if let Some(status) = reopened {
        case.status = status;
        case.closed_at = None;
        case.note(now, format!("status {} (escalation)", status.as_str()));
    }
    range.len()
}

fn push_rail(case: &mut Case, rail: String) {
    if !case.rails.contains(&rail) {
        case.rails.push(rail);
    }
}

/// Every rail that needs no I/O, over the pending actions in `range` (the whole plan, or
/// what an escalation appended): refused or held resets (hybrid user, self-remediation,
/// cooldown) and the dismiss that follows them, the mode, protection; then whether the
/// blast-radius rail must admit the case.
fn apply_rails(
    case: &mut Case,
    policy: &Policy,
    findings: &Findings,
    last_reset: Option<OffsetDateTime>,
    range: std::ops::Range<usize>,
    mode: Mode,
    now: OffsetDateTime,
) {
    // A contained account (blocked, or confirmed compromised) is not handed back to its user:
    // the admin reset stays.
    let contains = case.actions.iter().any(|a| {
        matches!(a.action, Action::BlockSignIn | Action::ConfirmCompromised)
            && !matches!(a.state, ActionState::Skipped { .. })
    });
    let can_self_remediate = !contains
        && findings
            .registration
            .as_ref()
            .is_some_and(Registration::can_self_remediate);
    // A synced user's password is mastered on-premises: without password writeback neither an
    // admin reset nor self-service password reset reaches Active Directory.
    let hybrid_without_writeback =
        findings.user.on_premises_sync_enabled == Some(true) && !policy.password_writeback;
    let cooldown = time::Duration::hours(i64::from(policy.safety.reset_cooldown_hours));
    let cooling = last_reset.filter(|at| now - *at < cooldown);
    let reset = range.clone().find(|&i| {
        case.actions[i].action == Action::ResetPassword
            && case.actions[i].state == ActionState::Pending
    });
    let mut end = range.end;
    if let Some(i) = reset {
        if hybrid_without_writeback {
            case.actions[i].state = ActionState::Skipped {
                at: now,
                reason: HYBRID_REASON.to_owned(),
            };
            push_rail(case, format!("{RAIL_HYBRID}: reset refused"));
            case.note(now, format!("reset_password refused: {HYBRID_REASON}"));
        } else if policy.self_remediation.enabled && can_self_remediate {
            case.actions[i].state = ActionState::Skipped {
                at: now,
                reason: SELF_SERVICE_REASON.to_owned(),
            };
            case.note(
                now,
                format!("reset_password refused: {SELF_SERVICE_REASON}"),
            );
            if !case.actions.iter().any(|a| {
                a.action == Action::NotifyUser && !matches!(a.state, ActionState::Skipped { .. })
            }) {
                let rule = case.actions[i].rule.clone();
                case.actions.push(CaseAction::pending(
                    Action::NotifyUser,
                    &format!("{rule} (self-remediation)"),
                ));
                end = case.actions.len();
            }
            case.note(
                now,
                "self-remediation: notify_user with SSPR instructions instead of a reset",
            );
        } else if let Some(last) = cooling {
            let rail = format!(
                "{RAIL_COOLDOWN} until {} (last automatic reset {last}, cooldown {} h)",
                last + cooldown,
                policy.safety.reset_cooldown_hours
            );
            case.actions[i].state = ActionState::Held { rail: rail.clone() };
            push_rail(case, rail.clone());
            case.note(now, format!("reset_password held: {rail}"));
        }
    }
    // The dismiss follows the reset: without our reset, dismissing would let the user back
    // in with a password that may be stolen.
    let reset_state = case
        .actions
        .iter()
        .rev()
        .find(|a| a.action == Action::ResetPassword)
        .map(|a| a.state.clone());
    for i in range.start..end {
        if case.actions[i].action != Action::DismissRisk
            || case.actions[i].state != ActionState::Pending
        {
            continue;
        }
        let state = match &reset_state {
            Some(ActionState::Held { rail }) => ActionState::Held { rail: rail.clone() },
            Some(ActionState::Skipped { .. }) if hybrid_without_writeback => {
                let rail = format!(
                    "{RAIL_HYBRID}: the user's risk stays until a person changes the password \
                     on-premises and approves the dismiss"
                );
                push_rail(case, rail.clone());
                ActionState::Held { rail }
            }
            Some(ActionState::Skipped { .. }) => ActionState::Skipped {
                at: now,
                reason: RISK_LEFT.to_owned(),
            },
            _ => continue,
        };
        case.note(
            now,
            format!(
                "dismiss_risk {}: the password is not reset by us",
                state.word()
            ),
        );
        case.actions[i].state = state;
    }
    if mode == Mode::ReportOnly {
        for action in &mut case.actions[range.start..end] {
            if action.state == ActionState::Pending {
                action.state = ActionState::Planned;
            }
        }
    }
    if let Some(reason) = &findings.protected {
        let rail = format!("{RAIL_PROTECTED}: {reason}");
        // Nothing that changes the account without a person; the SOC is told it waits.
        case.hold_range(range.start..end, &rail, true, now);
    }
    if case.actions[range.start..end]
        .iter()
        .any(|a| a.state == ActionState::Pending && a.action.changes_account())
    {
        case.admission_due = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::case::{CaseStatus, Episode, SignalRef};
    use crate::cases::findings::{RiskRecord, SignInSummary, UserFacts};
    use crate::event::{EventSource, RiskLevel};

    /// The fixed time of every plan test.
    pub(super) fn now() -> OffsetDateTime {
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

    /// A case of user `u` in tenant `t`, opened in `mode` by one signal from `source` at
    /// `level`, while Identity Protection has the user at risk.
    fn opened(mode: Mode, source: EventSource, source_id: &str, level: RiskLevel) -> Case {
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
                source,
                source_id: source_id.into(),
                risk_level: level,
                detected_at: now(),
            },
            level,
            mode,
            now(),
        )
    }

    /// Opened by a `users` notification, which carries no level.
    fn case(mode: Mode) -> Case {
        opened(mode, EventSource::GraphUser, "n", RiskLevel::Unknown)
    }

    /// Opened by a Medium Sentinel alert.
    pub(super) fn sentinel_case(mode: Mode) -> Case {
        opened(mode, EventSource::Sentinel, "a", RiskLevel::Medium)
    }

    #[test]
    fn the_identity_protection_level_picks_the_rule() {
        let mut c = case(Mode::Enforce);
        plan_case(
            &mut c,
            &Policy::default_policy(),
            &findings("atRisk", "high", 3),
            None,
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
            None,
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
            None,
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
        plan_case(&mut c, &Policy::default_policy(), &f, None, now());
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
    use super::tests::now;
    use super::*;
    use crate::cases::findings::{Registration, RiskRecord, SignInSummary, UserFacts};

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
        super::tests::sentinel_case(Mode::Enforce)
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
        plan_case(&mut c, &policy(""), &findings(true, None), None, now());
        assert!(
            matches!(state(&c, Action::ResetPassword), ActionState::Skipped { reason, .. } if reason.contains("password writeback"))
        );
        assert!(c.rails.iter().any(|r| r.contains("hybrid")));
        let mut c = case();
        plan_case(
            &mut c,
            &policy("password_writeback = true"),
            &findings(true, None),
            None,
            now(),
        );
        assert_eq!(state(&c, Action::ResetPassword), ActionState::Pending);
        // The plan says what the reset relies on.
        assert!(
            c.history
                .iter()
                .any(|h| h.what.contains("only through password writeback")),
            "{:#?}",
            c.history
        );
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
            None,
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
            ..registered.clone()
        };
        plan_case(
            &mut c,
            &policy(extra),
            &findings(false, Some(partial)),
            None,
            now(),
        );
        assert_eq!(state(&c, Action::ResetPassword), ActionState::Pending);
        // Registered, but the tenant's policies do not let the user use SSPR
        // (`isSsprCapable` false): the admin reset stays.
        let mut c = case();
        let not_capable = Registration {
            capable: Some(crate::cases::findings::Capable {
                mfa: true,
                sspr: false,
            }),
            ..registered
        };
        plan_case(
            &mut c,
            &policy(extra),
            &findings(false, Some(not_capable)),
            None,
            now(),
        );
        assert_eq!(state(&c, Action::ResetPassword), ActionState::Pending);
    }
}

#[cfg(test)]
mod escalation_tests {
    //! Escalation passes the appended actions through every rail the first plan passed.
    use super::tests::now;
    use super::*;
    use crate::cases::findings::{Registration, RiskRecord, SignInSummary, UserFacts};

    fn policy(mode: &str, extra: &str) -> Policy {
        let text = crate::cases::policy::DEFAULT_POLICY
            .replace("mode = \"report-only\"", &format!("mode = \"{mode}\""));
        Policy::from_toml(&format!("{extra}\n{text}")).unwrap()
    }

    fn findings(protected: Option<&str>) -> Findings {
        Findings {
            user: UserFacts {
                user_id: "u".into(),
                ..UserFacts::default()
            },
            risk: Some(RiskRecord {
                risk_level: "medium".into(),
                risk_state: "atRisk".into(),
                risk_detail: None,
                last_updated: Some(now()),
            }),
            blocked_sign_ins: SignInSummary {
                count: 2,
                since: now(),
                newest: Vec::new(),
            },
            registration: None,
            registration_unknown: None,
            protected: protected.map(str::to_owned),
            investigated_at: now(),
        }
    }

    /// A Medium case planned under `policy` with `findings`.
    fn planned(policy: &Policy, findings: &Findings) -> Case {
        let mut c = super::tests::sentinel_case(policy.mode);
        plan_case(&mut c, policy, findings, None, now());
        c
    }

    fn finish_all(c: &mut Case) {
        for a in &mut c.actions {
            if a.state.runnable() {
                a.state = ActionState::Done {
                    at: now(),
                    detail: None,
                };
            }
        }
        c.settle(now());
    }

    fn appended(c: &Case, from: usize) -> Vec<(Action, &'static str)> {
        c.actions[from..]
            .iter()
            .map(|a| (a.action, a.state.word()))
            .collect()
    }

    fn escalate(c: &mut Case, policy: &Policy) -> usize {
        c.risk_level = RiskLevel::High;
        escalate_case(
            c,
            policy,
            RiskLevel::High,
            EventSource::Sentinel,
            None,
            now(),
        )
    }

    #[test]
    fn a_protected_case_in_retry_holds_what_the_escalation_adds() {
        let policy = policy("enforce", "");
        let mut c = planned(&policy, &findings(Some("listed break-glass account")));
        // Held but its SOC mail failed: status retry.
        let notify = c.actions.len() - 1;
        c.actions[notify].state = ActionState::Failed {
            at: now(),
            error: "503".into(),
            transient: true,
            needs_operator: false,
        };
        c.settle(now());
        assert_eq!(c.status, CaseStatus::Retry);
        let before = c.actions.len();
        assert_eq!(escalate(&mut c, &policy), 3);
        assert_eq!(
            appended(&c, before),
            [
                (Action::BlockSignIn, "held"),
                (Action::ConfirmCompromised, "held"),
                (Action::Notify, "pending"),
            ]
        );
        assert!(!c.admission_due, "nothing that changes the account runs");
    }

    #[test]
    fn an_approved_report_only_case_stays_report_only_for_later_escalations() {
        let policy = policy("report-only", "");
        let mut c = planned(&policy, &findings(None));
        assert!(c.actions.iter().all(|a| a.state == ActionState::Planned));
        c.approve("alice", "validated", now()).unwrap();
        finish_all(&mut c);
        assert_eq!(c.status, CaseStatus::Completed);
        let before = c.actions.len();
        assert_eq!(escalate(&mut c, &policy), 3);
        assert!(
            appended(&c, before).iter().all(|(_, s)| *s == "planned"),
            "{:?}",
            appended(&c, before)
        );
        assert_eq!(c.status, CaseStatus::Completed, "nothing runs");
        // With the policy switched to enforce, the escalation is enforced.
        let mut c = planned(&policy, &findings(None));
        c.approve("alice", "validated", now()).unwrap();
        finish_all(&mut c);
        let enforce = super::escalation_tests::policy("enforce", "");
        escalate(&mut c, &enforce);
        assert_eq!(c.status, CaseStatus::Open);
        assert!(c.admission_due, "the blast-radius rail admits it first");
    }

    #[test]
    fn a_completed_case_reopens_for_what_may_run() {
        let policy = policy("enforce", "");
        let mut c = planned(&policy, &findings(None));
        c.admission_due = false;
        finish_all(&mut c);
        let before = c.actions.len();
        escalate(&mut c, &policy);
        assert_eq!(
            appended(&c, before),
            [
                (Action::BlockSignIn, "pending"),
                (Action::ConfirmCompromised, "pending"),
                (Action::Notify, "pending"),
            ]
        );
        assert_eq!(c.status, CaseStatus::Open);
        assert!(c.closed_at.is_none());
        assert!(c.admission_due);
    }

    #[test]
    fn an_escalated_skipped_case_waits_for_a_person_who_can_approve_or_skip() {
        let policy = policy("enforce", "");
        let mut c = planned(&policy, &findings(None));
        c.skip("alice", "known travel", now()).unwrap();
        let before = c.actions.len();
        escalate(&mut c, &policy);
        assert!(
            appended(&c, before).iter().all(|(_, s)| *s == "held"),
            "{:?}",
            appended(&c, before)
        );
        assert_eq!(c.status, CaseStatus::AwaitingApproval);
        assert!(c.rails.iter().any(|r| r.starts_with(RAIL_SKIPPED_CASE)));
        let mut approved = c.clone();
        // What the person skipped is offered again with what the higher rule adds.
        assert_eq!(approved.approve("bob", "it is real", now()).unwrap(), 5);
        assert_eq!(approved.status, CaseStatus::Open);
        c.skip("bob", "still travel", now()).unwrap();
        assert_eq!(c.status, CaseStatus::Skipped);
    }

    #[test]
    fn escalation_uses_the_users_traits_and_refuses_a_hybrid_reset() {
        // A rule only for synced users: the escalation must see the trait.
        let extra = "";
        let text = crate::cases::policy::DEFAULT_POLICY
            .replace("mode = \"report-only\"", "mode = \"enforce\"")
            .replacen(
                "[[rules]]",
                "[[rules]]\nname = \"synced, high\"\nmin_risk_level = \"high\"\nsynced = true\nactions = [\"revoke_sessions\", \"reset_password\", \"confirm_compromised\", \"notify\"]\n\n[[rules]]",
                1,
            );
        let policy = Policy::from_toml(&format!("{extra}{text}")).unwrap();
        let mut f = findings(None);
        f.user.on_premises_sync_enabled = Some(true);
        let mut c = planned(&policy, &f);
        finish_all(&mut c);
        let before = c.actions.len();
        escalate(&mut c, &policy);
        assert_eq!(c.rules.last().unwrap(), "synced, high");
        let added = appended(&c, before);
        assert!(
            added.contains(&(Action::ResetPassword, "skipped")),
            "{added:?}"
        );
        assert!(added.contains(&(Action::ConfirmCompromised, "pending")));
    }

    #[test]
    fn a_self_remediating_user_keeps_the_risk_and_a_reset_in_the_cooldown_is_held() {
        let text = "[self_remediation]\nenabled = true\n[notify_user]\nsender = \"rr@contoso.com\"\nhelpdesk = \"x\"";
        let mut policy = policy("enforce", "");
        let extra = Policy::from_toml(&format!(
            "mode = \"enforce\"\n[[rules]]\nname = \"m\"\nmin_risk_level = \"medium\"\nactions = [\"revoke_sessions\", \"reset_password\", \"dismiss_risk\", \"notify\"]\n[password_delivery]\nchannel = \"mail\"\nsender = \"a@b.c\"\nto = [\"h@b.c\"]\n[notify]\nsender = \"a@b.c\"\nto = [\"s@b.c\"]\n{text}"
        ))
        .unwrap();
        policy.self_remediation = extra.self_remediation.clone();
        policy.notify_user = extra.notify_user.clone();
        let mut f = findings(None);
        f.blocked_sign_ins.count = 0;
        f.registration = Some(Registration {
            is_mfa_registered: true,
            is_sspr_registered: true,
            methods_registered: Vec::new(),
            capable: None,
        });
        let c = planned(&policy, &f);
        let state = |c: &Case, a: Action| {
            c.actions
                .iter()
                .find(|x| x.action == a)
                .unwrap()
                .state
                .clone()
        };
        assert!(
            matches!(state(&c, Action::DismissRisk), ActionState::Skipped { reason, .. } if reason == RISK_LEFT)
        );
        assert_eq!(state(&c, Action::NotifyUser), ActionState::Pending);
        // A user reset an hour ago by another case: the reset and its dismiss wait for a person.
        f.registration = None;
        let mut c = Case::open(
            "t",
            "u",
            None,
            c.episode.clone(),
            c.signals.recent[0].clone(),
            RiskLevel::Medium,
            Mode::Enforce,
            now(),
        );
        plan_case(
            &mut c,
            &policy,
            &f,
            Some(now() - time::Duration::hours(1)),
            now(),
        );
        let reset = state(&c, Action::ResetPassword);
        assert!(
            matches!(&reset, ActionState::Held { rail } if rail.starts_with("reset cooldown until ")),
            "{reset:?}"
        );
        assert_eq!(state(&c, Action::DismissRisk), reset);
        assert_eq!(state(&c, Action::RevokeSessions), ActionState::Pending);
        c.actions[0].state = ActionState::Done {
            at: now(),
            detail: None,
        };
        c.actions[3].state = ActionState::Done {
            at: now(),
            detail: None,
        };
        c.settle(now());
        assert_eq!(c.status, CaseStatus::AwaitingApproval);
        assert_eq!(c.approve("alice", "user asked for it", now()).unwrap(), 2);
    }
}
