//! Issue 13: every remediation the 53011 runbook names. Registration state and hybrid users in
//! the plan, telling the user (from templates, never a password), the user-risk Conditional
//! Access policy, the demo tenant, and local retries.

mod common;
mod graph_standin;

use std::sync::Arc;

use graph_standin::*;
use risk_responder::cases::case::ActionState;
use risk_responder::cases::{Action, Case, CaseStatus, Policy};
use risk_responder::ledger::Ledger;
use risk_responder::queue::WorkItem;
use serde_json::json;

fn runbook_policy(extra: &str) -> Policy {
    let text = risk_responder::cases::policy::DEFAULT_POLICY
        .replace("mode = \"report-only\"", "mode = \"enforce\"")
        .replace(
            "actions = [\"revoke_sessions\", \"reset_password\", \"dismiss_risk\", \"notify\"]",
            "actions = [\"revoke_sessions\", \"reset_password\", \"dismiss_risk\", \"notify\", \"notify_user\"]",
        )
        .replace(
            "actions = [\"revoke_sessions\", \"block_sign_in\", \"reset_password\", \"confirm_compromised\", \"notify\"]",
            "actions = [\"revoke_sessions\", \"block_sign_in\", \"reset_password\", \"confirm_compromised\", \"notify\", \"notify_user\"]",
        );
    let text = text.split("\n[safety]").next().unwrap().to_owned();
    // Top-level keys go before the first table; tables after.
    let (top, extra) = if extra.starts_with('[') {
        ("", extra)
    } else {
        (extra, "")
    };
    Policy::from_toml(&format!(
        "{top}\n{text}\n[notify_user]\nsender = \"risk-responder@contoso.onmicrosoft.com\"\nhelpdesk = \"helpdesk@contoso.onmicrosoft.com, +1 555 0100\"\n{extra}"
    ))
    .unwrap()
}

async fn run(s: &StandIn, policy: Policy, item: WorkItem) -> Case {
    let ledger = memory_ledger();
    let id = match &item {
        WorkItem::Risk(r) => r.event_id.clone(),
        _ => unreachable!(),
    };
    let worker = worker_with(s, ledger.clone(), policy, 3);
    let disposition = worker.handle(&item).await;
    assert!(!disposition.is_retry(), "{disposition:?}");
    ledger.find_case(&id).await.unwrap().unwrap().0
}

fn state(case: &Case, action: Action) -> ActionState {
    case.actions
        .iter()
        .find(|a| a.action == action)
        .unwrap_or_else(|| panic!("{action:?} not in {:#?}", case.actions))
        .state
        .clone()
}

fn user_mails(s: &StandIn) -> Vec<(Vec<String>, String, String)> {
    s.with(|d| {
        d.mails
            .iter()
            .filter(|(_, m)| {
                let subject = m["message"]["subject"].as_str().unwrap_or("");
                !subject.starts_with("risk-responder:")
                    && !subject.starts_with("Temporary password")
            })
            .map(|(_, m)| {
                let to = m["message"]["toRecipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["emailAddress"]["address"].as_str().unwrap().to_owned())
                    .collect();
                (
                    to,
                    m["message"]["subject"].as_str().unwrap().to_owned(),
                    m["message"]["body"]["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    })
}

fn registration(s: &StandIn, mfa: bool, sspr: bool) {
    s.with(|d| {
        d.registrations.insert(
            ADELE.into(),
            json!({"id": ADELE, "userPrincipalName": ADELE_UPN, "isMfaRegistered": mfa,
                "isSsprRegistered": sspr, "methodsRegistered": ["microsoftAuthenticatorPush"]}),
        );
    });
}

#[tokio::test]
async fn a_registered_user_self_remediates_and_gets_sspr_instructions_not_a_reset() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    registration(&s, true, true);
    let case = run(
        &s,
        runbook_policy("[self_remediation]\nenabled = true"),
        adele_item("a-1"),
    )
    .await;
    assert!(
        case.findings
            .as_ref()
            .unwrap()
            .registration
            .as_ref()
            .unwrap()
            .is_sspr_registered
    );
    assert!(
        matches!(state(&case, Action::ResetPassword), ActionState::Skipped { reason, .. } if reason.contains("SSPR"))
    );
    // The risk is left for the user's own secure password change: dismissing it would let the
    // possibly stolen password in again, and the mail says sign-ins may be blocked until then.
    assert!(
        matches!(state(&case, Action::DismissRisk), ActionState::Skipped { reason, .. }
            if reason == "risk left for the user's own secure password change / Conditional Access"),
        "{:?}",
        state(&case, Action::DismissRisk)
    );
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "atRisk"
    );
    assert!(
        !s.writes()
            .iter()
            .any(|w| w.contains("/identityProtection/riskyUsers/dismiss")),
        "{:?}",
        s.writes()
    );
    assert_eq!(case.status, CaseStatus::Completed);
    assert!(matches!(
        state(&case, Action::NotifyUser),
        ActionState::Done { .. }
    ));
    assert_eq!(resets(&s), 0, "no admin reset");
    let mails = user_mails(&s);
    assert_eq!(mails.len(), 1);
    let (to, subject, body) = &mails[0];
    assert_eq!(to, &vec![ADELE_UPN.to_owned()], "to the user's own mailbox");
    assert_eq!(subject, "Please change your password now");
    assert!(
        body.contains("https://aka.ms/sspr") && body.contains(&case.case_id),
        "{body}"
    );
    assert!(
        body.contains("sign-ins may ask for more verification or be blocked"),
        "{body}"
    );
    // The registration read is a report: it was read by $batch on the reports budget.
    assert!(s.with(|d| {
        d.calls
            .iter()
            .any(|(c, _)| c.contains("/reports/authenticationMethods/userRegistrationDetails/"))
    }));
}

#[tokio::test]
async fn a_user_who_cannot_self_remediate_is_reset_and_told_without_the_password() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    registration(&s, false, false);
    let case = run(
        &s,
        runbook_policy("[self_remediation]\nenabled = true"),
        adele_item("a-2"),
    )
    .await;
    assert!(matches!(
        state(&case, Action::ResetPassword),
        ActionState::Done { .. }
    ));
    let password = s.with(|d| {
        d.users[0]["passwordProfile"]["password"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let mails = user_mails(&s);
    assert_eq!(mails.len(), 1);
    let (to, subject, body) = &mails[0];
    assert_eq!(to, &vec![ADELE_UPN.to_owned()]);
    assert_eq!(
        subject,
        "Your password was reset after unusual sign-in activity"
    );
    assert!(
        !body.contains(&password),
        "a user mail never holds the password"
    );
    assert!(body.contains("your manager or the helpdesk"), "{body}");
}

#[tokio::test]
async fn a_user_whose_mailbox_is_at_risk_is_told_through_the_manager() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let case = run(&s, runbook_policy(""), adele_item("a-3")).await;
    assert!(matches!(
        state(&case, Action::BlockSignIn),
        ActionState::Done { .. }
    ));
    let mails = user_mails(&s);
    assert_eq!(mails.len(), 1);
    let (to, _, body) = &mails[0];
    assert_eq!(
        to,
        &vec!["miriam.graham@contoso.onmicrosoft.com".to_owned()],
        "the manager, not the blocked mailbox"
    );
    let password = s.with(|d| {
        d.users[0]["passwordProfile"]["password"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    assert!(!body.contains(&password));
}

/// A user whose mailbox is at risk and who has no manager: the mail is skipped with the reason,
/// or goes to `when_no_manager` when the operator set one.
#[tokio::test]
async fn a_user_without_a_manager_is_told_through_the_configured_fallback() {
    for fallback in [None, Some("helpdesk-queue@contoso.onmicrosoft.com")] {
        let s = start().await;
        seed(&s, "high", "atRisk", 2);
        s.with(|d| d.managers.clear());
        let mut policy = runbook_policy("");
        if let Some(config) = policy.notify_user.as_mut() {
            config.when_no_manager = fallback.map(str::to_owned);
        }
        let case = run(&s, policy, adele_item("a-4")).await;
        let mails = user_mails(&s);
        match fallback {
            None => {
                assert!(mails.is_empty(), "{mails:?}");
                assert!(
                    matches!(state(&case, Action::NotifyUser), ActionState::Skipped { reason, .. }
                        if reason.contains("no manager") && reason.contains("when_no_manager")),
                    "{:?}",
                    state(&case, Action::NotifyUser)
                );
            }
            Some(address) => {
                assert_eq!(mails.len(), 1, "{mails:?}");
                assert_eq!(mails[0].0, vec![address.to_owned()]);
                assert!(matches!(
                    state(&case, Action::NotifyUser),
                    ActionState::Done { .. }
                ));
            }
        }
    }
}

#[tokio::test]
async fn a_hybrid_user_without_password_writeback_is_not_reset() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    s.with(|d| d.users[0]["onPremisesSyncEnabled"] = true.into());
    let case = run(&s, runbook_policy(""), adele_item("a-4")).await;
    assert!(
        matches!(state(&case, Action::ResetPassword), ActionState::Skipped { reason, .. } if reason.contains("password writeback"))
    );
    assert_eq!(resets(&s), 0);
    assert!(case.rails.iter().any(|r| r.contains("hybrid")));
    // The risk is not dismissed without the reset: the case waits for a person.
    assert!(
        matches!(state(&case, Action::DismissRisk), ActionState::Held { rail } if rail.contains("hybrid")),
        "{:?}",
        state(&case, Action::DismissRisk)
    );
    assert_eq!(case.status, CaseStatus::AwaitingApproval);
    assert!(case.next_actor().to_string().starts_with("person"));
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "atRisk"
    );
    // The user is advised to change the password the way the organisation provides.
    let (_, subject, _) = &user_mails(&s)[0];
    assert_eq!(subject, "Unusual sign-in activity on your account");
    // With writeback configured the reset goes ahead.
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    s.with(|d| d.users[0]["onPremisesSyncEnabled"] = true.into());
    let case = run(
        &s,
        runbook_policy("password_writeback = true"),
        adele_item("a-5"),
    )
    .await;
    assert!(matches!(
        state(&case, Action::ResetPassword),
        ActionState::Done { .. }
    ));
}

#[tokio::test]
async fn rules_can_look_at_registration_and_operator_templates_are_used() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    registration(&s, false, false);
    let text = r#"mode = "enforce"
[[rules]]
name = "not registered for MFA: tell them to register"
min_risk_level = "medium"
mfa_registered = false
actions = ["notify_user"]
[[rules]]
name = "everyone else"
min_risk_level = "medium"
actions = ["revoke_sessions"]
[notify_user]
sender = "risk-responder@contoso.onmicrosoft.com"
helpdesk = "x1234"
"#;
    let policy = Policy::from_toml(text).unwrap();
    assert!(policy.needs_registration());
    let dir = std::env::temp_dir().join(format!("templates-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("user-advisory.txt"), "Subject: Contoso security: {{user}}\nRegister MFA, then call {{helpdesk}} (case {{case_id}}).\n").unwrap();
    let ledger = memory_ledger();
    let mut worker = worker_with(&s, ledger.clone(), policy, 3);
    worker.templates =
        risk_responder::actions::notify_user::templates::Templates::from_dir(&dir).unwrap();
    worker.handle(&adele_item("a-6")).await;
    let case = ledger.find_case("a-6").await.unwrap().unwrap().0;
    assert_eq!(
        case.rules,
        ["not registered for MFA: tell them to register"]
    );
    let (_, subject, body) = &user_mails(&s)[0];
    assert_eq!(subject, &format!("Contoso security: {ADELE_UPN}"));
    assert!(body.starts_with("Register MFA, then call x1234"), "{body}");
    std::fs::remove_dir_all(&dir).ok();
}

async fn cli(s: &StandIn, args: &[&str], policy: &std::path::Path) -> (bool, String) {
    // One ledger for the processes of one test: they pace Graph requests through it.
    let ledger = policy.with_extension("sqlite");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .args(args)
        .env("RR_LEDGER_PATH", &ledger)
        .env("RR_GRAPH_BASE_URL", s.graph_url())
        .env("RR_LOGIN_AUTHORITY", s.authority())
        .env("RR_POLICY_FILE", policy)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test]
async fn the_user_risk_policy_is_checked_and_created_report_only() {
    let s = start().await;
    let glass = "5d4a9f6b-8e7a-4b12-8d3e-4f5a6b7c8d9e";
    let policy = std::env::temp_dir().join(format!("ca-policy-{}.toml", uuid::Uuid::new_v4()));
    let text = risk_responder::cases::policy::DEFAULT_POLICY
        .split("\n[safety]")
        .next()
        .unwrap()
        .to_owned()
        + &format!("\n[safety]\nprotected_user_ids = [\"{glass}\"]\n");
    std::fs::write(&policy, text).unwrap();
    let (ok, out) = cli(&s, &["ca-policy", "check"], &policy).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("no user-risk Conditional Access policy"),
        "{out}"
    );

    let (ok, out) = cli(
        &s,
        &["ca-policy", "create", "--levels", "high,medium"],
        &policy,
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("enabledForReportingButNotEnforced"), "{out}");
    let created = s.with(|d| d.ca_policies[0].clone());
    assert_eq!(
        created["state"], "enabledForReportingButNotEnforced",
        "never enabled"
    );
    assert_eq!(
        created["conditions"]["userRiskLevels"],
        json!(["high", "medium"])
    );
    assert_eq!(
        created["conditions"]["users"]["excludeUsers"],
        json!([glass])
    );
    assert_eq!(
        created["grantControls"],
        json!({"operator": "AND", "builtInControls": ["mfa", "passwordChange"]})
    );
    assert_eq!(
        created["sessionControls"]["signInFrequency"]["frequencyInterval"],
        "everyTime"
    );
    // Conditional Access counts against the tenant's Identity Protection budget.
    assert_eq!(s.with(|d| d.throttled.values().sum::<usize>()), 0);

    let (ok, out) = cli(&s, &["ca-policy", "create"], &policy).await;
    assert!(
        !ok && out.contains("has a user-risk policy already"),
        "{out}"
    );

    // A policy someone made without the break-glass exclusion is flagged.
    s.with(|d| {
        d.ca_policies.push(json!({"id": "p2", "displayName": "CA008: Require password change for high-risk users",
            "state": "enabled", "conditions": {"userRiskLevels": ["high"],
            "users": {"includeUsers": ["All"], "excludeUsers": []}, "applications": {"includeApplications": ["All"]}},
            "grantControls": {"operator": "AND", "builtInControls": ["passwordChange"]}}))
    });
    let (ok, out) = cli(&s, &["ca-policy", "check"], &policy).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("CA008")
            && out.contains(&format!(
                "break-glass accounts must be excluded; not excluded: {glass}"
            )),
        "{out}"
    );
    assert!(out.contains("report-only: validate"), "{out}");
    let (ok, out) = cli(
        &s,
        &["ca-policy", "create", "--levels", "severe", "--force"],
        &policy,
    )
    .await;
    assert!(!ok && out.contains("not low, medium or high"), "{out}");
    std::fs::remove_file(&policy).ok();
    for suffix in ["sqlite", "sqlite-wal", "sqlite-shm"] {
        std::fs::remove_file(policy.with_extension(suffix)).ok();
    }
}

#[tokio::test]
async fn the_demo_shows_the_whole_path_with_no_tenant() {
    let dir = std::env::temp_dir().join(format!("demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<String> =
        std::fs::read_dir(format!("{}/events/demo", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| p.display().to_string())
            .collect();
    let mut files = files;
    files.sort();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .arg("replay")
        .arg("--demo")
        .args(&files)
        .current_dir(&dir)
        // Whatever the environment says, the demo reaches no real tenant.
        .env("RR_GRAPH_BASE_URL", "https://192.0.2.1:9/v1.0")
        .env("RR_LOGIN_AUTHORITY", "https://192.0.2.1:9")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{out}{err}");
    assert!(
        err.contains("DEMO MODE") && err.contains("no request can reach Microsoft"),
        "{err}"
    );
    // Signal -> case -> plan -> actions, report-only.
    assert!(out.contains("adele.vance@contoso.onmicrosoft.com"), "{out}");
    assert!(
        out.contains("plan: rule(s) high risk, sign-ins already blocked: contain"),
        "{out}"
    );
    assert!(out.contains("ReportOnly"), "{out}");
    assert!(
        out.contains("they change their own password (SSPR)"),
        "Alex self-remediates: {out}"
    );
    assert!(out.contains("password writeback"), "Grady is hybrid: {out}");
    assert!(out.contains("protected account"), "break-glass held: {out}");
    assert!(
        out.contains("Identity Protection reports no risk for the user"),
        "Megan: {out}"
    );
    assert!(out.contains("Lagos, Lagos, NG"), "sign-in details: {out}");
    // -> audit.
    assert!(out.contains("Audit (risk-responder audit):"), "{out}");
    assert!(out.contains("planned by rule"), "{out}");
    assert!(dir.join("risk-responder-demo.sqlite").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_local_server_retries_failed_work_from_its_ledger() {
    use risk_responder::respond::pending::pending_work;
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let path = std::env::temp_dir().join(format!("pending-{}.sqlite", uuid::Uuid::new_v4()));
    let ledger = Ledger::new(Arc::new(
        risk_responder::ledger::sqlite::SqliteStore::open(&path).unwrap(),
    ))
    .with_work_index();
    let worker = enforcing_worker(&s, ledger.clone(), 2);
    // A signal kept by the intake but never worked (the process stopped).
    let WorkItem::Risk(kept) = adele_item("kept-not-worked") else {
        unreachable!()
    };
    ledger.keep_signals(&[kept]).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    assert!(
        pending_work(&ledger, now, 100).await.unwrap().is_empty(),
        "not before 30 s"
    );
    let later = now + time::Duration::seconds(31);
    let due = pending_work(&ledger, later, 100).await.unwrap();
    assert!(matches!(&due[..], [WorkItem::Risk(r)] if r.event_id == "kept-not-worked"));

    // Worked during an outage: kept for retry, due after the backoff, then finished.
    s.with(|d| {
        d.faults.unavailable_paths.push((
            reqwest::Method::POST,
            "/identityProtection/riskyUsers/confirmCompromised".into(),
        ))
    });
    assert!(worker.handle_batch(&due).await[0].is_retry());
    let case = ledger.cases(1).await.unwrap().remove(0);
    assert_eq!(case.status, CaseStatus::Retry);
    let soon = time::OffsetDateTime::now_utc();
    assert!(
        pending_work(&ledger, soon, 100).await.unwrap().is_empty(),
        "backoff"
    );
    s.with(|d| d.faults.unavailable_paths.clear());
    let due = pending_work(&ledger, soon + time::Duration::seconds(6), 100)
        .await
        .unwrap();
    assert!(
        matches!(&due[..], [WorkItem::Resume { case_id, .. }] if *case_id == case.case_id),
        "{due:?}"
    );
    // A restart: a new worker on the same file resumes it.
    let restarted = enforcing_worker(
        &s,
        Ledger::new(Arc::new(
            risk_responder::ledger::sqlite::SqliteStore::open(&path).unwrap(),
        ))
        .with_work_index(),
        2,
    );
    assert!(!restarted.handle_batch(&due).await[0].is_retry());
    assert_eq!(
        ledger.cases(1).await.unwrap()[0].status,
        CaseStatus::Completed
    );
    assert_eq!(resets(&s), 1);
    std::fs::remove_file(&path).ok();
}

fn stored_case(status: CaseStatus, attempts: u32, user: &str) -> Case {
    use risk_responder::cases::{Episode, Mode, SignalRef};
    use risk_responder::event::{EventSource, RiskLevel};
    let long_ago = time::OffsetDateTime::now_utc() - time::Duration::days(3);
    let mut case = Case::open(
        TENANT,
        user,
        None,
        Episode::Source {
            source: EventSource::Sentinel,
            source_id: format!("alert-{user}"),
        },
        SignalRef {
            signal_id: format!("s-{user}"),
            source: EventSource::Sentinel,
            source_id: format!("alert-{user}"),
            risk_level: RiskLevel::High,
            detected_at: long_ago,
            claimed_upn: None,
        },
        RiskLevel::High,
        Mode::Enforce,
        long_ago,
    );
    case.status = status;
    case.attempts = attempts;
    case.last_error = Some("Graph: 503 Service Unavailable".into());
    case
}

/// Local retries leave a case that needs an operator to a person (`cases retry`), and give up
/// on a case that keeps failing after eight attempts, saying why.
#[tokio::test]
async fn local_retries_leave_operator_work_to_a_person_and_stop_after_eight_attempts() {
    use risk_responder::respond::pending::{MAX_LOCAL_ATTEMPTS, pending_work};
    let ledger = memory_ledger().with_work_index();
    let refused = stored_case(CaseStatus::NeedsOperator, 1, "u-refused");
    let flaky = stored_case(CaseStatus::Retry, MAX_LOCAL_ATTEMPTS, "u-flaky");
    let young = stored_case(CaseStatus::Retry, 2, "u-young");
    for case in [&refused, &flaky, &young] {
        ledger.save_case(case, 0).await.unwrap().unwrap();
    }
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let due = pending_work(&ledger, later, 100).await.unwrap();
    assert!(
        matches!(&due[..], [WorkItem::Resume { case_id, .. }] if *case_id == young.case_id),
        "{due:?}"
    );
    let (gave_up, _) = ledger.case(&flaky.case_id).await.unwrap().unwrap();
    assert_eq!(gave_up.status, CaseStatus::NeedsOperator);
    assert!(
        gave_up
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("local retries gave up after 8 attempts: Graph: 503"),
        "{:?}",
        gave_up.last_error
    );
    assert!(gave_up.next_actor().to_string().starts_with("person"));
    // Forever after: neither is taken up again, however long it waits.
    let much_later = later + time::Duration::days(2);
    let due = pending_work(&ledger, much_later, 100).await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    // A person's retry gives it a fresh count.
    let (mut retried, version) = ledger.case(&refused.case_id).await.unwrap().unwrap();
    retried
        .retry(
            "alice",
            "permission granted",
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    ledger.save_case(&retried, version).await.unwrap().unwrap();
    let due = pending_work(&ledger, much_later, 100).await.unwrap();
    assert!(
        due.iter()
            .any(|d| matches!(d, WorkItem::Resume { case_id, .. } if *case_id == refused.case_id)),
        "{due:?}"
    );
}

/// Work older than whatever changed since is still found (the work index, not the newest
/// records), and an unsettled signal is taken up with backoff, not every 30 s.
#[tokio::test]
async fn local_retries_find_old_work_and_back_off_unsettled_signals() {
    use risk_responder::event::RiskEvent;
    use risk_responder::respond::pending::pending_work;
    let ledger = memory_ledger().with_work_index();
    let WorkItem::Risk(old) = adele_item("old-unsettled") else {
        unreachable!()
    };
    ledger.keep_signals(&[old]).await.unwrap();
    let waiting = stored_case(CaseStatus::Retry, 1, "u-old");
    ledger.save_case(&waiting, 0).await.unwrap().unwrap();
    // 1,500 signals and 1,200 cases settle after them.
    let newer: Vec<RiskEvent> = (0..1500)
        .map(|i| match adele_item(&format!("newer-{i}")) {
            WorkItem::Risk(r) => r,
            _ => unreachable!(),
        })
        .collect();
    ledger.keep_signals(&newer).await.unwrap();
    for signal in &newer {
        ledger.settle_signal(signal, None, "no risk").await.unwrap();
    }
    for i in 0..1200 {
        let mut done = stored_case(CaseStatus::Completed, 1, &format!("u-{i}"));
        done.closed_at = Some(done.updated_at);
        ledger.save_case(&done, 0).await.unwrap().unwrap();
    }
    let start = time::OffsetDateTime::now_utc();
    let at = |s: i64| start + time::Duration::seconds(s);
    let due = pending_work(&ledger, at(31), 100).await.unwrap();
    let ids = |due: &[WorkItem]| -> Vec<String> {
        due.iter()
            .map(|d| match d {
                WorkItem::Risk(r) => r.event_id.clone(),
                WorkItem::Resume { case_id, .. } => case_id.clone(),
                WorkItem::Lifecycle(_) => "lifecycle".into(),
            })
            .collect()
    };
    let mut found = ids(&due);
    found.sort();
    let mut expected = vec![waiting.case_id.clone(), "old-unsettled".to_owned()];
    expected.sort();
    assert_eq!(found, expected);
    // Still unsettled: not again 30 s later, but after the doubled wait.
    let again = ids(&pending_work(&ledger, at(62), 100).await.unwrap());
    assert!(!again.contains(&"old-unsettled".to_owned()), "{again:?}");
    let again = ids(&pending_work(&ledger, at(92), 100).await.unwrap());
    assert!(again.contains(&"old-unsettled".to_owned()), "{again:?}");
    let again = ids(&pending_work(&ledger, at(92 + 100), 100).await.unwrap());
    assert!(!again.contains(&"old-unsettled".to_owned()), "{again:?}");
    let again = ids(&pending_work(&ledger, at(92 + 121), 100).await.unwrap());
    assert!(again.contains(&"old-unsettled".to_owned()), "{again:?}");
    // The settled ones left the index.
    assert!(ledger.pending_marks().await.unwrap().len() <= 2);
}

/// A restarted server takes up at once what the stopped process left (a signal it kept, or
/// took up and never settled), and never what still waits in its own queue.
#[tokio::test]
async fn a_restarted_server_takes_up_what_the_stopped_one_left_at_once() {
    use risk_responder::respond::pending::{ThisProcess, pending_work, pending_work_of};
    let path = std::env::temp_dir().join(format!("restart-{}.sqlite", uuid::Uuid::new_v4()));
    let ledger = Ledger::new(Arc::new(
        risk_responder::ledger::sqlite::SqliteStore::open(&path).unwrap(),
    ))
    .with_work_index();
    let signal = |id: &str| {
        let WorkItem::Risk(kept) = adele_item(id) else {
            unreachable!()
        };
        kept
    };
    ledger
        .keep_signals(&[
            signal("left-behind"),
            signal("taken-up"),
            signal("queued-here"),
        ])
        .await
        .unwrap();
    // The stopped process took up "taken-up" (its attempt counted) 31 s later, then died.
    let kept_at = time::OffsetDateTime::now_utc();
    let first_round = pending_work(&ledger, kept_at + time::Duration::seconds(31), 100)
        .await
        .unwrap();
    assert_eq!(first_round.len(), 3, "{first_round:?}");
    let after_stop = kept_at + time::Duration::seconds(35);
    assert!(
        pending_work(&ledger, after_stop, 100)
            .await
            .unwrap()
            .is_empty(),
        "in backoff for a process that keeps running"
    );
    // The restarted process: started after all that; "queued-here" is in its own queue.
    let queued = |id: &str| id == "queued-here";
    let this = ThisProcess {
        queued: &queued,
        started: after_stop,
    };
    let due = pending_work_of(&ledger, after_stop, 100, Some(&this))
        .await
        .unwrap();
    let mut ids: Vec<String> = due
        .iter()
        .map(|item| match item {
            WorkItem::Risk(r) => r.event_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    ids.sort();
    let mut expected = vec![signal("left-behind").event_id, signal("taken-up").event_id];
    expected.sort();
    assert_eq!(ids, expected);
    std::fs::remove_file(&path).ok();
}
