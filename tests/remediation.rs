//! Graph client, investigation, plans and remediation against the Graph simulator.

mod common;
mod graph_standin;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use graph_standin::*;
use reqwest::Method;
use risk_responder::cases::case::ActionState;
use risk_responder::cases::{Action, Case, CaseStatus, Mode, Policy};
use risk_responder::event::{EventSource, RiskEvent, RiskLevel, Subject};
use risk_responder::graph::{ClientCredential, GraphClient, GraphError};
use risk_responder::queue::WorkItem;
use risk_responder::respond::Disposition;
use risk_responder::support::secret::SecretString;
use serde_json::json;

fn graph_client(s: &StandIn, credential: ClientCredential) -> Arc<GraphClient> {
    s.client(credential, 4)
}

fn secret() -> ClientCredential {
    ClientCredential::Secret(SecretString::new(CLIENT_SECRET))
}

fn event(level: RiskLevel) -> RiskEvent {
    RiskEvent {
        event_id: "evt-1".into(),
        tenant_id: TENANT.into(),
        source: EventSource::Sentinel,
        subject: Subject::User {
            id: Some(ADELE.into()),
            upn: None,
        },
        risk_level: level,
        detected_at: time::OffsetDateTime::now_utc(),
        source_id: "alert-1".into(),
        resource_data: None,
        origin: None,
    }
}

/// Runs one signal through a worker with `policy`; returns the disposition and the case.
async fn run_with(
    s: &StandIn,
    policy: Policy,
    signal: RiskEvent,
    attempts: u32,
) -> (Disposition, Option<Case>) {
    let ledger = memory_ledger();
    let worker = worker_with(s, ledger.clone(), policy, attempts);
    let id = signal.event_id.clone();
    let disposition = worker.handle(&WorkItem::Risk(signal)).await;
    let case = ledger.find_case(&id).await.unwrap().map(|(c, _)| c);
    (disposition, case)
}

async fn run(s: &StandIn, mode: Mode, level: RiskLevel) -> (Disposition, Case) {
    let (d, case) = run_with(s, policy(mode), event(level), 4).await;
    (d, case.expect("a case"))
}

fn statuses(case: &Case) -> Vec<(Action, ActionState)> {
    case.actions
        .iter()
        .map(|a| (a.action, a.state.clone()))
        .collect()
}

fn done(state: &ActionState) -> bool {
    matches!(state, ActionState::Done { .. })
}

#[tokio::test]
async fn investigation_reads_risk_and_pages_through_53011_sign_ins() {
    let s = start().await;
    seed(&s, "high", "atRisk", 5);
    let (_, case) = run(&s, Mode::ReportOnly, RiskLevel::Unknown).await;
    let findings = case.findings.expect("findings");
    assert_eq!(findings.user.user_id, ADELE);
    assert_eq!(findings.risk.unwrap().risk_level, "high");
    assert_eq!(findings.blocked_sign_ins.count, 5);
    let newest = &findings.blocked_sign_ins.newest[0];
    assert_eq!(newest.app.as_deref(), Some("Office 365 Exchange Online"));
    assert_eq!(newest.ip_address.as_deref(), Some("203.0.113.77"));
    assert_eq!(newest.client_app.as_deref(), Some("Browser"));
    assert_eq!(newest.device.as_deref(), Some("Linux, Firefox 140.0"));
    let sign_in_calls = s.with(|d| {
        d.calls
            .iter()
            .filter(|(c, _)| c.contains("/auditLogs/signIns"))
            .count()
    });
    assert_eq!(sign_in_calls, 3, "5 results at 2 per page");
    // $select everywhere the API supports it; users are read by `$filter=id in (…)`.
    let user_read = s.with(|d| {
        d.calls
            .iter()
            .find(|(c, _)| c.starts_with("GET /v1.0/users?"))
            .unwrap()
            .0
            .clone()
    });
    let query: std::collections::HashMap<String, String> =
        form_urlencoded::parse(user_read.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    assert!(
        query["$select"].starts_with("id,userPrincipalName")
            && query["$filter"] == format!("id in ('{ADELE}')"),
        "{user_read}"
    );
}

#[tokio::test]
async fn report_only_plans_without_changing_anything() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let (_, case) = run(&s, Mode::ReportOnly, RiskLevel::High).await;
    assert_eq!(case.rules, ["high risk, sign-ins already blocked: contain"]);
    assert!(
        statuses(&case)
            .iter()
            .all(|(_, st)| *st == ActionState::Planned)
    );
    assert!(s.writes().is_empty(), "report-only wrote: {:?}", s.writes());
    assert!(s.with(|d| d.mails.is_empty()));
}

#[tokio::test]
async fn enforce_carries_out_the_plan_in_order_and_keeps_the_password_out_of_logs() {
    let (logs, _guard) = common::Logs::capture();
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let (_, case) = run(&s, Mode::Enforce, RiskLevel::High).await;
    let st = statuses(&case);
    assert!(st.iter().all(|(_, status)| done(status)), "{st:?}");
    assert_eq!(
        s.writes()
            .iter()
            .map(|c| c.split('?').next().unwrap().to_owned())
            .collect::<Vec<_>>(),
        [
            format!("POST /v1.0/users/{ADELE}/revokeSignInSessions"),
            // block and password in one PATCH: set first, then delivered (never a mail of a
            // password not set); contain first: the confirm before the password's mail, then
            // the SOC mail
            format!("PATCH /v1.0/users/{ADELE}"),
            "POST /v1.0/identityProtection/riskyUsers/confirmCompromised".to_owned(),
            "POST /v1.0/users/risk-responder@contoso.onmicrosoft.com/sendMail".to_owned(),
            "POST /v1.0/users/risk-responder@contoso.onmicrosoft.com/sendMail".to_owned(),
        ]
    );
    let (password, mails, user) = s.with(|d| {
        let user = d.users.iter().find(|u| u["id"] == ADELE).unwrap().clone();
        (
            user["passwordProfile"]["password"]
                .as_str()
                .unwrap()
                .to_owned(),
            d.mails.clone(),
            user,
        )
    });
    assert_eq!(
        user["passwordProfile"]["forceChangePasswordNextSignIn"],
        true
    );
    assert_eq!(user["accountEnabled"], false);
    let password_mail = &mails[0].1;
    let recipients: Vec<&str> = password_mail["message"]["toRecipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["emailAddress"]["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        recipients,
        [
            "helpdesk@contoso.onmicrosoft.com",
            "miriam.graham@contoso.onmicrosoft.com"
        ]
    );
    let helpdesk = password_mail["message"]["body"]["content"]
        .as_str()
        .unwrap();
    assert!(helpdesk.contains(&password));
    // The helpdesk sees the blocked sign-ins, to check them with the user.
    assert!(
        helpdesk.contains("Sign-ins blocked with AADSTS53011") && helpdesk.contains("  app "),
        "{helpdesk}"
    );
    let soc = mails[1].1["message"]["body"]["content"].as_str().unwrap();
    assert!(
        !soc.contains(&password),
        "notification carries the password"
    );
    assert!(soc.contains("Sign-ins blocked with AADSTS53011"), "{soc}");
    assert!(soc.contains("203.0.113.77"), "{soc}");
    assert!(!logs.text().contains(&password), "password in logs");
    assert!(
        !serde_json::to_string(&case).unwrap().contains(&password),
        "password in the case"
    );
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "confirmedCompromised"
    );
}

#[tokio::test]
async fn medium_risk_resets_and_skips_the_dismiss_the_reset_made_pointless() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    let (_, case) = run(&s, Mode::Enforce, RiskLevel::Medium).await;
    let actions: Vec<Action> = statuses(&case).into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        actions,
        [
            Action::RevokeSessions,
            Action::ResetPassword,
            Action::DismissRisk,
            Action::Notify
        ]
    );
    // The admin reset remediated the risk, so there is nothing left to dismiss: recorded why.
    match &case.actions[2].state {
        ActionState::Skipped { reason, .. } => assert!(reason.contains("remediated"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "remediated"
    );
}

#[tokio::test]
async fn user_no_longer_at_risk_gets_no_case() {
    let s = start().await;
    seed(&s, "none", "remediated", 3);
    let mut graph_signal = event(RiskLevel::Unknown);
    graph_signal.source = EventSource::GraphUser;
    let (disposition, case) = run_with(&s, policy(Mode::Enforce), graph_signal, 4).await;
    assert!(case.is_none());
    // The view is seeded with the users at risk only (riskState atRisk or
    // confirmedCompromised): a remediated user is simply not in it.
    match disposition {
        Disposition::Done(why) => assert!(why.contains("reports no risk for the user"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(s.writes().is_empty());
}

#[tokio::test]
async fn missing_permission_stops_the_plan_for_an_operator() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    s.with(|d| {
        d.faults
            .forbidden
            .push((Method::POST, format!("/users/{ADELE}/revokeSignInSessions")))
    });
    let (disposition, case) = run(&s, Mode::Enforce, RiskLevel::Medium).await;
    assert!(disposition.is_retry(), "kept for retry and the DLQ");
    let st = statuses(&case);
    match &st[0].1 {
        ActionState::Failed {
            error,
            transient,
            needs_operator,
            ..
        } => {
            assert!(error.contains("403 Authorization_RequestDenied"), "{error}");
            assert!(!transient);
            assert!(needs_operator);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(st[1].1, ActionState::Pending, "not dropped, waits");
    assert_eq!(case.status, CaseStatus::NeedsOperator);
}

#[tokio::test]
async fn user_gone_is_closed_not_retried() {
    let s = start().await;
    let (disposition, case) = run_with(&s, policy(Mode::Enforce), event(RiskLevel::High), 4).await;
    assert!(!disposition.is_retry(), "{disposition:?}");
    let case = case.expect("a Sentinel detection opens a case");
    assert_eq!(case.status, CaseStatus::Completed);
    assert!(case.plan_note.unwrap().contains("no longer exists"));
    assert!(s.writes().is_empty());
}

#[tokio::test]
async fn refused_client_secret_is_a_clear_error_for_an_operator() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let graph = graph_client(&s, ClientCredential::Secret(SecretString::new("wrong")));
    let err = graph.user_facts(TENANT, ADELE).await.unwrap_err();
    assert!(
        err.to_string().contains("invalid_client: AADSTS7000215"),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong"), "secret in error: {err}");
    assert!(err.needs_operator());
    assert!(!err.is_transient());
}

#[tokio::test]
async fn token_endpoint_down_is_retryable() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.faults.token_down = true);
    let (disposition, _) = run_with(&s, policy(Mode::Enforce), event(RiskLevel::High), 4).await;
    match disposition {
        Disposition::Retry(why) => assert!(why.contains("token endpoint"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn certificate_credential_signs_a_ps256_assertion_with_the_sha256_thumbprint() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let dir = env!("CARGO_MANIFEST_DIR");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/tests/fixtures/{f}")).unwrap();
    // The thumbprint openssl computed (`openssl x509 -fingerprint -sha256`).
    let hex = read("graph-app-cert.sha256");
    let thumb: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).unwrap())
        .collect();
    s.with(|d| {
        d.certificate = Some(CertificateCredential {
            public_key_pem: read("graph-app-cert-public.pem").into_bytes(),
            thumbprint_sha256_b64url: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(&thumb),
        })
    });
    // The credential as the Graph secrets document gives it: the PEM certificate.
    let document = serde_json::json!({
        "client_id": CLIENT_ID,
        "certificate_private_key": read("jwt-test-key-2.pem"),
        "certificate": read("graph-app-cert.pem"),
    });
    use risk_responder::support::secret::SecretDocument;
    let secrets =
        risk_responder::graph::credential::GraphSecrets::from_json(&document.to_string()).unwrap();
    let credential = secrets.credential().unwrap();
    let graph = graph_client(&s, credential);
    let user = graph.user_facts(TENANT, ADELE).await.unwrap();
    assert_eq!(user.user_id, ADELE);

    // A certificate the simulator does not know is refused.
    let other = ClientCredential::Certificate {
        private_key_pem: SecretString::new(read("jwt-test-key-1.pem")),
        thumbprint_sha256: thumb.clone(),
    };
    let err = graph_client(&s, other)
        .user_facts(TENANT, ADELE)
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::TokenRefused { .. }), "{err:?}");

    // The assertion follows the current documentation: PS256, typ JWT, x5t#S256.
    let assertion = risk_responder::graph::token::client_assertion(
        "https://login.microsoftonline.com/t/oauth2/v2.0/token",
        CLIENT_ID,
        &SecretString::new(read("jwt-test-key-2.pem")),
        &thumb,
    )
    .unwrap();
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::PS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert!(header.x5t.is_none());

    // A private key without its certificate is refused when the secrets load.
    let missing = serde_json::json!({ "client_id": CLIENT_ID, "certificate_private_key": read("jwt-test-key-2.pem") });
    let err = risk_responder::graph::credential::GraphSecrets::from_json(&missing.to_string())
        .unwrap_err();
    assert!(err.to_string().contains("x5t#S256"), "{err}");
}

#[tokio::test]
async fn tokens_are_cached_per_tenant() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let graph = graph_client(&s, secret());
    for _ in 0..3 {
        graph.user_facts(TENANT, ADELE).await.unwrap();
    }
    graph.user_facts("other-tenant", ADELE).await.unwrap();
    assert_eq!(s.with(|d| d.token_requests), 2);
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.faults.throttle_next = 2;
        d.faults.retry_after = 1;
    });
    let graph = graph_client(&s, secret());
    graph.user_facts(TENANT, ADELE).await.unwrap();
    let times: Vec<_> = s.with(|d| d.calls.iter().map(|(_, t)| *t).collect());
    assert_eq!(times.len(), 3);
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(1),
            "retried before Retry-After"
        );
    }
}

#[tokio::test]
async fn a_429_storm_gives_up_as_throttled_and_retryable() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.faults.throttle_next = 100;
        d.faults.retry_after = 0;
    });
    let err = graph_client(&s, secret())
        .user_facts(TENANT, ADELE)
        .await
        .unwrap_err();
    assert_eq!(err, GraphError::Throttled { attempts: 4 });
    assert!(err.is_transient());
    assert_eq!(s.with(|d| d.calls.len()), 4);
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_is_not_slept_on() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.faults.throttle_next = 1;
        d.faults.retry_after = 3600;
    });
    let err = graph_client(&s, secret())
        .user_facts(TENANT, ADELE)
        .await
        .unwrap_err();
    assert_eq!(err, GraphError::Throttled { attempts: 1 });
}

#[tokio::test]
async fn service_unavailable_is_retried_with_backoff() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.faults.unavailable_next = 2);
    let user = graph_client(&s, secret())
        .user_facts(TENANT, ADELE)
        .await
        .unwrap();
    assert_eq!(user.user_id, ADELE);
    assert_eq!(s.with(|d| d.calls.len()), 3);
}

#[tokio::test]
async fn next_links_off_the_graph_host_are_not_followed() {
    let s = start().await;
    let graph = graph_client(&s, secret());
    let err = graph
        .send(TENANT, Method::GET, "http://evil.example/v1.0/users", None)
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::Decode(_)));
    assert!(s.with(|d| d.calls.is_empty()));
}

#[tokio::test]
async fn a_legacy_security_alert_is_closed_with_a_clear_message() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let mut e = event(RiskLevel::Unknown);
    e.subject = Subject::SecurityAlert { id: "al-1".into() };
    let (disposition, case) = run_with(&s, policy(Mode::Enforce), e, 4).await;
    assert!(case.is_none());
    match disposition {
        Disposition::Done(why) => assert!(
            why.contains("legacy /security/alerts API is retired"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(s.with(|d| d.calls.iter().all(|(c, _)| !c.contains("/security/alerts"))));
}

#[tokio::test]
async fn upn_only_subject_is_resolved_to_the_object_id() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let mut e = event(RiskLevel::High);
    e.subject = Subject::User {
        id: None,
        upn: Some(ADELE_UPN.into()),
    };
    let (_, case) = run_with(&s, policy(Mode::ReportOnly), e, 4).await;
    assert_eq!(case.unwrap().user_id, ADELE);
}

/// The PATCHes of `/users/{id}` Graph accepted: the user and the properties each set.
fn user_patches(s: &StandIn) -> Vec<(String, Vec<String>)> {
    s.with(|d| d.user_patches.clone())
}

fn action_state(case: &Case, action: Action) -> ActionState {
    case.actions
        .iter()
        .find(|a| a.action == action)
        .unwrap_or_else(|| panic!("{action:?} not planned"))
        .state
        .clone()
}

/// block_sign_in and reset_password due in the same round: one PATCH carries accountEnabled
/// and the passwordProfile; both record its outcome.
#[tokio::test]
async fn a_block_and_a_reset_due_together_are_one_patch() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let (_, case) = run(&s, Mode::Enforce, RiskLevel::High).await;
    assert_eq!(
        user_patches(&s),
        [(
            ADELE.to_owned(),
            vec!["accountEnabled".to_owned(), "passwordProfile".to_owned()]
        )],
        "one PATCH with both properties"
    );
    let user = s.with(|d| d.users.iter().find(|u| u["id"] == ADELE).unwrap().clone());
    assert_eq!(user["accountEnabled"], false);
    assert_eq!(
        user["passwordProfile"]["forceChangePasswordNextSignIn"],
        true
    );
    match action_state(&case, Action::BlockSignIn) {
        ActionState::Done { detail, .. } => assert_eq!(
            detail.as_deref(),
            Some("in one request with the password reset")
        ),
        other => panic!("{other:?}"),
    }
    assert!(done(&action_state(&case, Action::ResetPassword)));
    assert_eq!((resets(&s), mail_subjects(&s).len()), (1, 2));
}

/// The combined PATCH fails: both actions fail with the same error and nothing is mailed;
/// the retry sends one PATCH with both again.
#[tokio::test]
async fn a_failed_combined_patch_fails_both_and_the_retry_sends_both() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let ledger = memory_ledger();
    let worker = worker_with(&s, ledger.clone(), policy(Mode::Enforce), 2);
    let item = WorkItem::Risk(event(RiskLevel::High));
    s.with(|d| {
        d.faults
            .unavailable_paths
            .push((Method::PATCH, format!("/users/{ADELE}")))
    });
    assert!(worker.handle(&item).await.is_retry());
    let case = ledger.find_case("evt-1").await.unwrap().unwrap().0;
    let (block, reset) = (
        action_state(&case, Action::BlockSignIn),
        action_state(&case, Action::ResetPassword),
    );
    match (&block, &reset) {
        (ActionState::Failed { error: a, .. }, ActionState::Failed { error: b, .. }) => {
            assert_eq!(a, b, "one request, one outcome")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((resets(&s), mail_subjects(&s).len()), (0, 0));
    s.with(|d| d.faults.unavailable_paths.clear());
    assert!(!worker.handle(&item).await.is_retry());
    let case = ledger.find_case("evt-1").await.unwrap().unwrap().0;
    assert!(done(&action_state(&case, Action::BlockSignIn)));
    assert!(done(&action_state(&case, Action::ResetPassword)));
    assert_eq!(
        user_patches(&s),
        [(
            ADELE.to_owned(),
            vec!["accountEnabled".to_owned(), "passwordProfile".to_owned()]
        )]
    );
    assert_eq!(resets(&s), 1);
}

/// An account already blocked: no second block, the PATCH carries only the password.
#[tokio::test]
async fn an_account_already_blocked_gets_only_the_password() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    s.with(|d| d.users[0]["accountEnabled"] = false.into());
    let (_, case) = run(&s, Mode::Enforce, RiskLevel::High).await;
    assert_eq!(
        user_patches(&s),
        [(ADELE.to_owned(), vec!["passwordProfile".to_owned()])]
    );
    match action_state(&case, Action::BlockSignIn) {
        ActionState::Skipped { reason, .. } => {
            assert_eq!(reason, "sign-in is already blocked")
        }
        other => panic!("{other:?}"),
    }
    assert!(done(&action_state(&case, Action::ResetPassword)));
}

/// The reset rails decide whether the password is in the request at all: a protected account
/// gets neither property; a synced user without password writeback gets only the block.
#[tokio::test]
async fn the_reset_rails_decide_what_the_patch_carries() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let mut protected = policy(Mode::Enforce);
    protected.safety.protected_user_ids = vec![ADELE.to_owned()];
    let (_, case) = run_with(&s, protected, event(RiskLevel::High), 4).await;
    let case = case.unwrap();
    assert!(user_patches(&s).is_empty(), "{:?}", user_patches(&s));
    assert!(matches!(
        action_state(&case, Action::BlockSignIn),
        ActionState::Held { .. }
    ));
    assert!(matches!(
        action_state(&case, Action::ResetPassword),
        ActionState::Held { .. }
    ));
    assert_eq!(resets(&s), 0);

    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    s.with(|d| d.users[0]["onPremisesSyncEnabled"] = true.into());
    let (_, case) = run(&s, Mode::Enforce, RiskLevel::High).await;
    assert_eq!(
        user_patches(&s),
        [(ADELE.to_owned(), vec!["accountEnabled".to_owned()])],
        "the block alone: no cloud password for a synced user without writeback"
    );
    assert!(done(&action_state(&case, Action::BlockSignIn)));
    assert!(matches!(
        action_state(&case, Action::ResetPassword),
        ActionState::Skipped { .. }
    ));
    assert_eq!(resets(&s), 0);
}

/// Every request for a user's manager: `GET /users/{id}/manager`, alone or in a `$batch`.
fn manager_reads(s: &StandIn) -> usize {
    let direct = s.with(|d| {
        d.calls
            .iter()
            .filter(|(c, _)| c.split('?').next().unwrap_or("").ends_with("/manager"))
            .count()
    });
    let batched = batches(s)
        .iter()
        .flatten()
        .filter(|m| m.split('?').next().unwrap_or("").ends_with("/manager"))
        .count();
    direct.max(batched)
}

/// The password goes to the manager: the manager is read with the user
/// (`$expand=manager($select=…)` on the bulk `$filter=id in (…)` read), not by a request of its
/// own.
#[tokio::test]
async fn the_manager_is_read_with_the_user() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let (_, case) = run(&s, Mode::Enforce, RiskLevel::High).await;
    assert!(done(&action_state(&case, Action::ResetPassword)));
    assert_eq!(manager_reads(&s), 0, "no GET /users/{{id}}/manager");
    let user_read = s.with(|d| {
        d.calls
            .iter()
            .find(|(c, _)| c.starts_with("GET /v1.0/users?"))
            .unwrap()
            .0
            .clone()
    });
    let query: std::collections::HashMap<String, String> =
        form_urlencoded::parse(user_read.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(query["$filter"], format!("id in ('{ADELE}')"));
    assert!(query["$select"].starts_with("id,userPrincipalName"));
    assert_eq!(
        query["$expand"],
        "manager($select=id,mail,userPrincipalName)"
    );
    assert!(!query.contains_key("$count"), "not an advanced query");
    let recipients: Vec<String> = s.with(|d| {
        d.mails[0].1["message"]["toRecipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["emailAddress"]["address"].as_str().unwrap().to_owned())
            .collect()
    });
    assert_eq!(
        recipients,
        [
            "helpdesk@contoso.onmicrosoft.com",
            "miriam.graham@contoso.onmicrosoft.com"
        ]
    );
    // A user without a manager: the helpdesk alone, still no manager read.
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    s.with(|d| d.managers.clear());
    let (_, case) = run(&s, Mode::Enforce, RiskLevel::High).await;
    assert!(done(&action_state(&case, Action::ResetPassword)));
    assert_eq!(manager_reads(&s), 0);
    let recipients = s.with(|d| d.mails[0].1["message"]["toRecipients"].clone());
    assert_eq!(
        recipients,
        json!([{"emailAddress": {"address": "helpdesk@contoso.onmicrosoft.com"}}])
    );
}

#[tokio::test]
async fn unblock_sign_in_reenables_the_account() {
    let s = start().await;
    seed(&s, "low", "atRisk", 0);
    s.with(|d| d.users[0]["accountEnabled"] = false.into());
    let policy = Policy::from_toml(
        r#"mode = "enforce"
[[rules]]
name = "low risk: let the user back in"
min_risk_level = "low"
actions = ["dismiss_risk", "unblock_sign_in"]"#,
    )
    .unwrap();
    let (_, case) = run_with(&s, policy, event(RiskLevel::Low), 4).await;
    let case = case.unwrap();
    assert!(statuses(&case).iter().all(|(_, st)| done(st)), "{case:?}");
    assert_eq!(s.with(|d| d.users[0]["accountEnabled"].clone()), true);
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "dismissed"
    );
}

#[tokio::test]
async fn a_rotated_client_secret_is_used_without_a_restart() {
    use risk_responder::graph::credential::GraphSecrets;
    use risk_responder::vault::{SecretStore, SecretsManagerStore};
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let sm = aws_sdk_secretsmanager::Client::new(&common::moto::sdk_config().await);
    let id = format!("risk-responder/app-{}", uuid::Uuid::new_v4());
    let document =
        |secret: &str| format!(r#"{{"client_id":"{CLIENT_ID}","client_secret":"{secret}"}}"#);
    sm.create_secret()
        .name(&id)
        .secret_string(document("old-revoked-secret"))
        .send()
        .await
        .unwrap();
    let store: Arc<dyn SecretStore<GraphSecrets>> = Arc::new(SecretsManagerStore::new(
        sm.clone(),
        &id,
        Duration::from_millis(300),
    ));
    let config = risk_responder::config::Config {
        graph_base_url: s.graph_url(),
        login_authority: s.authority(),
        ..Default::default()
    };
    let secrets = store.load().await.unwrap();
    let graph = risk_responder::app::graph_client(&config, &secrets, store, reqwest::Client::new())
        .unwrap();
    let err = graph.user_facts(TENANT, ADELE).await.unwrap_err();
    assert!(err.needs_operator(), "{err:?}");

    sm.put_secret_value()
        .secret_id(&id)
        .secret_string(document(CLIENT_SECRET))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        graph.user_facts(TENANT, ADELE).await.unwrap().user_id,
        ADELE
    );
}

/// The temporary password is set before it is delivered: a 503 on the PATCH delivers nothing;
/// a 503 on the mail after the PATCH leaves the action failed, saying so, and its retry mails
/// the password that is set (kept sealed meanwhile), without setting another. Exactly one
/// password mail, holding the current password.
#[tokio::test]
async fn a_password_is_mailed_only_after_it_is_set_and_only_the_current_one() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    let ledger = memory_ledger();
    let worker = worker_with(&s, ledger.clone(), policy(Mode::Enforce), 2);
    let item = WorkItem::Risk(event(RiskLevel::Medium));
    let reset_state = |case: &Case| {
        case.actions
            .iter()
            .find(|a| a.action == Action::ResetPassword)
            .unwrap()
            .state
            .clone()
    };
    // 1. Setting it fails: nothing is delivered.
    s.with(|d| {
        d.faults
            .unavailable_paths
            .push((Method::PATCH, format!("/users/{ADELE}")))
    });
    assert!(worker.handle(&item).await.is_retry());
    assert_eq!((resets(&s), password_mail_bodies(&s).len()), (0, 0));
    // 2. Set, but its mail fails: the action says so (no password in it).
    s.with(|d| {
        d.faults.unavailable_paths.clear();
        d.faults
            .unavailable_mail_subjects
            .push("Temporary password".into());
    });
    assert!(worker.handle(&item).await.is_retry());
    assert_eq!((resets(&s), password_mail_bodies(&s).len()), (1, 0));
    let first = s.with(|d| d.users[0]["passwordProfile"]["password"].clone());
    let case = ledger.find_case("evt-1").await.unwrap().unwrap().0;
    match reset_state(&case) {
        ActionState::Failed {
            error, transient, ..
        } => {
            assert!(
                error.starts_with("temporary password set at ")
                    && error.contains("but its mail failed")
                    && error.contains("the retry delivers it from its sealed copy"),
                "{error}"
            );
            assert!(transient);
        }
        other => panic!("{other:?}"),
    }
    let dismiss = case
        .actions
        .iter()
        .find(|a| a.action == Action::DismissRisk)
        .unwrap();
    assert_eq!(
        dismiss.state.word(),
        "pending",
        "nothing after the reset ran"
    );
    // 3. The mail works: the password set in step 2 is mailed, none set again.
    s.with(|d| d.faults.unavailable_mail_subjects.clear());
    let done = worker.handle(&item).await;
    assert!(!done.is_retry(), "{done:?}");
    assert_eq!(resets(&s), 1, "not set again");
    let (current, force) = s.with(|d| {
        let profile = &d.users[0]["passwordProfile"];
        (
            profile["password"].as_str().unwrap().to_owned(),
            profile["forceChangePasswordNextSignIn"].clone(),
        )
    });
    assert_eq!(
        first.as_str(),
        Some(current.as_str()),
        "the password set in step 2"
    );
    assert_eq!(force, true);
    let mails = password_mail_bodies(&s);
    assert_eq!(mails.len(), 1, "exactly one password mail");
    assert!(
        mails[0].contains(&current),
        "the mail holds the password set last"
    );
    let case = ledger.find_case("evt-1").await.unwrap().unwrap().0;
    assert_eq!(case.status, CaseStatus::Completed);
    assert!(matches!(reset_state(&case), ActionState::Done { .. }));
    let stored = serde_json::to_string(&case).unwrap();
    assert!(!stored.contains(&current), "no password in the case");
}

// ---- Graph's rules for JSON batches, throttling and paging (the stand-in is no more lenient
// than Graph, and the client keeps to them) ----

#[tokio::test]
async fn graph_refuses_a_whole_batch_with_a_write_lacking_its_body_or_content_type() {
    let s = start().await;
    seed(&s, "high", "atRisk", 0);
    let token = raw_token(&s).await;
    let revoke = format!("/users/{ADELE}/revokeSignInSessions");
    let user = format!("/users/{ADELE}?$select=id");
    let json_type = json!({ "Content-Type": "application/json" });
    let refused = [
        // A bodyless POST, as the client sent revokeSignInSessions before.
        (
            json!([{"id": "1", "method": "POST", "url": revoke}]),
            "Write request id : 1 does not contain Content-Type header or body.",
        ),
        (
            json!([{"id": "1", "method": "POST", "url": revoke, "body": {}}]),
            "Write request id : 1 does not contain Content-Type header or body.",
        ),
        (
            json!([{"id": "7", "method": "POST", "url": revoke, "headers": json_type}]),
            "Write request id : 7 does not contain Content-Type header or body.",
        ),
        (
            json!([{"id": "a", "method": "GET", "url": user}, {"id": "A", "method": "GET", "url": user}]),
            "is not unique",
        ),
        (json!([{"method": "GET", "url": user}]), "needs an id"),
    ];
    for (requests, says) in refused {
        let answer = raw_batch(&s, &token, requests.clone()).await;
        assert_eq!(answer.status(), 400, "{requests}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "BadRequest");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(revokes(&s), 0, "nothing of a refused batch runs");
    let answer = raw_batch(
        &s,
        &token,
        json!([{"id": "1", "method": "POST", "url": revoke, "body": {}, "headers": json_type}]),
    )
    .await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["responses"][0]["status"], 200);
    assert_eq!(revokes(&s), 1);
}

/// `$expand=manager` on users as Graph documents it, and nothing more: with `$filter` and
/// `$select` (and `$select` inside it) on the list and on one user; refused (Graph's error
/// envelope) with two relationships, `$levels` on the list, an advanced query, or a
/// relationship that cannot be expanded.
#[tokio::test]
async fn the_stand_in_expands_a_users_manager_as_graph_documents_it() {
    let s = start().await;
    seed(&s, "high", "atRisk", 0);
    let token = raw_token(&s).await;
    let get = |query: String, consistency: bool| {
        let mut request = reqwest::Client::new()
            .get(format!("{}/v1.0/users{query}", s.base))
            .bearer_auth(&token);
        if consistency {
            request = request.header("ConsistencyLevel", "eventual");
        }
        request.send()
    };
    let filter = format!("$filter=id in ('{ADELE}','{MANAGER}')");
    let answer = get(
        format!("?{filter}&$select=id,mail&$expand=manager($select=id,mail,userPrincipalName)"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    let users = body["value"].as_array().unwrap();
    let adele = users.iter().find(|u| u["id"] == ADELE).unwrap();
    assert_eq!(
        adele["manager"],
        json!({"@odata.type": "#microsoft.graph.user", "id": MANAGER,
               "mail": "miriam.graham@contoso.onmicrosoft.com",
               "userPrincipalName": "miriam.graham@contoso.onmicrosoft.com"})
    );
    assert!(adele.get("userPrincipalName").is_none(), "$select kept");
    let miriam = users.iter().find(|u| u["id"] == MANAGER).unwrap();
    assert!(miriam.get("manager").is_none(), "no manager, no property");
    // One user.
    let answer = get(format!("/{ADELE}?$select=id&$expand=manager"), false)
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["manager"]["id"], MANAGER);
    // What Graph does not accept.
    for (query, consistency) in [
        (format!("?{filter}&$expand=manager,memberOf"), false),
        (format!("?{filter}&$expand=manager($levels=max)"), false),
        (format!("?{filter}&$expand=manager&$count=true"), true),
        (format!("?{filter}&$expand=manager"), true),
        (format!("?{filter}&$expand=photo"), false),
        (
            format!("?{filter}&$expand=manager($filter=id eq '{MANAGER}')"),
            false,
        ),
    ] {
        let answer = get(query.clone(), consistency).await.unwrap();
        assert_eq!(answer.status(), 400, "{query}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{query}: {body}"
        );
    }
    // Inside a batch, the member's own ConsistencyLevel counts too.
    let answer = raw_batch(
        &s,
        &token,
        json!([{"id": "1", "method": "GET",
                "url": format!("/users?{filter}&$expand=manager"),
                "headers": {"ConsistencyLevel": "eventual"}}]),
    )
    .await;
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["responses"][0]["status"], 400, "{body}");
}

#[tokio::test]
async fn the_worker_revokes_sessions_through_a_batch_graph_accepts() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let (_, case) = run(&s, Mode::Enforce, RiskLevel::High).await;
    let revoke = case
        .actions
        .iter()
        .find(|a| a.action == Action::RevokeSessions)
        .expect("the plan revokes sessions");
    assert!(done(&revoke.state), "{:?}", revoke.state);
    assert_eq!(s.with(|d| d.revoked.clone()), vec![ADELE.to_owned()]);
    // It went as a batch member with an empty JSON body and its Content-Type.
    let member = batches(&s)
        .into_iter()
        .flatten()
        .find(|m| m.ends_with("/revokeSignInSessions"))
        .expect("revocation through $batch");
    assert_eq!(member, format!("POST /users/{ADELE}/revokeSignInSessions"));
}

#[tokio::test]
async fn a_batch_never_carries_more_members_of_a_budget_than_its_window_admits() {
    let s = start().await;
    seed(&s, "high", "atRisk", 0);
    // Reports: 5 per second here (5 per 10 s at Graph), to keep the test short.
    s.with(|d| d.limits.reports = (5, Duration::from_secs(1)));
    let graph = s.client_with(
        secret(),
        3,
        Arc::new(risk_responder::graph::limiter::LocalLimiter::new(
            risk_responder::graph::limiter::Limits {
                reports: (5, Duration::from_millis(1100)),
                ..risk_responder::graph::limiter::Limits::published(1.0)
            },
        )),
    );
    let items: Vec<_> = (0..20)
        .map(|_| {
            risk_responder::graph::batch::BatchItem::get(format!(
                "/reports/authenticationMethods/userRegistrationDetails/{ADELE}"
            ))
        })
        .chain([risk_responder::graph::batch::BatchItem::get(format!(
            "/users/{ADELE}?$select=id"
        ))])
        .collect();
    let results = graph.batch(TENANT, &items).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let throttled = s.with(|d| d.throttled.clone());
    assert!(
        throttled.is_empty(),
        "no member answered 429: {throttled:?}"
    );
    let sizes: Vec<usize> = batches(&s)
        .iter()
        .map(|b| b.iter().filter(|m| m.contains("/reports/")).count())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 20);
    assert!(sizes.iter().all(|n| *n <= 5), "{sizes:?}");
    // The limiter refuses a group larger than the window instead of admitting it.
    let limiter = risk_responder::graph::limiter::LocalLimiter::new(
        risk_responder::graph::limiter::Limits::published(1.0),
    );
    use risk_responder::graph::limiter::{Budget, RateLimiter};
    let err = limiter
        .acquire(TENANT, Budget::Reports, "", 6)
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn a_429_without_retry_after_waits_out_the_budget_window() {
    let s = start().await;
    seed(&s, "high", "atRisk", 3);
    // Graph's reports answer 429 without Retry-After; here their window is 3 s.
    s.with(|d| d.limits.reports = (5, Duration::from_secs(3)));
    // A client that thinks it may send more than the window admits (as another process of the
    // same app sharing the budget would make it see), knowing the window's length.
    let graph = s.client_with(
        secret(),
        3,
        Arc::new(risk_responder::graph::limiter::LocalLimiter::new(
            risk_responder::graph::limiter::Limits {
                reports: (1000, Duration::from_millis(3300)),
                ..risk_responder::graph::limiter::Limits::published(1.0)
            },
        )),
    );
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let reads = (0..7).map(|_| graph.blocked_sign_ins(TENANT, ADELE, since));
    let started = std::time::Instant::now();
    let results = futures_util::future::join_all(reads).await;
    for r in &results {
        assert_eq!(r.as_ref().map(|s| s.count).ok(), Some(3), "{r:?}");
    }
    assert!(s.with(|d| d.throttled.get(&Budget::Reports).copied()) >= Some(2));
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "waited the window"
    );
}

#[tokio::test]
async fn mailbox_concurrency_counts_every_batch_in_flight() {
    let s = start().await;
    seed(&s, "high", "atRisk", 0);
    s.with(|d| d.latency.mail = Duration::from_millis(400).into());
    let token = raw_token(&s).await;
    let mails = |from: usize| -> serde_json::Value {
        (from..from + 3)
            .map(|i| json!({"id": i.to_string(), "method": "POST",
                "url": "/users/risk-responder@contoso.onmicrosoft.com/sendMail",
                "headers": {"Content-Type": "application/json"},
                "body": {"message": {"subject": "s", "body": {"contentType": "Text", "content": "x"},
                    "toRecipients": [{"emailAddress": {"address": "soc@contoso.onmicrosoft.com"}}]}}}))
            .collect()
    };
    let first = raw_batch(&s, &token, mails(0));
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        raw_batch(&s, &token, mails(10)).await
    };
    let (a, b) = tokio::join!(first, second);
    let mut statuses = Vec::new();
    let mut retry_after = 0;
    for answer in [a, b] {
        let body: serde_json::Value = answer.json().await.unwrap();
        for member in body["responses"].as_array().unwrap() {
            statuses.push(member["status"].as_u64().unwrap());
            retry_after += usize::from(member["headers"]["retry-after"].is_string());
        }
    }
    // Six in flight at once to one mailbox: Outlook admits four.
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(retry_after, 2, "Outlook says when to retry");
}

/// Graph hands Outlook the members of one `$batch` four at a time, whatever their mailboxes,
/// and queues the rest (Microsoft Graph throttling limits, "Outlook service limits for JSON
/// batching"): a batch of eight mails to one mailbox is answered whole, no 429, in two turns.
/// Its other members run at once: a batch takes as long as its slowest member, not their sum.
#[tokio::test]
async fn a_batch_runs_its_members_at_once_and_its_mails_four_at_a_time() {
    let s = start().await;
    seed(&s, "high", "atRisk", 0);
    s.with(|d| {
        d.latency.mail = Duration::from_millis(300).into();
        d.latency.read = Duration::from_millis(300).into();
    });
    let token = raw_token(&s).await;
    let mails: Vec<serde_json::Value> = (0..8)
        .map(|i| {
            json!({"id": i.to_string(), "method": "POST",
            "url": "/users/risk-responder@contoso.onmicrosoft.com/sendMail",
            "headers": {"Content-Type": "application/json"},
            "body": {"message": {"subject": "s", "body": {"contentType": "Text", "content": "x"},
                "toRecipients": [{"emailAddress": {"address": "soc@contoso.onmicrosoft.com"}}]}}})
        })
        .collect();
    let started = std::time::Instant::now();
    let answer: serde_json::Value = raw_batch(&s, &token, json!(mails))
        .await
        .json()
        .await
        .unwrap();
    let took = started.elapsed();
    let statuses: Vec<u64> = answer["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![202; 8], "queued, not refused");
    assert!(s.with(|d| d.throttled.is_empty()));
    assert!(
        took >= Duration::from_millis(600),
        "two turns of four: {took:?}"
    );
    // Four at a time, seen as Graph saw them (not by the clock).
    let mail_peak = s.with(|d| d.mail_peak.values().copied().max().unwrap_or(0));
    assert_eq!(mail_peak, 4, "four mails in flight at once, never more");

    let reads: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{ADELE}?$select=id")}))
        .collect();
    s.with(|d| d.peak_in_flight = 0);
    let answer: serde_json::Value = raw_batch(&s, &token, json!(reads))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        answer["responses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == 200),
        "{answer}"
    );
    let peak = s.with(|d| d.peak_in_flight);
    assert!(peak >= 20, "twenty reads in flight at once: {peak}");
}

#[tokio::test]
async fn a_zero_page_size_still_pages_forward() {
    let s = start().await;
    seed(&s, "high", "atRisk", 3);
    s.with(|d| d.page_size = 0);
    let graph = s.secret_client(2);
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let summary = tokio::time::timeout(
        Duration::from_secs(20),
        graph.blocked_sign_ins(TENANT, ADELE, since),
    )
    .await
    .expect("paging ends")
    .unwrap();
    assert_eq!(summary.count, 3);
}

#[tokio::test]
async fn a_listing_past_the_page_limit_is_an_error_not_a_short_answer() {
    let s = start().await;
    s.with(|d| {
        d.page_size = 2;
        for i in 0..5 {
            d.subscriptions
                .push(json!({"id": format!("sub-{i}"), "resource": "users"}));
        }
    });
    let graph = paged_client(
        &s,
        2,
        risk_responder::graph::limiter::Limits::published(1.0),
    );
    let err = graph.get_all(TENANT, "/subscriptions").await.unwrap_err();
    assert_eq!(err, GraphError::Truncated { pages: 2 });
    let paging = graph
        .for_each_item(TENANT, "/subscriptions", |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(
        paging,
        risk_responder::graph::Paging::Truncated { pages: 2 }
    );
    let whole = paged_client(
        &s,
        3,
        risk_responder::graph::limiter::Limits::published(1.0),
    );
    assert_eq!(
        whole.get_all(TENANT, "/subscriptions").await.unwrap().len(),
        5
    );
}

#[tokio::test]
async fn upn_only_signals_are_resolved_fifteen_to_a_request() {
    use risk_responder::respond::investigate::{Resolved, resolve_bulk};
    let s = start().await;
    seed(&s, "high", "atRisk", 0);
    let id = |i: usize| format!("00000000-0000-4000-8000-{i:012}");
    s.with(|d| {
        d.page_size = 100;
        for i in 0..20 {
            d.users.push(json!({"id": id(i), "userPrincipalName": format!("user{i}@contoso.onmicrosoft.com")}));
        }
        d.users.push(json!({"id": id(99), "userPrincipalName": "o'brien@contoso.onmicrosoft.com"}));
    });
    let mut subjects: Vec<Subject> = (0..20)
        .map(|i| Subject::User {
            id: None,
            upn: Some(format!("USER{i}@contoso.onmicrosoft.com")),
        })
        .collect();
    subjects.push(Subject::User {
        id: None,
        upn: Some("o'brien@contoso.onmicrosoft.com".into()),
    });
    subjects.push(Subject::User {
        id: None,
        upn: Some("nobody@contoso.onmicrosoft.com".into()),
    });
    subjects.push(Subject::User {
        id: Some(ADELE.into()),
        upn: None,
    });
    subjects.push(Subject::SecurityAlert {
        id: "legacy".into(),
    });
    let graph = s.secret_client(2);
    let resolved = resolve_bulk(&graph, TENANT, &subjects).await;
    for (i, r) in resolved.iter().take(20).enumerate() {
        assert_eq!(
            r.as_ref().unwrap(),
            &Resolved::User {
                id: id(i),
                upn: Some(format!("user{i}@contoso.onmicrosoft.com"))
            }
        );
    }
    assert!(matches!(&resolved[20], Ok(Resolved::User { id: found, .. }) if *found == id(99)));
    assert!(matches!(&resolved[21], Ok(Resolved::NoUser(why)) if why.contains("no user nobody@")));
    assert!(matches!(&resolved[22], Ok(Resolved::User { id: found, .. }) if found == ADELE));
    assert!(matches!(&resolved[23], Ok(Resolved::NoUser(why)) if why.contains("retired")));
    let lookups = s.with(|d| {
        d.calls
            .iter()
            .filter(|(c, _)| c.starts_with("GET /v1.0/users"))
            .count()
    });
    assert_eq!(lookups, 2, "22 UPNs at 15 a request");
    // Graph allows 15 values in an `in` list.
    let token = raw_token(&s).await;
    let sixteen: Vec<String> = (0..16).map(|i| format!("'{}'", id(i))).collect();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("$filter", &format!("id in ({})", sixteen.join(",")))
        .finish();
    let too_many = reqwest::Client::new()
        .get(format!("{}/v1.0/users?{query}", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 400);
}

#[tokio::test]
async fn the_worker_resolves_a_batch_of_upn_only_signals_fifteen_to_a_request() {
    let s = start().await;
    let id = |i: usize| format!("00000000-0000-4000-8000-{i:012}");
    s.with(|d| {
        d.page_size = 100;
        for i in 0..20 {
            d.users.push(json!({"id": id(i), "userPrincipalName": format!("user{i}@contoso.onmicrosoft.com")}));
        }
    });
    let items: Vec<WorkItem> = (0..20)
        .map(|i| {
            WorkItem::Risk(RiskEvent {
                event_id: format!("upn-{i}"),
                subject: Subject::User {
                    id: None,
                    upn: Some(format!("user{i}@contoso.onmicrosoft.com")),
                },
                source_id: format!("alert-{i}"),
                ..event(RiskLevel::Medium)
            })
        })
        .collect();
    let worker = worker_with(&s, memory_ledger(), policy(Mode::ReportOnly), 2);
    worker.handle_batch(&items).await;
    let calls: Vec<String> = s.with(|d| d.calls.iter().map(|(c, _)| c.clone()).collect());
    let by_upn = calls
        .iter()
        .filter(|c| c.starts_with("GET /v1.0/users?") && c.contains("userPrincipalName%20in"))
        .count();
    assert_eq!(by_upn, 2, "20 UPNs at 15 a request: {calls:#?}");
    assert!(
        !calls.iter().any(|c| c.contains("/users/user")),
        "no read per UPN: {calls:#?}"
    );
}

/// `n` sendMail requests from the product's mailbox, for `$batch`.
fn mails(n: usize) -> Vec<risk_responder::graph::batch::BatchItem> {
    (0..n)
        .map(|i| {
            risk_responder::graph::batch::BatchItem::new(
                Method::POST,
                "/users/risk-responder@contoso.onmicrosoft.com/sendMail",
                Some(json!({
                    "message": {"subject": format!("m{i}"), "body": {"contentType": "Text", "content": "x"},
                        "toRecipients": [{"emailAddress": {"address": "soc@contoso.com"}}]},
                    "saveToSentItems": false,
                })),
            )
        })
        .collect()
}

/// Outlook allows 4 concurrent requests per app and mailbox, whichever worker sends them: two
/// workers (MaximumConcurrency 2) each keep to 2, so their mail batches sent at once are never
/// refused. Each worker on its own may use all 4 when it runs alone.
#[tokio::test]
async fn concurrent_workers_share_a_mailboxs_four_concurrent_requests() {
    let s = start().await;
    s.with(|d| d.latency.mail = Duration::from_millis(150).into());
    let limiter = || {
        Arc::new(risk_responder::graph::limiter::LocalLimiter::new(
            risk_responder::graph::limiter::Limits::published(1.0),
        )) as Arc<dyn risk_responder::graph::limiter::RateLimiter>
    };
    let workers: Vec<_> = (0..2)
        .map(|_| s.client_of_workers(secret(), 1, limiter(), 2))
        .collect();
    assert_eq!(workers[0].mail_slots().per_mailbox(), 2);
    let (first, second) = (mails(8), mails(8));
    let (a, b) = tokio::join!(
        workers[0].batch(TENANT, &first),
        workers[1].batch(TENANT, &second)
    );
    // One attempt each: a 429 would be an error here.
    assert!(a.iter().chain(&b).all(Result::is_ok), "{a:?} {b:?}");
    assert_eq!(s.with(|d| d.throttled.values().sum::<usize>()), 0, "no 429");

    // Without the shares, the same two batches at once exceed the mailbox's 4.
    let alone: Vec<_> = (0..2)
        .map(|_| s.client_of_workers(secret(), 1, limiter(), 1))
        .collect();
    let (a, b) = tokio::join!(
        alone[0].batch(TENANT, &first),
        alone[1].batch(TENANT, &second)
    );
    assert!(
        a.iter().chain(&b).any(Result::is_err),
        "8 concurrent mails to one mailbox are refused"
    );
}

/// With the ledger (as deployed: `app::shared_graph_client`), a worker sending alone borrows
/// the idle worker's share and mails four at a time; two sending at once share the four, and
/// Outlook never sees more.
#[tokio::test]
async fn workers_sharing_a_ledger_use_all_four_of_a_mailbox_and_never_more() {
    let s = start().await;
    s.with(|d| d.latency.mail = Duration::from_millis(300).into());
    let ledger = memory_ledger();
    let workers: Vec<_> = (0..2)
        .map(|_| s.shared_client(secret(), 1, &ledger, 1.0, 2))
        .collect();
    assert_eq!(workers[0].mail_slots().per_mailbox(), 2);
    // Alone: eight mails in two turns of four (its own two and the idle worker's two).
    let alone = workers[0].batch(TENANT, &mails(8)).await;
    assert!(alone.iter().all(Result::is_ok), "{alone:?}");
    let mail_peak = || s.with(|d| d.mail_peak.values().copied().max().unwrap_or(0));
    assert_eq!(mail_peak(), 4, "four at a time, not two");
    // Together: sixteen mails, four at a time, none refused (one attempt: a 429 is an error).
    let (first, second) = (mails(8), mails(8));
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(
        workers[0].batch(TENANT, &first),
        workers[1].batch(TENANT, &second)
    );
    let took = started.elapsed();
    assert!(a.iter().chain(&b).all(Result::is_ok), "{a:?} {b:?}");
    assert_eq!(s.with(|d| d.throttled.values().sum::<usize>()), 0, "no 429");
    assert!(
        took >= Duration::from_millis(1200),
        "never more than four in flight: {took:?}"
    );
    assert_eq!(mail_peak(), 4, "Outlook never saw more than four");
}

/// A slot reserved ahead (`GraphClient::reserve`, as the risk view waits for its turn) is
/// counted when it is taken, but Graph counts the request when it arrives: used late, it would
/// land next to the slot another worker takes after it. So it serves a request only within our
/// window's margin over Graph's (1.2 s at a share of 0.5), and a later request takes a new slot:
/// Identity Protection never sees two requests within a second.
#[tokio::test]
async fn a_slot_reserved_ahead_never_crowds_another_workers_next_slot() {
    use risk_responder::graph::limiter::Budget;
    let s = start().await;
    seed(&s, "high", "atRisk", 0);
    let ledger = memory_ledger();
    let a = s.shared_client(secret(), 1, &ledger, 0.5, 2);
    let b = s.shared_client(secret(), 1, &ledger, 0.5, 2);
    a.reserve(TENANT, Budget::IdentityProtection).await.unwrap();
    a.risk_record(TENANT, ADELE).await.unwrap();
    // b waits for the next slot (2.2 s later) and, as when another worker listed meanwhile,
    // does not use it at once.
    b.reserve(TENANT, Budget::IdentityProtection).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Now both read: a takes the slot after b's; b's reserved one is 2.1 s old.
    let (x, y) = tokio::join!(a.risk_record(TENANT, ADELE), b.risk_record(TENANT, ADELE));
    assert!(x.is_ok() && y.is_ok(), "{x:?} {y:?}");
    assert_eq!(
        s.with(|d| d
            .throttled
            .get(&risk_responder::demo::simulator::Budget::IdentityProtection)
            .copied()),
        None,
        "no 429"
    );
}

/// Graph refuses to change the password or sign-in of a user who holds an admin role unless
/// the application holds Privileged Authentication Administrator (a User Administrator may
/// not): the case waits for a person, saying which role is missing; with the role, it goes.
#[tokio::test]
async fn an_administrators_reset_needs_the_privileged_role_and_the_case_names_it() {
    const EXCHANGE_ADMIN: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.directory_roles
            .insert(EXCHANGE_ADMIN.into(), "role-exchange-admin".into());
        d.member_of
            .insert(ADELE.into(), vec!["role-exchange-admin".into()]);
    });
    let ledger = memory_ledger();
    let worker = enforcing_worker(&s, ledger.clone(), 2);
    let first = worker.handle(&adele_item("admin-1")).await;
    assert!(first.is_retry(), "{first:?}");
    let case = ledger.cases(1).await.unwrap().remove(0);
    assert_eq!(case.status, CaseStatus::NeedsOperator, "{case:?}");
    let refused = case
        .actions
        .iter()
        .find_map(|a| match &a.state {
            ActionState::Failed { error, .. } if a.action == Action::ResetPassword => {
                Some(error.clone())
            }
            _ => None,
        })
        .expect("the reset failed");
    assert!(
        refused.contains("403 Authorization_RequestDenied"),
        "{refused}"
    );
    assert!(
        refused.contains("Privileged Authentication Administrator"),
        "{refused}"
    );
    assert_eq!(resets(&s), 0);

    // The role granted and the retry asked for: the reset goes.
    s.with(|d| d.app_is_privileged_auth_admin = true);
    let mut retried = case.clone();
    retried
        .retry(
            "alice",
            "granted Privileged Authentication Administrator",
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    let (_, version) = ledger.case(&case.case_id).await.unwrap().unwrap();
    ledger.save_case(&retried, version).await.unwrap().unwrap();
    let again = worker
        .handle(&WorkItem::Resume {
            tenant_id: TENANT.into(),
            case_id: case.case_id.clone(),
        })
        .await;
    assert!(!again.is_retry(), "{again:?}");
    assert_eq!(resets(&s), 1);
}
