//! Graph change-notification ingress, end to end through the router, driven by saved
//! Lambda HTTP events (Function URL and API Gateway v2) and by signed validation tokens.

mod common;

use std::sync::Arc;

use common::*;
use http_body_util::BodyExt;
use risk_responder::config::Config;
use risk_responder::event::{EventSource, Subject};
use risk_responder::queue::{MemoryQueue, WorkItem};
use tower::ServiceExt;

const UNREACHABLE_JWKS: &str = "http://127.0.0.1:9/keys";

#[tokio::test]
async fn handshake_echoes_the_decoded_token_as_text() {
    for fixture in [
        "graph/handshake.function-url.json",
        "graph/handshake-lifecycle.apigw-v2.json",
    ] {
        let (state, queue) = app(UNREACHABLE_JWKS).await;
        let (status, content_type, body) = call(state, lambda_event(fixture)).await;
        assert_eq!(status, 200, "{fixture}");
        assert_eq!(content_type, "text/plain; charset=utf-8");
        assert_eq!(
            body,
            "Validation: Testing client application reachability for subscription Request-Id: 25ef2ac4-0a1e-45a1-8f3c-2d6b1c7e9a10"
        );
        assert!(queue.drain().is_empty());
    }
}

#[tokio::test]
async fn handshake_with_markup_is_refused_not_reflected() {
    let (state, _) = app(UNREACHABLE_JWKS).await;
    let (status, content_type, body) = call(
        state,
        lambda_event("graph/handshake-markup.function-url.json"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(content_type, "application/json");
    assert!(!body.contains("<script>"), "{body}");
}

#[tokio::test]
async fn user_notification_becomes_a_risk_event() {
    for fixture in [
        "graph/users-updated.function-url.json",
        "graph/users-updated.apigw-v2.json",
    ] {
        let (state, queue) = app(UNREACHABLE_JWKS).await;
        let (status, _, body) = call(state, lambda_event(fixture)).await;
        assert_eq!(status, 202, "{fixture}: {body}");
        let events = risk_events(&queue);
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.tenant_id, TENANT);
        assert_eq!(event.source, EventSource::GraphUser);
        assert_eq!(
            event.subject,
            Subject::User {
                id: Some("6e7b768e-07e2-4810-8459-485f84f8f204".into()),
                upn: None
            }
        );
        assert_eq!(event.source_id, "lsgTZMr9KwAAA");
    }
}

#[tokio::test]
async fn redelivery_yields_the_same_event_id() {
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    call(
        state.clone(),
        lambda_event("graph/users-updated.function-url.json"),
    )
    .await;
    call(state, lambda_event("graph/users-updated.apigw-v2.json")).await;
    let events = risk_events(&queue);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_id, events[1].event_id);
}

#[tokio::test]
async fn security_alert_notification_names_the_alert() {
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    let (status, _, _) = call(
        state,
        lambda_event("graph/security-alert-created.apigw-v2.json"),
    )
    .await;
    assert_eq!(status, 202);
    let events = risk_events(&queue);
    assert_eq!(events[0].source, EventSource::GraphSecurityAlert);
    assert_eq!(
        events[0].subject,
        Subject::SecurityAlert {
            id: "5f3b0c8e2d0a4a4f9a3e7c1b2d4e6f80".into()
        }
    );
}

#[tokio::test]
async fn wrong_client_state_is_dropped_logged_and_still_acknowledged() {
    let (logs, _guard) = Logs::capture();
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    let (status, _, body) = call(
        state,
        lambda_event("graph/wrong-client-state.function-url.json"),
    )
    .await;
    assert_eq!(status, 202);
    assert!(
        body.is_empty(),
        "no validation detail in the answer: {body}"
    );
    assert!(queue.drain().is_empty());
    let logs = logs.text();
    let line = batch_line(&logs);
    assert_eq!(line["fields"]["dropped"], 1);
    assert!(
        line["fields"]["drop_reasons"]
            .as_str()
            .unwrap()
            .contains(r#""client_state_mismatch":1"#),
        "{line}"
    );
    let sample = line["fields"]["drop_sample"].as_str().unwrap();
    assert!(sample.contains("clientState does not match"), "{sample}");
    assert!(sample.contains(TENANT), "{sample}");
    assert!(
        !logs.contains("guessed-client-state-1234"),
        "presented value logged"
    );
    assert!(!logs.contains(CLIENT_STATE), "secret logged");
}

#[tokio::test]
async fn unknown_tenant_is_dropped() {
    let (logs, _guard) = Logs::capture();
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    let (status, _, _) = call(
        state,
        lambda_event("graph/unknown-tenant.function-url.json"),
    )
    .await;
    assert_eq!(status, 202);
    assert!(queue.drain().is_empty());
    assert!(
        logs.text()
            .contains("tenant f00dfeed-0000-4000-8000-000000000bad is not allowed")
    );
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    let (status, content_type, body) = call(
        state,
        lambda_event("graph/malformed-json.function-url.json"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(content_type, "application/json");
    assert!(body.contains("not a Graph notification batch"), "{body}");
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn json_that_is_not_a_batch_is_400() {
    let (state, _) = app(UNREACHABLE_JWKS).await;
    let (status, _, _) = call(state, post_json("/graph/notifications", r#"{"values":[]}"#)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let queue = Arc::new(MemoryQueue::default());
    let config = Config {
        max_body_bytes: 4096,
        ..Config::default()
    };
    let state = app_with(config, queue).await;
    let body = format!(r#"{{"value":[],"pad":"{}"}}"#, "x".repeat(5000));
    let (status, _, text) = call(state, post_json("/graph/notifications", body)).await;
    assert_eq!(status, 413, "{text}");
}

#[tokio::test]
async fn mixed_batch_keeps_the_good_and_drops_the_bad() {
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    let (logs, _guard) = Logs::capture();
    let (status, _, body) = call(state, lambda_event("graph/mixed-batch.apigw-v2.json")).await;
    assert_eq!(status, 202);
    assert!(body.is_empty(), "{body}");
    assert_eq!(risk_events(&queue).len(), 2);
    let line = batch_line(&logs.text());
    assert_eq!(line["fields"]["accepted"], 2);
    assert_eq!(line["fields"]["dropped"], 1);
}

#[tokio::test]
async fn lifecycle_reauthorization_is_recognised() {
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    let (status, _, _) = call(
        state,
        lambda_event("graph/lifecycle-reauthorization-required.apigw-v2.json"),
    )
    .await;
    assert_eq!(status, 202);
    let items = queue.drain();
    assert_eq!(items.len(), 1);
    match &items[0] {
        WorkItem::Lifecycle(notice) => {
            assert_eq!(
                notice.kind,
                risk_responder::ingress::graph::LifecycleKind::ReauthorizationRequired
            );
            assert_eq!(
                notice.subscription_id,
                "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"
            );
        }
        other => panic!("expected lifecycle, got {other:?}"),
    }
}

#[tokio::test]
async fn queue_failure_is_503_so_graph_retries() {
    let state = app_with(Config::default(), Arc::new(FailingQueue)).await;
    let (status, _, _) = call(state, lambda_event("graph/users-updated.function-url.json")).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn get_is_not_allowed() {
    let (state, _) = app(UNREACHABLE_JWKS).await;
    let request = http::Request::get("/graph/notifications")
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, _, _) = call(state, request).await;
    assert_eq!(status, 405);
}

/// The one "graph batch" log line of a request, parsed.
fn batch_line(logs: &str) -> serde_json::Value {
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"graph batch\""))
        .collect();
    assert_eq!(lines.len(), 1, "one line per batch: {logs}");
    serde_json::from_str(lines[0]).unwrap()
}

#[tokio::test]
async fn the_answer_does_not_tell_which_check_failed() {
    let good = event_body("graph/users-updated.function-url.json");
    let good: serde_json::Value = serde_json::from_str(&good).unwrap();
    let good = good["body"].as_str().unwrap().to_owned();
    let variants = [
        good.clone(),
        good.replace(CLIENT_STATE, "guessed-client-state"),
        good.replace(TENANT, "f00dfeed-0000-4000-8000-000000000bad"),
        good.replace("Users/", "Groups/"),
    ];
    let mut answers = Vec::new();
    for body in variants {
        let (state, _) = app(UNREACHABLE_JWKS).await;
        let response = risk_responder::http::router(state)
            .oneshot(post_json("/graph/notifications", body))
            .await
            .unwrap();
        let status = response.status();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        answers.push((status, headers, body));
    }
    assert_eq!(answers[0].0, 202);
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "kept and dropped batches must get the same answer: {answers:?}"
    );
}

#[tokio::test]
async fn a_megabyte_of_empty_notifications_is_refused_in_one_line() {
    let (logs, _guard) = Logs::capture();
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    let limit = risk_responder::config::DEFAULT_MAX_BODY_BYTES;
    // The request of the issue: 349,518 empty notifications in one 1 MiB body.
    let count = 349_518;
    let body = format!(r#"{{"value":[{}{{}}]}}"#, "{},".repeat(count - 1));
    assert!(body.len() <= limit, "{}", body.len());
    let (status, _, text) = call(state, post_json("/graph/notifications", body)).await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("349518 notifications, more than the 1000"),
        "{text}"
    );
    assert!(queue.drain().is_empty());
    let logs = logs.text();
    let ours: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("risk_responder"))
        .collect();
    assert_eq!(ours.len(), 1, "{logs}");
    assert!(ours[0].len() < 1000, "{}", ours[0]);
}

#[tokio::test]
async fn a_full_batch_of_bad_notifications_is_one_log_line() {
    let (logs, _guard) = Logs::capture();
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    let cap = risk_responder::config::DEFAULT_MAX_NOTIFICATIONS_PER_BATCH;
    let mut value: Vec<serde_json::Value> = (0..cap - 2).map(|_| serde_json::json!({})).collect();
    // Sender-controlled text is clipped in the sample.
    value.insert(
        0,
        serde_json::json!({ "subscriptionId": "x".repeat(5000), "clientState": 1 }),
    );
    value.push(serde_json::json!({
        "subscriptionId": "s", "clientState": "guessed", "tenantId": TENANT
    }));
    let body = serde_json::json!({ "value": value }).to_string();
    let (status, _, text) = call(state, post_json("/graph/notifications", body)).await;
    assert_eq!(status, 202, "{text}");
    assert!(queue.drain().is_empty());
    let logs = logs.text();
    let line = batch_line(&logs);
    assert_eq!(line["fields"]["notifications"], cap);
    assert_eq!(line["fields"]["dropped"], cap);
    let reasons: serde_json::Value =
        serde_json::from_str(line["fields"]["drop_reasons"].as_str().unwrap()).unwrap();
    assert_eq!(reasons["malformed"], cap - 1);
    assert_eq!(reasons["client_state_mismatch"], 1);
    let sample: Vec<serde_json::Value> =
        serde_json::from_str(line["fields"]["drop_sample"].as_str().unwrap()).unwrap();
    assert_eq!(sample.len(), 3);
    let lines = logs
        .lines()
        .filter(|l| l.contains("risk_responder"))
        .count();
    assert_eq!(lines, 1, "{logs}");
    assert!(logs.len() < 4000, "{} bytes of logs", logs.len());
}

#[tokio::test]
async fn the_batch_cap_is_configurable_and_inclusive() {
    let queue = Arc::new(MemoryQueue::default());
    let config = Config {
        max_notifications_per_batch: 2,
        ..Config::default()
    };
    let state = app_with(config, queue.clone()).await;
    let (status, _, _) = call(
        state.clone(),
        post_json("/graph/notifications", r#"{"value":[{},{}]}"#),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _, text) = call(
        state,
        post_json("/graph/notifications", r#"{"value":[{},{},{}]}"#),
    )
    .await;
    assert_eq!(status, 413, "{text}");
}

// ---- rich notifications: validationTokens + encryptedContent ----

async fn deliver_rich(
    tokens: Option<Vec<String>>,
) -> (u16, Vec<risk_responder::event::RiskEvent>, String) {
    let jwks = jwks_server().await;
    let (state, queue) = app(&jwks.url).await;
    let (logs, _guard) = Logs::capture();
    let (status, _, _) = call(state, post_json("/graph/notifications", rich_batch(tokens))).await;
    (status, risk_events(&queue), logs.text())
}

#[tokio::test]
async fn rich_notification_with_valid_token_is_decrypted() {
    let (status, events, _) = deliver_rich(Some(vec![valid_token()])).await;
    assert_eq!(status, 202);
    assert_eq!(events.len(), 1);
    let data = events[0].resource_data.as_ref().expect("decrypted content");
    assert_eq!(data["etag"], "1625126194597");
    assert_eq!(data["body"]["content"], "Hello World");
}

#[tokio::test]
async fn v2_token_with_azp_is_accepted() {
    let mut claims = token_claims();
    claims["iss"] = format!("https://login.microsoftonline.com/{TENANT}/v2.0").into();
    claims.as_object_mut().unwrap().remove("appid");
    claims["azp"] = GRAPH_PUBLISHER.into();
    let token = sign_token(&claims, "jwt-test-key-1.pem", "test-kid-1");
    let (_, events, _) = deliver_rich(Some(vec![token])).await;
    assert_eq!(events.len(), 1);
}

async fn assert_refused(token: String, reason: &str) {
    let (status, events, logs) = deliver_rich(Some(vec![token])).await;
    assert_eq!(status, 202, "Graph still gets a 2xx");
    assert!(events.is_empty(), "{reason}: event accepted");
    assert!(logs.contains(reason), "expected {reason:?} in {logs}");
}

#[tokio::test]
async fn tampered_signature_is_refused() {
    // Signed by a key that is not in the JWKS, but claiming the JWKS key's id.
    let token = sign_token(&token_claims(), "jwt-test-key-2.pem", "test-kid-1");
    assert_refused(token, "InvalidSignature").await;
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let mut claims = token_claims();
    claims["aud"] = "99999999-0000-0000-0000-000000000000".into();
    assert_refused(
        sign_token(&claims, "jwt-test-key-1.pem", "test-kid-1"),
        "InvalidAudience",
    )
    .await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let mut claims = token_claims();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    claims["exp"] = (now - 3600).into();
    assert_refused(
        sign_token(&claims, "jwt-test-key-1.pem", "test-kid-1"),
        "ExpiredSignature",
    )
    .await;
}

#[tokio::test]
async fn token_from_another_app_is_refused() {
    let mut claims = token_claims();
    claims["appid"] = "22222222-0000-0000-0000-000000000000".into();
    assert_refused(
        sign_token(&claims, "jwt-test-key-1.pem", "test-kid-1"),
        "appid/azp is not the Graph notification publisher",
    )
    .await;
}

#[tokio::test]
async fn foreign_issuer_is_refused() {
    let mut claims = token_claims();
    claims["iss"] = "https://evil.example/".into();
    assert_refused(
        sign_token(&claims, "jwt-test-key-1.pem", "test-kid-1"),
        "is not a Microsoft issuer",
    )
    .await;
}

#[tokio::test]
async fn token_for_unlisted_tenant_is_refused() {
    let mut claims = token_claims();
    let other = "f00dfeed-0000-4000-8000-000000000bad";
    claims["tid"] = other.into();
    claims["iss"] = format!("https://sts.windows.net/{other}/").into();
    assert_refused(
        sign_token(&claims, "jwt-test-key-1.pem", "test-kid-1"),
        "is not allowed",
    )
    .await;
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let token = sign_token(&token_claims(), "jwt-test-key-2.pem", "test-kid-2");
    assert_refused(token, "is not in the key set").await;
}

#[tokio::test]
async fn encrypted_content_without_tokens_is_refused() {
    let (status, events, logs) = deliver_rich(None).await;
    assert_eq!(status, 202);
    assert!(events.is_empty());
    assert!(
        logs.contains("encryptedContent without validationTokens"),
        "{logs}"
    );
}

#[tokio::test]
async fn one_bad_token_taints_the_whole_batch() {
    let mut claims = token_claims();
    claims["aud"] = "99999999-0000-0000-0000-000000000000".into();
    let bad = sign_token(&claims, "jwt-test-key-1.pem", "test-kid-1");
    let (_, events, _) = deliver_rich(Some(vec![valid_token(), bad])).await;
    assert!(events.is_empty());
}

#[tokio::test]
async fn jwks_is_fetched_once_and_cached() {
    let jwks = jwks_server().await;
    let (state, queue) = app(&jwks.url).await;
    for _ in 0..3 {
        let (status, _, _) = call(
            state.clone(),
            post_json(
                "/graph/notifications",
                rich_batch(Some(vec![valid_token()])),
            ),
        )
        .await;
        assert_eq!(status, 202);
    }
    assert_eq!(risk_events(&queue).len(), 3);
    assert_eq!(jwks.hits(), 1);

    // Unknown kids within the throttle window (5 minutes by default) do not refetch.
    let forged = sign_token(&token_claims(), "jwt-test-key-2.pem", "forged-kid");
    for _ in 0..2 {
        call(
            state.clone(),
            post_json(
                "/graph/notifications",
                rich_batch(Some(vec![forged.clone()])),
            ),
        )
        .await;
    }
    assert_eq!(jwks.hits(), 1);
}

#[tokio::test]
async fn unreachable_jwks_is_503_so_graph_retries() {
    let (state, queue) = app(UNREACHABLE_JWKS).await;
    let (status, _, body) = call(
        state,
        post_json(
            "/graph/notifications",
            rich_batch(Some(vec![valid_token()])),
        ),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(queue.drain().is_empty());
}

/// A basic `users` notification of `subscription` claiming `tenant`.
fn users_batch(subscription: &str, tenant: &str) -> String {
    serde_json::json!({"value": [{
        "subscriptionId": subscription,
        "clientState": CLIENT_STATE,
        "changeType": "updated",
        "resource": "Users/6e7b768e-07e2-4810-8459-485f84f8f204",
        "tenantId": tenant,
    }]})
    .to_string()
}

#[tokio::test]
async fn a_notification_is_kept_only_for_a_subscription_recorded_in_its_tenant() {
    const TENANT_B: &str = "2c1d8d6e-5a4b-4c3d-9e8f-7a6b5c4d3e2f";
    let (logs, _guard) = Logs::capture();
    let queue = Arc::new(MemoryQueue::default());
    let config = Config {
        allowed_tenants: vec![TENANT.to_owned(), TENANT_B.to_owned()],
        jwks_url: UNREACHABLE_JWKS.into(),
        ..Config::default()
    };
    // The fixture subscriptions are recorded in the ledger, in TENANT.
    let state = app_with(config, queue.clone()).await;
    let recorded = FIXTURE_SUBSCRIPTIONS[0];
    // The recorded pair: kept, and remembered so the next batch costs no ledger read.
    let (status, _, text) = call(
        state.clone(),
        post_json("/graph/notifications", users_batch(recorded, TENANT)),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(risk_events(&queue).len(), 1);
    assert!(
        state
            .recorded_subscriptions
            .lock()
            .unwrap()
            .contains(&(TENANT.to_owned(), recorded.to_owned()))
    );
    // The same subscription claiming the other tenant, and a subscription nobody recorded: a
    // sender holding the clientState cannot speak for a tenant through them.
    for (subscription, tenant) in [
        (recorded, TENANT_B),
        ("a8d1c4e2-0000-4000-8000-000000000009", TENANT),
    ] {
        let (status, _, text) = call(
            state.clone(),
            post_json("/graph/notifications", users_batch(subscription, tenant)),
        )
        .await;
        assert_eq!(status, 202, "Graph hears the same answer: {text}");
        assert!(queue.is_empty(), "{subscription} in {tenant} is not kept");
    }
    let logged = logs.text();
    assert!(
        logged.contains("subscription_not_recorded"),
        "the drop is counted by reason: {logged}"
    );
}
