//! The reset's rails at plan time, in the plans they shape: a synced user, self-remediation,
//! the cooldown, and escalations that pass through the same rails.

mod runbook {
    use crate::actions::Rules;
    use crate::cases::case::{ActionState, Case};
    use crate::cases::findings::Findings;
    use crate::cases::plan::plan_case;
    use crate::cases::plan::tests::now;
    use crate::cases::policy::{Action, Mode, Policy};

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
        crate::cases::plan::tests::sentinel_case(Mode::Enforce)
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
        plan_case(
            &mut c,
            &policy(""),
            &findings(true, None),
            None,
            &Rules,
            now(),
        );
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
            &Rules,
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
            &Rules,
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
            &Rules,
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
            &Rules,
            now(),
        );
        assert_eq!(state(&c, Action::ResetPassword), ActionState::Pending);
    }
}

mod escalation_tests {
    //! Escalation passes the appended actions through every rail the first plan passed.
    use crate::actions::Rules;
    use crate::cases::case::{ActionState, Case, CaseStatus};
    use crate::cases::findings::Findings;
    use crate::cases::plan::tests::now;
    use crate::cases::plan::{RAIL_SKIPPED_CASE, escalate_case, plan_case};
    use crate::cases::policy::{Action, Mode, Policy};
    use crate::event::{EventSource, RiskLevel};

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
        let mut c = crate::cases::plan::tests::sentinel_case(policy.mode);
        plan_case(&mut c, policy, findings, None, &Rules, now());
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
            &Rules,
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
        c.approve("alice", "validated", c.plan_version, now())
            .unwrap();
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
        c.approve("alice", "validated", c.plan_version, now())
            .unwrap();
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
        assert_eq!(
            approved
                .approve("bob", "it is real", approved.plan_version, now())
                .unwrap()
                .released,
            5
        );
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
            matches!(state(&c, Action::DismissRisk), ActionState::Skipped { reason, .. } if reason == crate::actions::risk_feedback::RISK_LEFT)
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
            &Rules,
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
        assert_eq!(
            c.approve("alice", "user asked for it", c.plan_version, now())
                .unwrap()
                .released,
            2
        );
    }
}
