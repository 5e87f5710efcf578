//! The case's own rules, case by case: merging, planning, deciding, settling.

use super::*;

fn at(minutes: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_000_000 + minutes * 60).unwrap()
}

pub(crate) fn signal(id: &str, level: RiskLevel) -> SignalRef {
    SignalRef {
        signal_id: id.into(),
        source: EventSource::Sentinel,
        source_id: "alert-1".into(),
        risk_level: level,
        detected_at: at(0),
        claimed_upn: None,
    }
}

fn rule(name: &str, actions: &[Action]) -> Rule {
    Rule {
        name: name.into(),
        min_risk_level: RiskLevel::Low,
        min_blocked_sign_ins: 0,
        sources: None,
        mfa_registered: None,
        synced: None,
        actions: actions.to_vec(),
    }
}

fn case() -> Case {
    let episode = Episode::IdentityProtection {
        risk_last_updated: Some(at(-5)),
        risk_state: "atRisk".into(),
    };
    Case::open(
        "t",
        "u",
        None,
        episode,
        signal("s1", RiskLevel::Medium),
        RiskLevel::Medium,
        Mode::Enforce,
        at(0),
    )
}

#[test]
fn case_ids_are_deterministic_per_episode() {
    let a = Episode::Source {
        source: EventSource::Sentinel,
        source_id: "x".into(),
    };
    let b = Episode::Source {
        source: EventSource::Sentinel,
        source_id: "y".into(),
    };
    assert_eq!(case_id("t", "u", &a), case_id("t", "u", &a));
    assert_ne!(case_id("t", "u", &a), case_id("t", "u", &b));
    assert_ne!(case_id("t", "u", &a), case_id("t", "v", &a));
}

#[test]
fn a_signal_merges_once() {
    let mut c = case();
    assert!(!c.merge(signal("s1", RiskLevel::Medium), at(1)));
    assert!(c.merge(signal("s2", RiskLevel::Medium), at(1)));
    assert_eq!(c.signals.count, 2);
}

#[test]
fn escalation_appends_missing_actions_and_keeps_done_ones() {
    let medium = rule(
        "medium",
        &[
            Action::RevokeSessions,
            Action::ResetPassword,
            Action::Notify,
        ],
    );
    let high = rule(
        "high",
        &[
            Action::RevokeSessions,
            Action::BlockSignIn,
            Action::ResetPassword,
            Action::ConfirmCompromised,
            Action::Notify,
        ],
    );
    let mut c = case();
    c.set_plan(Some(&medium), None, at(0));
    for a in &mut c.actions {
        a.state = ActionState::Done {
            at: at(1),
            detail: None,
        };
    }
    c.settle(at(1));
    assert_eq!(c.status, CaseStatus::Completed);
    assert!(c.escalate(RiskLevel::Medium, Some(&high), at(2)).is_empty());
    assert_eq!(c.escalate(RiskLevel::High, Some(&high), at(2)), 3..6);
    assert_eq!(c.planned_level, Some(RiskLevel::High));
    assert!(!c.needs_escalation());
    let pending: Vec<Action> = c
        .actions
        .iter()
        .filter(|a| a.state == ActionState::Pending)
        .map(|a| a.action)
        .collect();
    assert_eq!(
        pending,
        [
            Action::BlockSignIn,
            Action::ConfirmCompromised,
            Action::Notify
        ]
    );
    // The status is the rails' business (plan::escalate_case).
    assert_eq!(c.status, CaseStatus::Completed);
    assert_eq!(c.rules, ["medium", "high"]);
}

#[test]
fn a_signal_above_the_plan_needs_the_worker_whatever_the_status() {
    let mut c = case();
    c.set_plan(
        Some(&rule("medium", &[Action::RevokeSessions])),
        None,
        at(0),
    );
    c.findings = Some(crate::cases::findings::Findings {
        user: Default::default(),
        risk: None,
        blocked_sign_ins: crate::cases::findings::SignInSummary::empty(at(0)),
        registration: None,
        registration_unknown: None,
        protected: None,
        investigated_at: at(0),
    });
    c.actions[0].state = ActionState::Done {
        at: at(1),
        detail: None,
    };
    c.settle(at(1));
    assert!(!c.needs_worker());
    // A merge raises what the case was seen at; the plan still covers Medium.
    c.risk_level = RiskLevel::High;
    assert!(c.needs_escalation());
    assert!(c.needs_worker() && c.awaits_worker());
    c.status = CaseStatus::Skipped;
    assert!(c.needs_worker());
}

#[test]
fn approval_releases_what_it_approved_and_names_who() {
    let mut c = case();
    c.mode = Mode::ReportOnly;
    c.set_plan(
        Some(&rule("r", &[Action::RevokeSessions, Action::ResetPassword])),
        None,
        at(0),
    );
    c.actions[0].state = ActionState::Planned;
    c.actions[1].state = ActionState::Held {
        rail: "reset cooldown until …".into(),
    };
    c.admission_due = true;
    assert_eq!(
        c.approve("alice", "checked", c.plan_version, at(1))
            .unwrap()
            .released,
        2
    );
    assert!(
        c.actions
            .iter()
            .all(|a| a.state == ActionState::Pending && a.approved_by.as_deref() == Some("alice"))
    );
    assert!(!c.admission_due, "the person is the rail");
}

#[test]
fn a_skipped_case_stays_skipped_when_settled_and_a_failed_alert_is_retried() {
    let mut c = case();
    c.set_plan(Some(&rule("r", &[Action::RevokeSessions])), None, at(0));
    c.skip("alice", "known travel", at(1)).unwrap();
    c.settle(at(2));
    assert_eq!(c.status, CaseStatus::Skipped);
    let mut c = case();
    c.set_plan(Some(&rule("r", &[Action::RevokeSessions])), None, at(0));
    c.hold("blast-radius limit", false, at(0));
    c.blast_alert_due = true;
    c.settle(at(1));
    assert_eq!(c.status, CaseStatus::Retry);
    c.blast_alert_due = false;
    c.settle(at(2));
    assert_eq!(c.status, CaseStatus::AwaitingApproval);
}

#[test]
fn settle_reports_who_acts_next() {
    let mut c = case();
    c.set_plan(
        Some(&rule("r", &[Action::RevokeSessions, Action::Notify])),
        None,
        at(0),
    );
    c.actions[0].state = ActionState::Failed {
        at: at(1),
        error: "403".into(),
        transient: false,
        needs_operator: true,
    };
    c.settle(at(1));
    assert_eq!(c.status, CaseStatus::NeedsOperator);
    assert!(matches!(c.next_actor(), NextActor::Person(_)));
    c.retry("alice", "permission granted", at(2)).unwrap();
    assert_eq!(c.actions[0].state, ActionState::Pending);
    assert_eq!(c.decisions[0].by, "alice");
    c.hold("protected account", true, at(3));
    assert!(matches!(c.actions[0].state, ActionState::Held { .. }));
    assert_eq!(c.actions[1].state, ActionState::Pending);
    c.actions[1].state = ActionState::Done {
        at: at(3),
        detail: None,
    };
    c.settle(at(3));
    assert_eq!(c.status, CaseStatus::AwaitingApproval);
    assert_eq!(
        c.approve("bob", "verified by phone", c.plan_version, at(4))
            .unwrap()
            .released,
        1
    );
    // The SOC is told again what the approval carried out.
    assert_eq!(c.actions.last().unwrap().action, Action::Notify);
    assert_eq!(c.status, CaseStatus::Open);
}

#[test]
fn expected_state_follows_the_last_risk_action_done() {
    let mut c = case();
    c.set_plan(
        Some(&rule("r", &[Action::ResetPassword, Action::DismissRisk])),
        None,
        at(0),
    );
    assert_eq!(c.expected_risk_state(), None);
    c.actions[0].state = ActionState::Done {
        at: at(1),
        detail: None,
    };
    assert_eq!(c.expected_risk_state(), Some("remediated"));
    c.actions[1].state = ActionState::Done {
        at: at(1),
        detail: None,
    };
    assert_eq!(c.expected_risk_state(), Some("dismissed"));
}

#[test]
fn history_is_bounded() {
    let mut c = case();
    for i in 0..500 {
        c.note(at(i), format!("entry {i}"));
    }
    assert_eq!(c.history.len(), HISTORY_KEPT);
    assert_eq!(c.history_dropped, 401);
}

#[test]
fn time_to_contain_is_recorded_once_when_the_containing_actions_are_through() {
    let mut c = case();
    c.set_plan(
        Some(&rule(
            "r",
            &[
                Action::RevokeSessions,
                Action::ResetPassword,
                Action::Notify,
            ],
        )),
        None,
        at(0),
    );
    let done = |minute| ActionState::Done {
        at: at(minute),
        detail: None,
    };
    c.actions[0].state = done(1);
    c.settle(at(1));
    assert_eq!(c.contained_at, None, "the reset is still pending");
    c.actions[1].state = ActionState::Skipped {
        at: at(2),
        reason: "held back".into(),
    };
    c.settle(at(2));
    assert_eq!(c.contained_at, Some(at(2)), "revoked, the reset skipped");
    assert_eq!(c.time_to_contain(), Some(time::Duration::minutes(2)));
    assert_eq!(c.time_to_close(), None, "the SOC is not told yet");
    c.actions[2].state = done(3);
    c.settle(at(3));
    assert_eq!(c.contained_at, Some(at(2)), "recorded once");
    assert_eq!(c.time_to_close(), Some(time::Duration::minutes(3)));
    assert!(
        c.history
            .iter()
            .any(|h| h.what == "contained 2 min 0 s after its first signal arrived"),
        "{:?}",
        c.history
    );
    // A case whose plan contains nothing is never "contained".
    let mut told = case();
    told.set_plan(Some(&rule("r", &[Action::Notify])), None, at(0));
    told.actions[0].state = done(1);
    told.settle(at(1));
    assert_eq!(told.contained_at, None);
}

#[test]
fn a_password_set_contains_the_account_before_its_delivery_and_a_skip_keeps_its_delivery() {
    let mut c = case();
    c.set_plan(
        Some(&rule(
            "r",
            &[
                Action::ResetPassword,
                Action::ConfirmCompromised,
                Action::Notify,
            ],
        )),
        None,
        at(0),
    );
    // The first signal arrived a minute before the worker opened the case: the clocks start
    // there.
    c.first_signal_at = Some(c.opened_at - time::Duration::minutes(1));
    c.actions[0].intent = Some(Intent {
        at: at(1),
        by: "worker".into(),
        password_changed_before: None,
        sealed: true,
        request: Some("PATCH".into()),
        set_at: Some(at(1)),
    });
    assert!(c.actions[0].awaits_delivery());
    c.actions[1].state = ActionState::Done {
        at: at(2),
        detail: None,
    };
    c.note_containment(at(2));
    assert_eq!(c.contained_at, Some(at(2)), "set and confirmed: contained");
    assert_eq!(
        c.time_to_contain(),
        Some(time::Duration::minutes(3)),
        "from the first signal's arrival"
    );
    // A person skips what is left: the password already set is still delivered.
    c.skip("soc@contoso.com", "false positive", at(3)).unwrap();
    assert!(c.actions[0].awaits_delivery(), "{:?}", c.actions[0]);
    assert!(matches!(c.actions[2].state, ActionState::Skipped { .. }));
    assert_ne!(
        c.status,
        CaseStatus::Skipped,
        "open until the password is delivered"
    );
    assert!(
        c.history
            .iter()
            .any(|h| h.what.contains("already set is still delivered"))
    );
}
