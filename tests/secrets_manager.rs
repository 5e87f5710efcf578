//! Secrets from AWS Secrets Manager (moto server) through the real aws-sdk client and our
//! in-process cache (GetSecretValue only); temporary-password secrets and their expiry sweep.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_secretsmanager::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::error::BoxError;
use common::moto;
use risk_responder::graph::credential::GraphSecrets;
use risk_responder::ingress::secrets::IngressSecrets;
use risk_responder::support::secret::SecretString;
use risk_responder::vault::secrets_manager::EXPIRES_AT_TAG;
use risk_responder::vault::{PasswordVault, SecretsManagerPasswordVault};
use risk_responder::vault::{SecretStore, SecretsManagerStore};

async fn client() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&moto::sdk_config().await)
}

/// Records the `X-Amz-Target` (operation) of every request a client sends.
#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    fn list(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Intercept for Calls {
    fn name(&self) -> &'static str {
        "record-calls"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("")
            .to_owned();
        self.0.lock().unwrap().push(target);
        Ok(())
    }
}

/// A client on moto whose requests are recorded.
async fn recorded_client() -> (aws_sdk_secretsmanager::Client, Calls) {
    let calls = Calls::default();
    let config = aws_sdk_secretsmanager::config::Builder::from(&moto::sdk_config().await)
        .interceptor(calls.clone())
        .build();
    (aws_sdk_secretsmanager::Client::from_conf(config), calls)
}

const GET: &str = "secretsmanager.GetSecretValue";

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn secrets_load_from_secrets_manager_and_refresh_after_the_ttl() {
    let sm = client().await;
    let id = unique("risk-responder/app");
    sm.create_secret()
        .name(&id)
        .secret_string(r#"{"client_id":"app-1","client_states":["state-v1"]}"#)
        .send()
        .await
        .unwrap();
    let store =
        SecretsManagerStore::<IngressSecrets>::new(sm.clone(), &id, Duration::from_millis(300));
    let first = store.load().await.unwrap();
    assert_eq!(first.client_states[0].expose(), "state-v1");

    sm.put_secret_value()
        .secret_id(&id)
        .secret_string(r#"{"client_id":"app-1","client_states":["state-v2","state-v1"]}"#)
        .send()
        .await
        .unwrap();
    // Within the TTL the cached version is served (same parsed object).
    let cached = store.load().await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &cached));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let refreshed = store.load().await.unwrap();
    assert_eq!(refreshed.client_states.len(), 2);
    assert_eq!(refreshed.client_states[0].expose(), "state-v2");
}

#[tokio::test]
async fn missing_or_invalid_secret_is_a_clear_error() {
    let sm = client().await;
    let store = SecretsManagerStore::<IngressSecrets>::new(
        sm.clone(),
        unique("absent"),
        Duration::from_secs(60),
    );
    let err = store.load().await.unwrap_err().to_string();
    assert!(err.starts_with("secret store unavailable"), "{err}");
    assert!(err.contains("ResourceNotFoundException: "), "{err}");

    let id = unique("bad");
    sm.create_secret()
        .name(&id)
        .secret_string(r#"{"client_states":["hunter2"],"surprise":1}"#)
        .send()
        .await
        .unwrap();
    let store = SecretsManagerStore::<IngressSecrets>::new(sm, &id, Duration::from_secs(60));
    let err = store.load().await.unwrap_err().to_string();
    assert!(err.contains("surprise"), "{err}");
    assert!(!err.contains("hunter2"), "secret value in error: {err}");
}

#[tokio::test]
async fn unreachable_secrets_manager_fails_cleanly() {
    let config = common::moto::unreachable_sdk_config().await;
    let store = SecretsManagerStore::<IngressSecrets>::new(
        aws_sdk_secretsmanager::Client::new(&config),
        "any",
        Duration::from_secs(60),
    );
    assert!(store.load().await.is_err());
}

#[tokio::test]
async fn temporary_passwords_are_stored_tagged_and_swept_after_expiry() {
    let sm = client().await;
    let vault = SecretsManagerPasswordVault::new(sm.clone());
    let prefix = format!("{}/", unique("risk-responder/temporary-password"));
    let password = SecretString::new("Tmp-Pass-1234!abcd");
    let kept = vault
        .store(&format!("{prefix}keep"), &password, 24)
        .await
        .unwrap();
    let expired = vault
        .store(&format!("{prefix}expired"), &password, 0)
        .await
        .unwrap();

    let value = sm.get_secret_value().secret_id(&kept).send().await.unwrap();
    assert_eq!(value.secret_string(), Some("Tmp-Pass-1234!abcd"));
    let described = sm.describe_secret().secret_id(&kept).send().await.unwrap();
    assert!(
        described
            .tags()
            .iter()
            .any(|t| t.key() == Some(EXPIRES_AT_TAG))
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(vault.sweep_expired(&prefix).await.unwrap(), 1);
    assert!(
        sm.get_secret_value()
            .secret_id(&expired)
            .send()
            .await
            .is_err()
    );
    assert!(sm.get_secret_value().secret_id(&kept).send().await.is_ok());
}

#[tokio::test]
async fn concurrent_loads_past_the_ttl_share_one_get_secret_value() {
    let (sm, calls) = recorded_client().await;
    let id = unique("risk-responder/concurrent");
    sm.create_secret()
        .name(&id)
        .secret_string(r#"{"client_states":["state-v1"]}"#)
        .send()
        .await
        .unwrap();
    let store =
        SecretsManagerStore::<IngressSecrets>::new(sm.clone(), &id, Duration::from_millis(300));
    let first = futures_util::future::join_all((0..16).map(|_| store.load())).await;
    assert!(first.iter().all(|r| r.is_ok()));
    let reads = |calls: &Calls| calls.list().iter().filter(|c| *c == GET).count();
    assert_eq!(reads(&calls), 1, "cold start: one read for 16 requests");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = futures_util::future::join_all((0..16).map(|_| store.load())).await;
    assert!(second.iter().all(|r| r.is_ok()));
    assert_eq!(
        reads(&calls),
        2,
        "past the TTL: one refresh for 16 requests"
    );
    // The secret did not change: the same VersionId, the parsed form is reused.
    let (a, b) = (first[0].as_ref().unwrap(), second[0].as_ref().unwrap());
    assert!(Arc::ptr_eq(a, b));
    // Nothing but GetSecretValue was called by the store (CreateSecret was ours).
    let others: Vec<String> = calls
        .list()
        .into_iter()
        .filter(|c| c != GET && c != "secretsmanager.CreateSecret")
        .collect();
    assert!(others.is_empty(), "{others:?}");
}

#[tokio::test]
async fn a_failed_refresh_serves_the_last_good_value_within_the_grace_then_fails() {
    let (logs, _guard) = common::Logs::capture();
    let sm = client().await;
    let id = unique("risk-responder/grace");
    sm.create_secret()
        .name(&id)
        .secret_string(r#"{"client_states":["grace-state-value-v1"]}"#)
        .send()
        .await
        .unwrap();
    let ttl = Duration::from_millis(200);
    let grace = Duration::from_millis(1500);
    let store = SecretsManagerStore::<IngressSecrets>::with_grace(sm.clone(), &id, ttl, grace);
    let good = store.load().await.unwrap();
    let read_at = std::time::Instant::now();

    // The secret disappears (or access is revoked): every later read fails.
    sm.delete_secret()
        .secret_id(&id)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = store
        .load()
        .await
        .expect("last good value within the grace");
    assert!(Arc::ptr_eq(&good, &stale));
    // The refresh may still be running when the stale value is served: wait for its log line.
    let mut text = logs.text();
    for _ in 0..50 {
        if text.contains("serving the last good value") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = logs.text();
    }
    assert!(
        text.contains("ResourceNotFoundException: "),
        "AWS error code and message logged: {text}"
    );
    assert!(text.contains("serving the last good value"), "{text}");
    assert!(
        !text.contains("grace-state-value-v1"),
        "secret value logged"
    );

    // Past TTL + grace: the value is no longer served, and the error says why.
    let hard_limit = ttl + grace + Duration::from_millis(100);
    tokio::time::sleep(hard_limit.saturating_sub(read_at.elapsed())).await;
    let err = store.load().await.unwrap_err().to_string();
    assert!(err.contains("ResourceNotFoundException"), "{err}");
    assert!(!err.contains("grace-state-value-v1"), "{err}");
}

#[tokio::test]
async fn a_refresh_after_a_failure_picks_up_the_new_value() {
    let sm = client().await;
    let id = unique("risk-responder/recover");
    sm.create_secret()
        .name(&id)
        .secret_string(r#"{"client_states":["state-v1"]}"#)
        .send()
        .await
        .unwrap();
    let store =
        SecretsManagerStore::<IngressSecrets>::new(sm.clone(), &id, Duration::from_millis(200));
    store.load().await.unwrap();
    // An operator writes a document with a typo: the last good value stays in use.
    sm.put_secret_value()
        .secret_id(&id)
        .secret_string(r#"{"client_statez":["oops"]}"#)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = store.load().await.unwrap();
    assert_eq!(kept.client_states[0].expose(), "state-v1");
    // Fixed: the next refresh (after the failure back-off, at most the TTL) uses it.
    sm.put_secret_value()
        .secret_id(&id)
        .secret_string(r#"{"client_states":["state-v2"]}"#)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fixed = store.load().await.unwrap();
    assert_eq!(fixed.client_states[0].expose(), "state-v2");
}

#[tokio::test]
async fn the_webhook_works_from_the_ingress_secret_alone() {
    let sm = client().await;
    let id = unique("risk-responder/ingress");
    let key_pem = include_str!("vectors/graph-rich-notification/private-key.pem");
    let document = serde_json::json!({
        "client_states": ["ingress-only-state"],
        "webhook_hmac_keys": [common::WEBHOOK_KEY],
        "decryption_keys": { "custom-id-for-testing": key_pem },
    });
    sm.create_secret()
        .name(&id)
        .secret_string(document.to_string())
        .send()
        .await
        .unwrap();
    let jwks = common::jwks_server().await;
    let config = risk_responder::config::Config {
        jwks_url: jwks.url.clone(),
        // The audience of validation tokens is configuration, not a secret.
        graph_client_id: Some(common::APP_ID.to_owned()),
        // A Graph secret that does not exist: the webhook must never need it.
        graph_secrets: risk_responder::config::SecretsSource::SecretsManager(unique("absent")),
        ..Default::default()
    };
    let store: Arc<dyn SecretStore<IngressSecrets>> =
        Arc::new(SecretsManagerStore::new(sm, &id, Duration::from_secs(60)));
    let queue = Arc::new(risk_responder::queue::MemoryQueue::default());
    let intake = risk_responder::http::Intake::in_process(queue.clone()).unwrap();
    let state = common::with_fixture_subscriptions(risk_responder::http::AppState::new(
        config,
        store,
        intake,
        reqwest::Client::new(),
    ));

    let body = common::rich_batch_with("ingress-only-state", Some(vec![common::valid_token()]));
    let (status, _, text) = common::call(
        state.clone(),
        common::post_json("/graph/notifications", body),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let events = common::risk_events(&queue);
    assert_eq!(events.len(), 1, "validated and decrypted");
    assert!(events[0].resource_data.is_some());

    let sentinel = common::event_body("sentinel/alert-identity-protection.json");
    let headers = common::signed_headers(common::WEBHOOK_KEY, "msg_ingress_only", &sentinel);
    let (status, _, text) = common::call(state, common::post_sentinel(&sentinel, &headers)).await;
    assert_eq!(status, 202, "{text}");
}

#[tokio::test]
async fn a_graph_secret_holds_only_the_credential() {
    let sm = client().await;
    let id = unique("risk-responder/graph");
    sm.create_secret()
        .name(&id)
        .secret_string(r#"{"client_id":"app-1","client_secret":"graph-secret-value"}"#)
        .send()
        .await
        .unwrap();
    let store = SecretsManagerStore::<GraphSecrets>::new(sm.clone(), &id, Duration::from_secs(60));
    let graph = store.load().await.unwrap();
    assert_eq!(graph.client_id.as_deref(), Some("app-1"));
    assert!(graph.credential().is_some());
    // An ingress field in the Graph secret is not an error (one document may hold both)...
    let both = unique("risk-responder/both");
    sm.create_secret()
        .name(&both)
        .secret_string(r#"{"client_id":"app-1","client_secret":"x","client_states":["s"]}"#)
        .send()
        .await
        .unwrap();
    let store =
        SecretsManagerStore::<GraphSecrets>::new(sm.clone(), &both, Duration::from_secs(60));
    assert!(store.load().await.is_ok());
    // ...but a typo is.
    let typo = unique("risk-responder/typo");
    sm.create_secret()
        .name(&typo)
        .secret_string(r#"{"client_id":"app-1","clientsecret":"graph-secret-value"}"#)
        .send()
        .await
        .unwrap();
    let store = SecretsManagerStore::<GraphSecrets>::new(sm, &typo, Duration::from_secs(60));
    let err = store.load().await.unwrap_err().to_string();
    assert!(err.contains("`clientsecret`"), "{err}");
    assert!(!err.contains("graph-secret-value"), "{err}");
}
