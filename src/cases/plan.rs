//! Planning: once per case, from the policy's rules and the findings, through the safety rails;
//! and escalation, whose appended actions pass through the same rails. Every action's own rails
//! (a synced user's reset, self-remediation, the reset cooldown, the dismiss that follows the
//! reset) are its module's, applied through [`ActionRules`]; the rails of any action are here
//! (the policy's mode, protected accounts). The blast-radius limit needs the tenant's count:
//! the worker applies it to cases marked `admission_due`.

use time::OffsetDateTime;

use std::ops::Range;

use super::case::{ActionState, Case, CaseStatus};
use super::findings::{Findings, Registration};
use super::policy::{Action, Mode, Policy, UserTraits};
use crate::event::{EventSource, RiskLevel};

/// Rail name for protected accounts.
pub const RAIL_PROTECTED: &str = "protected account";
/// Rail name for the per-tenant blast-radius limit.
pub const RAIL_BLAST_RADIUS: &str = "blast-radius limit";
/// Rail name for an escalation of a case a person skipped.
pub const RAIL_SKIPPED_CASE: &str = "escalation of a case a person skipped";

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

/// The plan (or an escalation's appended actions) as each action's own rails see it.
pub struct PlanStep<'a> {
    pub case: &'a mut Case,
    pub policy: &'a Policy,
    pub findings: &'a Findings,
    /// The user's last automatic password reset by another case (the cooldown rail).
    pub last_reset: Option<OffsetDateTime>,
    pub now: OffsetDateTime,
    /// The actions the rails apply to (the whole plan, or what an escalation appended); an
    /// action a rail appends is in the range too.
    pub range: Range<usize>,
}

impl PlanStep<'_> {
    /// The first action `action` in the range that is still pending.
    pub fn pending(&self, action: Action) -> Option<usize> {
        self.range.clone().find(|&i| {
            self.case.actions[i].action == action
                && self.case.actions[i].state == ActionState::Pending
        })
    }
}

/// Every action's own rails at plan time (the actions' modules implement them).
pub trait ActionRules: Sync {
    /// Applies them over `step`, in the order they depend on each other.
    fn at_plan(&self, step: &mut PlanStep<'_>);
}

/// Plans `case` from `findings` under `policy` (its mode already recorded on the case), with
/// every action's own rails from `rules`. `last_reset` is the user's last automatic password
/// reset by another case (the cooldown).
pub fn plan_case(
    case: &mut Case,
    policy: &Policy,
    findings: &Findings,
    last_reset: Option<OffsetDateTime>,
    rules: &dyn ActionRules,
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
    let range = 0..case.actions.len();
    let step = PlanStep {
        case,
        policy,
        findings,
        last_reset,
        now,
        range,
    };
    apply_rails(step, mode, rules);
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
    rules: &dyn ActionRules,
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
    let step = PlanStep {
        case: &mut *case,
        policy,
        findings: &findings,
        last_reset,
        now,
        range: range.clone(),
    };
    apply_rails(step, policy.mode, rules);
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
            case.add_rail(rail.clone());
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

/// The rails over the pending actions in `step.range` (the whole plan, or what an escalation
/// appended): each action's own (`rules`), then the mode, then protection; then whether the
/// blast-radius rail must admit the case.
fn apply_rails(mut step: PlanStep<'_>, mode: Mode, rules: &dyn ActionRules) {
    rules.at_plan(&mut step);
    let PlanStep {
        case,
        findings,
        now,
        range,
        ..
    } = step;
    if mode == Mode::ReportOnly {
        for action in &mut case.actions[range.clone()] {
            if action.state == ActionState::Pending {
                action.state = ActionState::Planned;
            }
        }
    }
    if let Some(reason) = &findings.protected {
        let rail = format!("{RAIL_PROTECTED}: {reason}");
        // Nothing that changes the account without a person; the SOC is told it waits.
        case.hold_range(range.clone(), &rail, true, now);
    }
    if case.actions[range]
        .iter()
        .any(|a| a.state == ActionState::Pending && a.action.changes_account())
    {
        case.admission_due = true;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cases::case::{CaseStatus, Episode, SignalRef};
    use crate::cases::findings::{RiskRecord, SignInSummary, UserFacts};
    use crate::event::{EventSource, RiskLevel};

    /// No action's own rails: what the planner does of itself.
    pub(crate) struct NoRails;

    impl ActionRules for NoRails {
        fn at_plan(&self, _: &mut PlanStep<'_>) {}
    }

    /// The fixed time of every plan test.
    pub(crate) fn now() -> OffsetDateTime {
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
                claimed_upn: None,
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
    pub(crate) fn sentinel_case(mode: Mode) -> Case {
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
            &NoRails,
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
            &NoRails,
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
            &NoRails,
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
        plan_case(&mut c, &Policy::default_policy(), &f, None, &NoRails, now());
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
