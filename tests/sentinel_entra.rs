//! `/sentinel/alerts` authenticated as Sentinel playbooks do: Entra ID access tokens of a
//! managed identity (Logic Apps' HTTP action with Managed Identity authentication), checked
//! against the Microsoft identity key set (local stand-in); plus the optional API key, and
//! "any one configured method is enough" with Standard Webhooks.

mod common;

use std::sync::Arc;

use common::*;
use http_body_util::BodyExt;
use risk_responder::config::Config;
use risk_responder::http::AppState;
use risk_responder::queue::MemoryQueue;
use tower::ServiceExt;

const CLIENT_ID: &str = "5a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d";

fn config(jwks: &JwksServer) -> Config {
    Config {
        jwks_url: jwks.url.clone(),
        sentinel_audiences: vec![SENTINEL_AUDIENCE.to_owned(), CLIENT_ID.to_owned()],
        ..Config::default()
    }
}

async fn webhook(secrets: &str) -> (AppState, Arc<MemoryQueue>, JwksServer) {
    let jwks = jwks_server().await;
    let queue = Arc::new(MemoryQueue::default());
    let state = app_with_secrets(config(&jwks), secrets, queue.clone());
    (state, queue, jwks)
}

fn with_bearer(body: &str, token: &str) -> http::Request<axum::body::Body> {
    post_sentinel(body, &[("authorization", format!("Bearer {token}"))])
}

fn incident() -> String {
    event_body("sentinel/incident-two-accounts.json")
}

async fn post(state: &AppState, token: &str) -> (u16, String) {
    let (status, _, body) = call(state.clone(), with_bearer(&incident(), token)).await;
    (status, body)
}

fn signed(claims: &serde_json::Value) -> String {
    sign_token(claims, "jwt-test-key-1.pem", "test-kid-1")
}

#[tokio::test]
async fn a_managed_identity_token_for_the_app_id_uri_is_accepted() {
    let (state, queue, _) = webhook(&entra_secrets()).await;
    let (status, body) = post(&state, &entra_token()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(risk_events(&queue).len(), 2);
}

/// Turns v1 claims into the v2 token of the same app: the client id as audience, the v2
/// issuer, and the application in `azp` instead of `appid`.
fn as_v2(claims: &mut serde_json::Value) {
    claims["aud"] = CLIENT_ID.into();
    claims["iss"] = format!("https://login.microsoftonline.com/{TENANT}/v2.0").into();
    claims["ver"] = "2.0".into();
    let appid = claims.as_object_mut().unwrap().remove("appid").unwrap();
    claims["azp"] = appid;
}

#[tokio::test]
async fn a_v2_token_for_the_client_id_is_accepted() {
    let (state, queue, _) = webhook(&entra_secrets()).await;
    let mut claims = entra_claims();
    as_v2(&mut claims);
    let (status, body) = post(&state, &signed(&claims)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(risk_events(&queue).len(), 2);
}

#[tokio::test]
async fn an_application_may_be_allowed_by_its_app_id() {
    let secrets = serde_json::json!({
        "sentinel_callers": { "app_ids": [PLAYBOOK_APPID] },
    })
    .to_string();
    let (state, _, _) = webhook(&secrets).await;
    let mut claims = entra_claims();
    claims["oid"] = "00000000-1111-2222-3333-444444444444".into();
    assert_eq!(post(&state, &signed(&claims)).await.0, 202);
    // A v2 token names the application in `azp` (no `appid`).
    as_v2(&mut claims);
    let (status, body) = post(&state, &signed(&claims)).await;
    // Authenticated: the same incident again is answered as the duplicate it is.
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"duplicate\""), "{body}");
    // Another application's v2 token is not on the list.
    claims["azp"] = "99999999-8888-7777-6666-555555555555".into();
    assert_eq!(post(&state, &signed(&claims)).await.0, 401);
}

async fn assert_refused(claims: serde_json::Value, expected: &str) {
    let (logs, _guard) = Logs::capture();
    let (state, queue, _) = webhook(&entra_secrets()).await;
    let token = signed(&claims);
    let response = risk_responder::http::router(state)
        .oneshot(with_bearer(&incident(), &token))
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "{expected}");
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer",
        "{expected}"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(expected), "expected {expected:?} in {body}");
    assert!(body.contains("send an Entra ID access token"), "{body}");
    assert!(body.contains("or a Standard Webhooks signature"), "{body}");
    assert!(!body.contains(&token), "the token is echoed");
    assert!(!logs.text().contains(&token), "the token is logged");
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn another_audience_is_refused() {
    let mut claims = entra_claims();
    claims["aud"] = "https://management.azure.com/".into();
    assert_refused(claims, "token audience (aud) is not one accepted here").await;
    let mut claims = entra_claims();
    claims["aud"] = serde_json::json!(["https://management.azure.com/"]);
    assert_refused(claims, "token audience (aud) is not one accepted here").await;
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_token_is_refused() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = entra_claims();
    claims["exp"] = (now - 600).into();
    assert_refused(claims, "ExpiredSignature").await;
    let mut claims = entra_claims();
    claims["nbf"] = (now + 600).into();
    assert_refused(claims, "ImmatureSignature").await;
}

#[tokio::test]
async fn a_tenant_that_is_not_allowed_is_refused() {
    let other = "f00dfeed-0000-4000-8000-000000000bad";
    let mut claims = entra_claims();
    claims["tid"] = other.into();
    claims["iss"] = format!("https://sts.windows.net/{other}/").into();
    assert_refused(claims, &format!("tenant {other} refused")).await;
}

#[tokio::test]
async fn an_issuer_that_is_not_the_tokens_tenant_is_refused() {
    let mut claims = entra_claims();
    claims["iss"] = "https://sts.windows.net/f00dfeed-0000-4000-8000-000000000bad/".into();
    assert_refused(claims, "is not a Microsoft issuer for its tenant").await;
    let mut claims = entra_claims();
    claims["iss"] = "https://evil.example/".into();
    assert_refused(claims, "is not a Microsoft issuer").await;
}

#[tokio::test]
async fn a_caller_not_on_the_allow_list_is_refused_and_named() {
    let mut claims = entra_claims();
    let stranger = "7e57e57e-0000-4000-8000-00000000000a";
    claims["oid"] = stranger.into();
    claims["appid"] = "7e57e57e-0000-4000-8000-00000000000b".into();
    assert_refused(claims, &format!("caller (oid {stranger}")).await;
}

#[tokio::test]
async fn a_token_not_signed_by_microsoft_is_refused() {
    let (state, queue, _) = webhook(&entra_secrets()).await;
    // Signed by a key that is not in the key set, claiming the set's key id.
    let forged = sign_token(&entra_claims(), "jwt-test-key-2.pem", "test-kid-1");
    let (status, body) = post(&state, &forged).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("InvalidSignature"), "{body}");
    // A token with another algorithm is refused before any key lookup.
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &entra_claims(),
        &jsonwebtoken::EncodingKey::from_secret(b"guessed"),
    )
    .unwrap();
    let (status, body) = post(&state, &hs256).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("is not RS256"), "{body}");
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn unavailable_signing_keys_give_503_so_logic_apps_retries() {
    let (state, queue, jwks) = webhook(&entra_secrets()).await;
    jwks.fail(true);
    let (status, body) = post(&state, &entra_token()).await;
    assert_eq!(status, 503, "{body}");
    assert!(queue.drain().is_empty());
    assert_eq!(jwks.hits(), 1);
}

#[tokio::test]
async fn no_credential_is_401_listing_what_is_accepted() {
    let (state, _, _) = webhook(&entra_secrets()).await;
    let body = incident();
    let (status, _, text) = call(state, post_json("/sentinel/alerts", body)).await;
    assert_eq!(status, 401);
    assert!(text.contains("no credential presented"), "{text}");
    assert!(text.contains("send an Entra ID access token"), "{text}");
    assert!(text.contains("Standard Webhooks signature"), "{text}");
    assert!(
        !text.contains("x-api-key"),
        "API keys are off by default: {text}"
    );
}

#[tokio::test]
async fn entra_tokens_are_refused_when_no_audience_is_configured() {
    let jwks = jwks_server().await;
    let queue = Arc::new(MemoryQueue::default());
    let config = Config {
        jwks_url: jwks.url.clone(),
        ..Config::default()
    };
    let state = app_with_secrets(config, &entra_secrets(), queue.clone());
    let (status, _, text) = call(state, with_bearer(&incident(), &entra_token())).await;
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("Entra ID bearer tokens are not accepted here"),
        "{text}"
    );
    assert_eq!(jwks.hits(), 0);
}

#[tokio::test]
async fn any_one_good_credential_is_enough() {
    let (state, queue, _) = webhook(&entra_secrets()).await;
    let body = incident();
    // A stale signature alongside a good token.
    let mut headers = signed_headers(WEBHOOK_KEY, "msg_mixed", &body);
    headers[1].1 = "1600000000".into();
    headers.push(("authorization", format!("Bearer {}", entra_token())));
    let (status, _, text) = call(state.clone(), post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    // A bad token alongside a good signature.
    let mut claims = entra_claims();
    claims["aud"] = "api://someone-else".into();
    let mut headers = signed_headers(WEBHOOK_KEY, "msg_mixed_2", &body);
    headers.push(("authorization", format!("Bearer {}", signed(&claims))));
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(risk_events(&queue).len(), 4);
}

const API_KEY_1: &str = "rr-api-key-one-0123456789abcdef0123";
const API_KEY_2: &str = "rr-api-key-two-fedcba9876543210fedc";

#[tokio::test]
async fn api_keys_are_off_by_default() {
    let (state, queue, _) = webhook(&entra_secrets()).await;
    let body = incident();
    let request = post_sentinel(&body, &[("x-api-key", API_KEY_1.to_owned())]);
    let (status, _, text) = call(state, request).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("API keys are not accepted here"), "{text}");
    assert!(!text.contains(API_KEY_1), "{text}");
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn any_configured_api_key_is_accepted_and_others_refused() {
    let secrets = serde_json::json!({ "sentinel_api_keys": [API_KEY_1, API_KEY_2] }).to_string();
    let jwks = jwks_server().await;
    let queue = Arc::new(MemoryQueue::default());
    let state = app_with_secrets(
        Config {
            jwks_url: jwks.url.clone(),
            ..Config::default()
        },
        &secrets,
        queue.clone(),
    );
    let body = incident();
    for key in [API_KEY_1, API_KEY_2] {
        let request = post_sentinel(&body, &[("x-api-key", key.to_owned())]);
        let (status, _, text) = call(state.clone(), request).await;
        assert_eq!(status, 202, "{text}");
    }
    assert_eq!(risk_events(&queue).len(), 4);
    let wrong = format!("{}x", &API_KEY_1[..API_KEY_1.len() - 1]);
    let request = post_sentinel(&body, &[("x-api-key", wrong.clone())]);
    let (status, _, text) = call(state, request).await;
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("x-api-key does not match any configured key"),
        "{text}"
    );
    assert!(
        text.contains("send an API key in the x-api-key header"),
        "{text}"
    );
    assert!(!text.contains(&wrong), "{text}");
}

#[tokio::test]
async fn a_logic_apps_retry_of_a_kept_delivery_is_a_2xx_duplicate() {
    let (state, queue, _) = webhook(&entra_secrets()).await;
    let token = entra_token();
    let (first, _) = post(&state, &token).await;
    let (second, body) = post(&state, &token).await;
    assert_eq!((first, second), (202, 200), "{body}");
    assert!(body.contains(r#""status":"duplicate""#), "{body}");
    assert_eq!(
        risk_events(&queue).len(),
        2,
        "the incident's two accounts, once"
    );
}

// ---- app-only tokens (a user's token through an allow-listed app is refused) ----

/// A user's (delegated) token obtained through the allow-listed application: v1 with `scp`.
fn users_token_through_the_app() -> serde_json::Value {
    let mut claims = entra_claims();
    let user = "8f7e6d5c-4b3a-4291-8d7e-6f5a4b3c2d1e";
    claims["oid"] = user.into();
    claims["sub"] = "Vx7x0Qz2y3JfR1n3mN4pQ5rS6tU7vW8xY9zA0bC1dE2".into();
    claims["scp"] = "user_impersonation".into();
    claims["upn"] = "megan.bowen@contoso.onmicrosoft.com".into();
    claims.as_object_mut().unwrap().remove("idtyp");
    claims
}

async fn assert_refused_with_app_allowed(claims: serde_json::Value, expected: &str) {
    let secrets = serde_json::json!({
        "webhook_hmac_keys": [WEBHOOK_KEY],
        "sentinel_callers": { "app_ids": [PLAYBOOK_APPID] },
    })
    .to_string();
    let (state, queue, _) = webhook(&secrets).await;
    let (status, body) = post(&state, &signed(&claims)).await;
    assert_eq!(status, 401, "{expected}: {body}");
    assert!(body.contains(expected), "expected {expected:?} in {body}");
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn a_users_token_through_an_allowed_app_is_refused() {
    // v1, scp, no idtyp.
    assert_refused_with_app_allowed(users_token_through_the_app(), "it carries scp").await;
    // v2 with idtyp=user (and scp).
    let mut claims = users_token_through_the_app();
    claims["idtyp"] = "user".into();
    claims["ver"] = "2.0".into();
    claims["iss"] = format!("https://login.microsoftonline.com/{TENANT}/v2.0").into();
    let appid = claims.as_object_mut().unwrap().remove("appid").unwrap();
    claims["azp"] = appid;
    assert_refused_with_app_allowed(claims.clone(), "it carries scp").await;
    // idtyp=user without scp (a token whose scopes were stripped is still a user's).
    claims.as_object_mut().unwrap().remove("scp");
    assert_refused_with_app_allowed(claims, "idtyp is not app").await;
    // v1 without idtyp and without scp, but oid is not sub: not an app-only token.
    let mut claims = users_token_through_the_app();
    claims.as_object_mut().unwrap().remove("scp");
    assert_refused_with_app_allowed(claims, "its oid must equal its sub").await;
}

#[tokio::test]
async fn an_app_only_v1_token_without_idtyp_is_accepted() {
    // idtyp is an optional claim in v1 tokens: without it, no scp and oid = sub is app-only.
    let secrets = serde_json::json!({
        "sentinel_callers": { "app_ids": [PLAYBOOK_APPID] },
    })
    .to_string();
    let (state, queue, _) = webhook(&secrets).await;
    let mut claims = entra_claims();
    claims.as_object_mut().unwrap().remove("idtyp");
    assert_eq!(claims["oid"], claims["sub"]);
    let (status, body) = post(&state, &signed(&claims)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(risk_events(&queue).len(), 2);
}

// ---- replay ids and how long a delivery is remembered ----

/// A signer cannot pre-empt a playbook's delivery by choosing a `webhook-id` equal to the id
/// the Entra delivery of the same body gets: each method's ids have their own prefix.
#[tokio::test]
async fn a_webhook_id_cannot_collide_with_an_entra_delivery() {
    let (state, queue, _) = webhook(&entra_secrets()).await;
    let body = incident();
    let hash: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes())
        .as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let forged_id = format!("entra:{PLAYBOOK_OID}:{hash}");
    let headers = signed_headers(WEBHOOK_KEY, &forged_id, &body);
    let (status, _, text) = call(state.clone(), post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    // The playbook's own delivery of that body is not taken for a duplicate.
    let (status, text) = post(&state, &entra_token()).await;
    assert_eq!(status, 202, "{text}");
    assert!(text.contains(r#""status":"accepted""#), "{text}");
    assert_eq!(risk_events(&queue).len(), 4);
}

/// A replay guard on a clock the test moves (the in-memory and DynamoDB guards both expire an
/// id `remember_for` after it was first seen).
#[derive(Default)]
struct ClockedGuard {
    now: std::sync::atomic::AtomicU64,
    seen: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl ClockedGuard {
    fn advance(&self, by: std::time::Duration) {
        self.now
            .fetch_add(by.as_secs(), std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl risk_responder::ingress::signature::ReplayGuard for ClockedGuard {
    async fn first_seen(
        &self,
        id: &str,
        remember_for: std::time::Duration,
    ) -> Result<bool, risk_responder::ingress::signature::ReplayStoreError> {
        let now = self.now.load(std::sync::atomic::Ordering::SeqCst);
        let mut seen = self.seen.lock().unwrap();
        if seen.get(id).is_some_and(|expires| *expires > now) {
            return Ok(false);
        }
        seen.insert(id.to_owned(), now + remember_for.as_secs());
        Ok(true)
    }

    async fn forget(&self, id: &str) {
        self.seen.lock().unwrap().remove(id);
    }
}

/// A managed identity's token is good for up to a day: the same token and body replayed after
/// the signature window (10 minutes) is still a duplicate while the token would be accepted;
/// once it expired, the token itself is refused.
#[tokio::test]
async fn bearer_deliveries_are_remembered_while_their_token_is_valid() {
    let (mut state, queue, _) = webhook(&entra_secrets()).await;
    let guard = Arc::new(ClockedGuard::default());
    state.intake.replay_guard = guard.clone();
    let mut claims = entra_claims();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    claims["exp"] = (now + 20 * 3600).into();
    let token = signed(&claims);
    let (first, body) = post(&state, &token).await;
    assert_eq!(first, 202, "{body}");
    guard.advance(std::time::Duration::from_secs(11 * 60));
    let (again, body) = post(&state, &token).await;
    assert_eq!(again, 200, "{body}");
    assert!(body.contains(r#""status":"duplicate""#), "{body}");
    guard.advance(std::time::Duration::from_secs(19 * 3600));
    let (still, body) = post(&state, &token).await;
    assert_eq!(still, 200, "{body}");
    assert_eq!(risk_events(&queue).len(), 2, "kept once");
    // Remembered for the token's remaining life and its leeway, bounded.
    let remembered = guard.seen.lock().unwrap().values().copied().max().unwrap();
    assert!(
        (20 * 3600..=20 * 3600 + 120).contains(&remembered),
        "{remembered}"
    );
}

#[tokio::test]
async fn how_long_a_delivery_is_remembered_is_bounded() {
    let (mut state, _, _) = webhook(&entra_secrets()).await;
    let guard = Arc::new(ClockedGuard::default());
    state.intake.replay_guard = guard.clone();
    let mut claims = entra_claims();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    claims["exp"] = (now + 10 * 24 * 3600).into();
    let (status, body) = post(&state, &signed(&claims)).await;
    assert_eq!(status, 202, "{body}");
    let remembered = guard.seen.lock().unwrap().values().copied().max().unwrap();
    assert_eq!(
        remembered,
        risk_responder::ingress::sentinel_auth::MAX_REPLAY_MEMORY.as_secs()
    );
    // A token about to expire: remembered at least for the signature window.
    let mut claims = entra_claims();
    claims["exp"] = (now + 30).into();
    claims["uti"] = "another-token".into();
    let body = incident().replace("High", "Medium");
    let (status, _, text) = call(
        state,
        post_sentinel(
            &body,
            &[("authorization", format!("Bearer {}", signed(&claims)))],
        ),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let windows: Vec<u64> = guard.seen.lock().unwrap().values().copied().collect();
    assert!(windows.contains(&600), "{windows:?}");
}

/// A second tenant this deployment serves.
const TENANT_B: &str = "2c1d8d6e-5a4b-4c3d-9e8f-7a6b5c4d3e2f";

/// A Sentinel alert naming one account, in `tenant`.
fn alert_for(user: &str, tenant: &str) -> String {
    serde_json::json!({
        "SystemAlertId": format!("alert-{user}-{tenant}"),
        "AlertName": "Atypical travel",
        "Severity": "High",
        "Entities": [{
            "$id": "2", "Type": "account", "AadUserId": user, "AadTenantId": tenant,
            "Name": "someone", "UPNSuffix": "contoso.com"
        }]
    })
    .to_string()
}

/// A deployment serving tenants A (the tokens' default) and B, with `secrets`.
async fn two_tenants(secrets: &str) -> (AppState, Arc<MemoryQueue>, JwksServer) {
    let jwks = jwks_server().await;
    let queue = Arc::new(MemoryQueue::default());
    let config = Config {
        allowed_tenants: vec![TENANT.to_owned(), TENANT_B.to_owned()],
        ..config(&jwks)
    };
    let state = app_with_secrets(config, secrets, queue.clone());
    (state, queue, jwks)
}

/// The caller's token, issued by tenant B.
fn tenant_b_token() -> String {
    let mut claims = entra_claims();
    claims["tid"] = TENANT_B.into();
    claims["iss"] = format!("https://sts.windows.net/{TENANT_B}/").into();
    signed(&claims)
}

#[tokio::test]
async fn a_caller_of_one_tenant_cannot_name_a_user_of_another() {
    let (logs, _guard) = Logs::capture();
    let (state, queue, _) = two_tenants(&entra_secrets()).await;
    // Tenant B's playbook names a user of tenant A: refused, visibly (the run fails), nothing
    // kept, and the security log names the caller and the claimed tenant.
    let body = alert_for("6e7b768e-07e2-4810-8459-485f84f8f204", TENANT);
    let (status, _, text) = call(state.clone(), with_bearer(&body, &tenant_b_token())).await;
    assert_eq!(status, 403, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["status"], "forbidden_tenant");
    assert!(
        answer["dropped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("is not one this caller may name"),
        "{text}"
    );
    assert!(queue.is_empty(), "nothing is kept");
    let logged = logs.text();
    assert!(
        logged.contains("\"security_event\":\"foreign_tenant\""),
        "{logged}"
    );
    assert!(logged.contains(PLAYBOOK_OID), "{logged}");
    assert!(logged.contains(TENANT), "{logged}");
    // Its own tenant's user is kept, and carries its binding to the queue.
    let body = alert_for("6e7b768e-07e2-4810-8459-485f84f8f204", TENANT_B);
    let (status, _, text) = call(state.clone(), with_bearer(&body, &tenant_b_token())).await;
    assert_eq!(status, 202, "{text}");
    let kept = risk_events(&queue);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].tenant_id, TENANT_B);
    let origin = kept[0]
        .origin
        .as_ref()
        .expect("the caller's binding travels");
    assert_eq!(origin.tenants, [TENANT_B]);
}

#[tokio::test]
async fn a_payload_mixing_tenants_keeps_only_the_callers_own() {
    let (state, queue, _) = two_tenants(&entra_secrets()).await;
    let body = serde_json::json!({
        "SystemAlertId": "alert-mixed",
        "Severity": "High",
        "Entities": [
            {"$id": "2", "Type": "account", "AadUserId": "6e7b768e-07e2-4810-8459-485f84f8f204", "AadTenantId": TENANT},
            {"$id": "3", "Type": "account", "AadUserId": "2a1f6c3e-5b4d-4e8f-9a0b-1c2d3e4f5a6b", "AadTenantId": TENANT_B}
        ]
    })
    .to_string();
    let (status, _, text) = call(state, with_bearer(&body, &tenant_b_token())).await;
    assert_eq!(status, 202, "{text}");
    let kept = risk_events(&queue);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].tenant_id, TENANT_B);
    assert!(text.contains("is not one this caller may name"), "{text}");
}

#[tokio::test]
async fn tenants_listed_for_a_caller_may_be_named_too() {
    let mut secrets: serde_json::Value = serde_json::from_str(&entra_secrets()).unwrap();
    secrets["sentinel_callers"]["tenants"] = serde_json::json!({ PLAYBOOK_OID: [TENANT] });
    let (state, queue, _) = two_tenants(&secrets.to_string()).await;
    let body = alert_for("6e7b768e-07e2-4810-8459-485f84f8f204", TENANT);
    let (status, _, text) = call(state, with_bearer(&body, &tenant_b_token())).await;
    assert_eq!(status, 202, "{text}");
    let kept = risk_events(&queue);
    assert_eq!(kept[0].tenant_id, TENANT);
    assert_eq!(
        kept[0].origin.as_ref().unwrap().tenants,
        [TENANT_B, TENANT],
        "its token's tenant, then the one listed for it"
    );
}

#[tokio::test]
async fn an_account_without_a_tenant_goes_to_the_callers_only_tenant() {
    let (state, queue, _) = two_tenants(&entra_secrets()).await;
    let body = serde_json::json!({
        "SystemAlertId": "alert-no-tenant",
        "Severity": "High",
        "Entities": [{"$id": "2", "Type": "account", "AadUserId": "6e7b768e-07e2-4810-8459-485f84f8f204"}]
    })
    .to_string();
    let (status, _, text) = call(state, with_bearer(&body, &tenant_b_token())).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(risk_events(&queue)[0].tenant_id, TENANT_B);
}
