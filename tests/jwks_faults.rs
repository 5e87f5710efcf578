//! Fault tests of the signing keys (JWKS) behind Graph validation tokens, against a local key
//! endpoint that can be slowed, failed and counted. A batch whose tokens cannot be checked is
//! never acknowledged with everything dropped: it is answered 503 within 2.5 s so that Graph
//! delivers it again; one fetch serves every waiting batch; failures are remembered; known keys
//! are served while a refetch is retried, up to a hard limit; forged key ids cannot make the
//! webhook hammer the key endpoint.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use risk_responder::config::Config;
use risk_responder::http::AppState;
use risk_responder::ingress::jwks::JwksPolicy;
use risk_responder::queue::MemoryQueue;

async fn webhook(jwks: &JwksServer, policy: JwksPolicy) -> (AppState, Arc<MemoryQueue>) {
    let queue = Arc::new(MemoryQueue::default());
    let config = Config {
        jwks_url: jwks.url.clone(),
        jwks: policy,
        ..Config::default()
    };
    (app_with(config, queue.clone()).await, queue)
}

async fn deliver(state: &AppState, token: String) -> (u16, String) {
    let (status, _, body) = call(
        state.clone(),
        post_json("/graph/notifications", rich_batch(Some(vec![token]))),
    )
    .await;
    (status, body)
}

fn forged(kid: &str) -> String {
    sign_token(&token_claims(), "jwt-test-key-2.pem", kid)
}

/// A rich batch with a forged key id, from a sender without our clientState (or, with
/// `tenant`, with it but for another tenant).
fn forged_batch(client_state: &str, tenant: Option<&str>, kid: &str) -> String {
    let mut batch: serde_json::Value =
        serde_json::from_str(&rich_batch_with(client_state, Some(vec![forged(kid)]))).unwrap();
    if let Some(tenant) = tenant {
        batch["value"][0]["tenantId"] = tenant.into();
    }
    batch.to_string()
}

#[tokio::test]
async fn forged_key_ids_without_a_genuine_client_state_are_dropped_without_a_fetch() {
    let (logs, _guard) = Logs::capture();
    let jwks = jwks_server().await;
    // Even while the endpoint fails, which would make any key lookup a 503.
    jwks.fail(true);
    let (state, queue) = webhook(&jwks, JwksPolicy::default()).await;
    for i in 0..10 {
        let (status, _, body) = call(
            state.clone(),
            post_json(
                "/graph/notifications",
                forged_batch("guessed-client-state", None, &format!("forged-{i}")),
            ),
        )
        .await;
        assert_eq!(status, 202, "dropped, not retried: {body}");
        assert!(body.is_empty(), "{body}");
    }
    // Our clientState but a tenant that is not allowed: dropped as well.
    let (status, _, _) = call(
        state.clone(),
        post_json(
            "/graph/notifications",
            forged_batch(
                CLIENT_STATE,
                Some("f00dfeed-0000-4000-8000-000000000bad"),
                "forged-t",
            ),
        ),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(jwks.hits(), 0, "no key set lookup for these batches");
    assert!(queue.drain().is_empty());
    let text = logs.text();
    assert!(text.contains(r#"\"client_state_mismatch\":1"#), "{text}");
    assert!(text.contains(r#"\"tenant_not_allowed\":1"#), "{text}");
    assert!(!text.contains("signing keys unavailable"), "{text}");

    // With a genuine clientState the tokens must be checked: 503 while the keys are unavailable.
    let (status, _) = deliver(&state, forged("forged-genuine")).await;
    assert_eq!(status, 503);
    assert_eq!(jwks.hits(), 1);
}

fn sentinel_config(jwks: &JwksServer) -> Config {
    Config {
        jwks_url: jwks.url.clone(),
        sentinel_audiences: vec![SENTINEL_AUDIENCE.to_owned()],
        ..Config::default()
    }
}

/// Posts an incident to `/sentinel/alerts` with `claims` signed under a forged key id.
async fn post_forged_bearer(
    state: &AppState,
    claims: &serde_json::Value,
    kid: &str,
) -> (u16, String) {
    let token = sign_token(claims, "jwt-test-key-2.pem", kid);
    let (status, _, body) = call(
        state.clone(),
        post_sentinel(
            &event_body("sentinel/incident-two-accounts.json"),
            &[("authorization", format!("Bearer {token}"))],
        ),
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn implausible_bearer_tokens_with_forged_key_ids_are_401_without_a_fetch() {
    let jwks = jwks_server().await;
    jwks.fail(true);
    let queue = Arc::new(MemoryQueue::default());
    let state = app_with_secrets(sentinel_config(&jwks), &entra_secrets(), queue.clone());

    let mut stranger = entra_claims();
    stranger["oid"] = "7e57e57e-0000-4000-8000-00000000000a".into();
    stranger["sub"] = "7e57e57e-0000-4000-8000-00000000000a".into();
    stranger["appid"] = "7e57e57e-0000-4000-8000-00000000000b".into();
    let mut other_audience = entra_claims();
    other_audience["aud"] = "https://management.azure.com/".into();
    let mut other_tenant = entra_claims();
    other_tenant["tid"] = "f00dfeed-0000-4000-8000-000000000bad".into();
    let mut junk_caller = entra_claims();
    junk_caller["oid"] = "<script>not-a-guid</script>".into();
    for (i, (claims, reason)) in [
        (
            &stranger,
            "caller (oid 7e57e57e-0000-4000-8000-00000000000a",
        ),
        (&other_audience, "audience (aud) is not one accepted here"),
        (
            &other_tenant,
            "tenant f00dfeed-0000-4000-8000-000000000bad refused",
        ),
        (&junk_caller, "caller (oid - appid"),
    ]
    .into_iter()
    .enumerate()
    {
        for attempt in 0..3 {
            let (status, body) =
                post_forged_bearer(&state, claims, &format!("forged-{i}-{attempt}")).await;
            assert_eq!(status, 401, "{body}");
            assert!(body.contains(reason), "expected {reason:?} in {body}");
            assert!(!body.contains("script"), "unverified text echoed: {body}");
        }
    }
    assert_eq!(jwks.hits(), 0, "no key set lookup for implausible tokens");
    assert!(queue.drain().is_empty());

    // A plausible token (allowed caller, audience and tenant) must be checked: 503.
    let (status, body) = post_forged_bearer(&state, &entra_claims(), "forged-plausible").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(jwks.hits(), 1);
}

#[tokio::test]
async fn a_failing_key_endpoint_gives_503_and_drops_nothing() {
    let jwks = jwks_server().await;
    jwks.fail(true);
    let (state, queue) = webhook(&jwks, JwksPolicy::default()).await;
    let (status, body) = deliver(&state, valid_token()).await;
    assert_eq!(status, 503, "Graph must deliver the batch again: {body}");
    assert!(!body.contains("temporarily_unavailable"), "{body}");
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn a_slow_key_endpoint_gives_503_within_2_5_seconds_and_its_keys_serve_the_retry() {
    let jwks = jwks_server().await;
    jwks.slow(Duration::from_secs(5));
    let (state, queue) = webhook(&jwks, JwksPolicy::default()).await;
    let batches =
        futures_util::future::join_all((0..4).map(|_| deliver(&state, valid_token()))).await;
    for (status, body) in &batches {
        assert_eq!(*status, 503, "{body}");
    }
    // Answered within the answer budget (the wait is 2.5 s), not after the 5-s fetch: the key
    // endpoint had not answered yet when all four were answered.
    assert_eq!(
        jwks.answered(),
        0,
        "the four were answered before the fetch ended"
    );
    assert_eq!(jwks.hits(), 1, "one fetch for four batches");
    assert!(queue.drain().is_empty());

    // The fetch goes on after the answers; once it ends, Graph's retry finds the keys.
    while jwks.answered() == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = deliver(&state, valid_token()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(risk_events(&queue).len(), 1);
    assert_eq!(jwks.hits(), 1);
}

#[tokio::test]
async fn concurrent_batches_wait_for_one_shared_fetch() {
    let jwks = jwks_server().await;
    jwks.slow(Duration::from_millis(1000));
    let (state, queue) = webhook(&jwks, JwksPolicy::default()).await;
    let batches =
        futures_util::future::join_all((0..4).map(|_| deliver(&state, valid_token()))).await;
    for (status, body) in &batches {
        assert_eq!(*status, 202, "{body}");
    }
    // Served together after the one fetch (one fetch, answered once), not one after another.
    assert_eq!((jwks.hits(), jwks.answered()), (1, 1));
    assert_eq!(risk_events(&queue).len(), 4);
}

#[tokio::test]
async fn a_failed_fetch_is_remembered_for_a_while() {
    let jwks = jwks_server().await;
    jwks.fail(true);
    let policy = JwksPolicy {
        retry_after_failure: Duration::from_millis(500),
        ..JwksPolicy::default()
    };
    let (state, queue) = webhook(&jwks, policy).await;
    for _ in 0..5 {
        let (status, _) = deliver(&state, valid_token()).await;
        assert_eq!(status, 503);
    }
    assert_eq!(
        jwks.hits(),
        1,
        "no fetch per request while the endpoint fails"
    );

    tokio::time::sleep(Duration::from_millis(600)).await;
    jwks.fail(false);
    let (status, body) = deliver(&state, valid_token()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(jwks.hits(), 2);
    assert_eq!(risk_events(&queue).len(), 1);
}

#[tokio::test]
async fn known_keys_are_served_while_a_refetch_is_retried_up_to_the_hard_limit() {
    let (logs, _guard) = Logs::capture();
    let jwks = jwks_server().await;
    let policy = JwksPolicy {
        refresh_after: Duration::from_millis(200),
        max_age: Duration::from_millis(1500),
        retry_after_failure: Duration::from_millis(100),
        ..JwksPolicy::default()
    };
    let (state, queue) = webhook(&jwks, policy).await;
    assert_eq!(deliver(&state, valid_token()).await.0, 202);
    let fetched = Instant::now();
    jwks.fail(true);

    // Past the refresh time: the known keys still serve, a refetch runs in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = deliver(&state, valid_token()).await;
    assert_eq!(status, 202, "stale keys serve: {body}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(jwks.hits() >= 2, "a refetch was tried");
    assert_eq!(deliver(&state, valid_token()).await.0, 202);
    assert_eq!(risk_events(&queue).len(), 3);
    assert!(
        logs.text().contains("serving the last good value"),
        "{}",
        logs.text()
    );

    // Past the hard limit, the old keys are no longer trusted: 503 until a fetch succeeds.
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(fetched.elapsed())).await;
    let (status, body) = deliver(&state, valid_token()).await;
    assert_eq!(status, 503, "{body}");
    jwks.fail(false);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(deliver(&state, valid_token()).await.0, 202);
}

#[tokio::test]
async fn forged_key_ids_cause_no_fetches_while_the_keys_are_fresh() {
    let jwks = jwks_server().await;
    let (state, queue) = webhook(&jwks, JwksPolicy::default()).await;
    assert_eq!(deliver(&state, valid_token()).await.0, 202);
    risk_events(&queue);
    for i in 0..15 {
        let (status, _) = deliver(&state, forged(&format!("forged-{i}"))).await;
        // Not checkable before the next allowed refetch: retry later (never accepted).
        assert_eq!(status, 503);
    }
    let forged_batches = futures_util::future::join_all(
        (15..30).map(|i| deliver(&state, forged(&format!("forged-{i}")))),
    )
    .await;
    assert!(forged_batches.iter().all(|(status, _)| *status == 503));
    assert_eq!(jwks.hits(), 1, "30 forged kids, no fetch");
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn an_unknown_key_id_is_refused_once_a_fresh_set_lacks_it() {
    let (logs, _guard) = Logs::capture();
    let jwks = jwks_server().await;
    let policy = JwksPolicy {
        unknown_kid_interval: Duration::from_millis(300),
        ..JwksPolicy::default()
    };
    let (state, queue) = webhook(&jwks, policy).await;
    // Cold: the set is fetched for this batch and does not hold the kid: refused.
    let (status, _) = deliver(&state, forged("forged-a")).await;
    assert_eq!(status, 202);
    assert!(
        logs.text().contains("is not in the key set"),
        "{}",
        logs.text()
    );
    // Past the interval, a refetch is allowed: the fresh set lacks it too, refused again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(deliver(&state, forged("forged-b")).await.0, 202);
    assert_eq!(jwks.hits(), 2);
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn forged_key_ids_cause_at_most_one_fetch_while_fetching_fails() {
    // Cold instance, endpoint down: 15 forged kids, one fetch.
    let jwks = jwks_server().await;
    jwks.fail(true);
    let (state, _) = webhook(&jwks, JwksPolicy::default()).await;
    for i in 0..15 {
        let (status, _) = deliver(&state, forged(&format!("forged-{i}"))).await;
        assert_eq!(status, 503);
    }
    assert_eq!(jwks.hits(), 1);

    // Warm instance whose unknown-kid interval has passed, endpoint down: one more fetch.
    let jwks = jwks_server().await;
    let policy = JwksPolicy {
        unknown_kid_interval: Duration::ZERO,
        ..JwksPolicy::default()
    };
    let (state, queue) = webhook(&jwks, policy).await;
    assert_eq!(deliver(&state, valid_token()).await.0, 202);
    jwks.fail(true);
    let batches = futures_util::future::join_all(
        (0..15).map(|i| deliver(&state, forged(&format!("forged-{i}")))),
    )
    .await;
    // Their keys cannot be checked against a current set: retry, never drop-and-acknowledge.
    assert!(
        batches.iter().all(|(status, _)| *status == 503),
        "{batches:?}"
    );
    for i in 15..30 {
        assert_eq!(deliver(&state, forged(&format!("forged-{i}"))).await.0, 503);
    }
    assert_eq!(
        jwks.hits(),
        2,
        "one initial fetch, one for all 30 forged kids"
    );
    // Genuine tokens with known keys are unaffected.
    assert_eq!(deliver(&state, valid_token()).await.0, 202);
    assert_eq!(risk_events(&queue).len(), 2);
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it_and_nothing_is_lost_meanwhile() {
    let jwks = jwks_server().await;
    let policy = JwksPolicy {
        unknown_kid_interval: Duration::from_millis(300),
        ..JwksPolicy::default()
    };
    let (state, queue) = webhook(&jwks, policy).await;
    assert_eq!(deliver(&state, valid_token()).await.0, 202);
    // Microsoft publishes a new key; Graph starts signing with it right after our fetch.
    jwks.serve("jwks-rotated.json");
    let rotated = sign_token(&token_claims(), "jwt-test-key-2.pem", "test-kid-2");
    let (status, body) = deliver(&state, rotated.clone()).await;
    assert_eq!(status, 503, "not checkable yet, so not dropped: {body}");
    assert_eq!(jwks.hits(), 1);
    // Graph's retry, once a refetch is allowed: the new key is fetched and the batch kept.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (status, body) = deliver(&state, rotated.clone()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(jwks.hits(), 2);
    assert_eq!(risk_events(&queue).len(), 2, "accepted with the new key");
    // Known from now on: no further fetch.
    assert_eq!(deliver(&state, rotated).await.0, 202);
    assert_eq!(jwks.hits(), 2);
}

#[tokio::test]
async fn no_key_set_at_all_is_503_not_a_drop() {
    let (state, queue) = app("http://127.0.0.1:9/keys").await;
    let (status, body) = deliver(&state, valid_token()).await;
    assert_eq!(status, 503, "{body}");
    assert!(queue.drain().is_empty());
}
