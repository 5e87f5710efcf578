//! Graph client, investigation, policy and remediation against the Graph stand-in.

mod common;
mod graph_standin;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use graph_standin::*;
use reqwest::Method;
use risk_responder::event::{EventSource, RiskEvent, RiskLevel, Subject};
use risk_responder::graph::{ClientCredential, GraphClient, GraphError};
use risk_responder::pipeline::{Pipeline, Report};
use risk_responder::policy::{Action, Mode, Policy};
use risk_responder::remediate::ActionStatus;
use risk_responder::secrets::SecretString;

fn graph_client(s: &StandIn, credential: ClientCredential) -> Arc<GraphClient> {
    s.client(credential, 4)
}

fn secret() -> ClientCredential {
    ClientCredential::Secret(SecretString::new(CLIENT_SECRET))
}

fn policy(mode: Mode) -> Arc<Policy> {
    let mut policy = Policy::default_policy();
    policy.mode = mode;
    Arc::new(policy)
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
    }
}

async fn run(s: &StandIn, mode: Mode, level: RiskLevel) -> Report {
    let pipeline = Pipeline::new(graph_client(s, secret()), policy(mode), None);
    pipeline.process(&event(level)).await
}

fn statuses(report: &Report) -> Vec<(Action, ActionStatus)> {
    report
        .outcome
        .as_ref()
        .unwrap()
        .actions
        .iter()
        .map(|a| (a.action, a.status.clone()))
        .collect()
}

#[tokio::test]
async fn investigation_reads_risk_and_pages_through_53011_sign_ins() {
    let s = start().await;
    seed(&s, "high", "atRisk", 5);
    let report = run(&s, Mode::ReportOnly, RiskLevel::Unknown).await;
    let findings = report.findings.expect("findings");
    assert_eq!(findings.user_id, ADELE);
    assert_eq!(
        findings.risky_user.unwrap().risk_level.as_deref(),
        Some("high")
    );
    let mut ids: Vec<_> = findings
        .blocked_sign_ins
        .iter()
        .map(|s| s.id.clone())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "blocked-0",
            "blocked-1",
            "blocked-2",
            "blocked-3",
            "blocked-4"
        ]
    );
    let sign_in_calls = s.with(|d| {
        d.calls
            .iter()
            .filter(|(c, _)| c.contains("/auditLogs/signIns"))
            .count()
    });
    assert_eq!(sign_in_calls, 3, "5 results at 2 per page");
}

#[tokio::test]
async fn report_only_plans_without_changing_anything() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let report = run(&s, Mode::ReportOnly, RiskLevel::High).await;
    let plan = &report.outcome.as_ref().unwrap().plan;
    assert_eq!(
        plan.rule.as_deref(),
        Some("high risk, sign-ins already blocked: contain")
    );
    assert!(
        statuses(&report)
            .iter()
            .all(|(_, st)| *st == ActionStatus::Planned)
    );
    assert!(s.writes().is_empty(), "report-only wrote: {:?}", s.writes());
    assert!(s.with(|d| d.mails.is_empty()));
}

#[tokio::test]
async fn enforce_carries_out_the_plan_in_order_and_keeps_the_password_out_of_logs() {
    let (logs, _guard) = common::Logs::capture();
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let report = run(&s, Mode::Enforce, RiskLevel::High).await;
    let st = statuses(&report);
    assert!(
        st.iter()
            .all(|(_, status)| matches!(status, ActionStatus::Done { .. })),
        "{st:?}"
    );
    assert_eq!(
        s.writes()
            .iter()
            .map(|c| c.split('?').next().unwrap().to_owned())
            .collect::<Vec<_>>(),
        [
            format!("POST /v1.0/users/{ADELE}/revokeSignInSessions"),
            format!("PATCH /v1.0/users/{ADELE}"),
            // password: delivered first, then set
            "POST /v1.0/users/risk-responder@contoso.onmicrosoft.com/sendMail".to_owned(),
            format!("PATCH /v1.0/users/{ADELE}"),
            "POST /v1.0/identityProtection/riskyUsers/confirmCompromised".to_owned(),
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
    assert!(
        password_mail["message"]["body"]["content"]
            .as_str()
            .unwrap()
            .contains(&password)
    );
    assert!(
        !mails[1].1.to_string().contains(&password),
        "notification carries the password"
    );
    assert!(!logs.text().contains(&password), "password in logs");
    assert!(
        !serde_json::to_string(&report).unwrap().contains(&password),
        "password in report"
    );
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "confirmedCompromised"
    );
}

#[tokio::test]
async fn medium_risk_resets_and_dismisses() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    let report = run(&s, Mode::Enforce, RiskLevel::Medium).await;
    let actions: Vec<Action> = statuses(&report).into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        actions,
        [
            Action::RevokeSessions,
            Action::ResetPassword,
            Action::DismissRisk,
            Action::Notify
        ]
    );
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "dismissed"
    );
}

#[tokio::test]
async fn user_no_longer_at_risk_gets_nothing() {
    let s = start().await;
    seed(&s, "none", "remediated", 3);
    let report = run(&s, Mode::Enforce, RiskLevel::High).await;
    let outcome = report.outcome.unwrap();
    assert!(outcome.actions.is_empty());
    assert!(
        outcome
            .plan
            .reason
            .unwrap()
            .contains("no longer at risk (riskState remediated)")
    );
    assert!(s.writes().is_empty());
}

#[tokio::test]
async fn missing_permission_stops_the_plan_and_is_not_retried() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    s.with(|d| {
        d.faults.forbidden.push((
            Method::POST,
            "/identityProtection/riskyUsers/dismiss".into(),
        ))
    });
    let report = run(&s, Mode::Enforce, RiskLevel::Medium).await;
    let st = statuses(&report);
    assert!(matches!(st[0].1, ActionStatus::Done { .. }));
    assert!(matches!(st[1].1, ActionStatus::Done { .. }));
    match &st[2].1 {
        ActionStatus::Failed {
            error,
            transient,
            needs_operator,
        } => {
            assert!(error.contains("403 Authorization_RequestDenied"), "{error}");
            assert!(!transient);
            assert!(needs_operator);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(st[3].1, ActionStatus::NotAttempted);
    assert!(!report.retryable);
    assert!(report.needs_operator);
}

#[tokio::test]
async fn user_gone_is_reported_not_retried() {
    let s = start().await;
    let report = run(&s, Mode::Enforce, RiskLevel::High).await;
    assert!(report.error.unwrap().contains("no user that Graph knows"));
    assert!(!report.retryable);
    assert!(
        !report.needs_operator,
        "nothing to fix: the event is closed"
    );
    assert!(s.writes().is_empty());
}

#[tokio::test]
async fn refused_client_secret_is_a_clear_non_retryable_error() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let pipeline = Pipeline::new(
        graph_client(&s, ClientCredential::Secret(SecretString::new("wrong"))),
        policy(Mode::Enforce),
        None,
    );
    let report = pipeline.process(&event(RiskLevel::High)).await;
    let error = report.error.unwrap();
    assert!(error.contains("invalid_client: AADSTS7000215"), "{error}");
    assert!(!error.contains("wrong"), "secret in error: {error}");
    assert!(!report.retryable);
    assert!(report.needs_operator);
}

#[tokio::test]
async fn token_endpoint_down_is_retryable() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.faults.token_down = true);
    let report = run(&s, Mode::Enforce, RiskLevel::High).await;
    assert!(report.error.unwrap().contains("token endpoint"));
    assert!(report.retryable);
}

#[tokio::test]
async fn certificate_credential_signs_a_client_assertion() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let dir = env!("CARGO_MANIFEST_DIR");
    let thumbprint =
        std::fs::read_to_string(format!("{dir}/tests/fixtures/graph-app-cert.sha1")).unwrap();
    let thumb_bytes: Vec<u8> = (0..40)
        .step_by(2)
        .map(|i| u8::from_str_radix(&thumbprint.trim()[i..i + 2], 16).unwrap())
        .collect();
    s.with(|d| {
        d.certificate = Some(CertificateCredential {
            public_key_pem: std::fs::read(format!(
                "{dir}/tests/fixtures/graph-app-cert-public.pem"
            ))
            .unwrap(),
            thumbprint_b64url: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(thumb_bytes),
        })
    });
    let credential = ClientCredential::Certificate {
        private_key_pem: SecretString::new(
            std::fs::read_to_string(format!("{dir}/tests/fixtures/jwt-test-key-2.pem")).unwrap(),
        ),
        thumbprint_sha1_hex: thumbprint.trim().to_owned(),
    };
    let graph = graph_client(&s, credential);
    let user = graph.user(TENANT, ADELE).await.unwrap();
    assert_eq!(user.id, ADELE);

    // A certificate the stand-in does not know is refused.
    let other = ClientCredential::Certificate {
        private_key_pem: SecretString::new(
            std::fs::read_to_string(format!("{dir}/tests/fixtures/jwt-test-key-1.pem")).unwrap(),
        ),
        thumbprint_sha1_hex: thumbprint.trim().to_owned(),
    };
    let err = graph_client(&s, other)
        .user(TENANT, ADELE)
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::TokenRefused { .. }), "{err:?}");
}

#[tokio::test]
async fn tokens_are_cached_per_tenant() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let graph = graph_client(&s, secret());
    for _ in 0..3 {
        graph.user(TENANT, ADELE).await.unwrap();
    }
    graph.user("other-tenant", ADELE).await.unwrap();
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
    graph.user(TENANT, ADELE).await.unwrap();
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
    let report = run(&s, Mode::Enforce, RiskLevel::High).await;
    assert!(
        report
            .error
            .unwrap()
            .contains("throttling after 4 attempts")
    );
    assert!(report.retryable);
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
        .user(TENANT, ADELE)
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
        .user(TENANT, ADELE)
        .await
        .unwrap();
    assert_eq!(user.id, ADELE);
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
async fn security_alert_subject_is_resolved_through_the_alert() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.alerts.insert(
            "al-1".into(),
            serde_json::json!({"id": "al-1", "severity": "high", "vendorInformation": {"provider": "IPC"},
                "userStates": [{"aadUserId": ADELE, "userPrincipalName": ADELE_UPN}]}),
        )
    });
    let mut e = event(RiskLevel::Unknown);
    e.subject = Subject::SecurityAlert { id: "al-1".into() };
    let pipeline = Pipeline::new(graph_client(&s, secret()), policy(Mode::ReportOnly), None);
    let report = pipeline.process(&e).await;
    assert_eq!(report.findings.unwrap().user_id, ADELE);
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
    let pipeline = Pipeline::new(graph_client(&s, secret()), policy(Mode::ReportOnly), None);
    assert_eq!(pipeline.process(&e).await.findings.unwrap().user_id, ADELE);
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
    let pipeline = Pipeline::new(graph_client(&s, secret()), Arc::new(policy), None);
    let report = pipeline.process(&event(RiskLevel::Low)).await;
    assert!(
        statuses(&report)
            .iter()
            .all(|(_, st)| matches!(st, ActionStatus::Done { .. })),
        "{report:?}"
    );
    assert_eq!(s.with(|d| d.users[0]["accountEnabled"].clone()), true);
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "dismissed"
    );
}

#[tokio::test]
async fn temporary_password_can_be_delivered_through_secrets_manager() {
    use risk_responder::remediate::PasswordVault;
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    let prefix = format!(
        "risk-responder/temporary-password/{}/",
        uuid::Uuid::new_v4()
    );
    let policy = Policy::from_toml(&format!(
        r#"mode = "enforce"
[password_delivery]
channel = "secrets-manager"
name_prefix = "{prefix}"
ttl_hours = 24
[[rules]]
name = "medium"
min_risk_level = "medium"
actions = ["reset_password"]"#
    ))
    .unwrap();
    let sm = aws_sdk_secretsmanager::Client::new(&common::moto::sdk_config().await);
    let vault: Arc<dyn PasswordVault> = Arc::new(
        risk_responder::secrets::SecretsManagerPasswordVault::new(sm.clone()),
    );
    let pipeline = Pipeline::new(graph_client(&s, secret()), Arc::new(policy), Some(vault));
    let report = pipeline.process(&event(RiskLevel::Medium)).await;
    let detail = match &statuses(&report)[0].1 {
        ActionStatus::Done { detail } => detail.clone().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(
        detail.starts_with("stored in Secrets Manager as arn:"),
        "{detail}"
    );
    let set = s.with(|d| {
        d.users[0]["passwordProfile"]["password"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let name = format!("{prefix}{TENANT}/{ADELE}/evt-1");
    let stored = sm.get_secret_value().secret_id(&name).send().await.unwrap();
    assert_eq!(stored.secret_string(), Some(set.as_str()));
    assert!(!detail.contains(&set));
    assert!(s.with(|d| d.mails.is_empty()), "no mail for this channel");
}

#[tokio::test]
async fn a_rotated_client_secret_is_used_without_a_restart() {
    use risk_responder::secrets::{GraphSecrets, SecretStore, SecretsManagerStore};
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
    let err = graph.user(TENANT, ADELE).await.unwrap_err();
    assert!(err.needs_operator(), "{err:?}");

    sm.put_secret_value()
        .secret_id(&id)
        .secret_string(document(CLIENT_SECRET))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(graph.user(TENANT, ADELE).await.unwrap().id, ADELE);
}
