//! Shared test helpers: app state over in-memory adapters, a local JWKS server, token
//! signing with test keys, log capture, and Lambda event fixtures.
#![allow(dead_code)]

pub mod hooked_store;
pub mod moto;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use risk_responder::config::Config;
use risk_responder::http::AppState;
use risk_responder::ingress::secrets::IngressSecrets;
use risk_responder::queue::{MemoryQueue, QueueError, WorkItem, WorkQueue};
use risk_responder::vault::StaticSecretStore;

pub const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
pub const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_STATE: &str = "local-dev-client-state-change-me";
pub const GRAPH_PUBLISHER: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";
/// The Graph subscriptions of the saved events and test batches, all in [`TENANT`].
pub const FIXTURE_SUBSCRIPTIONS: &[&str] = &[
    "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
    "9a1c7b0e-5c8e-4f7e-8a52-6a1f0d9c3b21",
    "0b7b5a3c-1d0e-4b0a-9f43-2a6f1c3e8d11",
];

/// Remembers the fixture subscriptions as recorded in [`TENANT`] (what the renewer records when
/// it creates them), so the webhook keeps their notifications.
pub fn with_fixture_subscriptions(state: AppState) -> AppState {
    state.recorded_subscriptions.lock().unwrap().extend(
        FIXTURE_SUBSCRIPTIONS
            .iter()
            .map(|s| (TENANT.to_owned(), (*s).to_owned())),
    );
    state
}

/// Reads a saved Lambda HTTP event from `events/` as a lambda_http request.
pub fn lambda_event(path: &str) -> lambda_http::Request {
    let text = std::fs::read_to_string(format!("{}/events/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"));
    lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// A local JWKS endpoint (the Microsoft identity platform's key set stand-in) serving
/// `tests/fixtures/jwks.json`. Fault tests can slow it down, make it fail (500), change the
/// keys it serves, and count the fetches it answered.
pub struct JwksServer {
    pub url: String,
    pub hits: Arc<AtomicUsize>,
    /// Fetches whose answer was sent (a slow fetch counts here only once it ends).
    answered: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
    body: Arc<Mutex<String>>,
}

impl JwksServer {
    /// Fetches answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Fetches whose answer was sent.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Every answer waits this long first.
    pub fn slow(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answers 500 (Microsoft's endpoint having an outage) while `failing`.
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Serves another key set (a fixture file under tests/fixtures), e.g. after a rotation.
    pub fn serve(&self, fixture: &str) {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        *self.body.lock().unwrap() = text;
    }
}

pub async fn jwks_server() -> JwksServer {
    let hits = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let delay_ms = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let body = Arc::new(Mutex::new(include_str!("../fixtures/jwks.json").to_owned()));
    let (counter, done, delay, fail, keys) = (
        hits.clone(),
        answered.clone(),
        delay_ms.clone(),
        failing.clone(),
        body.clone(),
    );
    let app = axum::Router::new().route(
        "/common/discovery/v2.0/keys",
        get(move || {
            let (counter, done, delay, fail, keys) = (
                counter.clone(),
                done.clone(),
                delay.clone(),
                fail.clone(),
                keys.clone(),
            );
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let wait = delay.load(Ordering::SeqCst);
                if wait > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                done.fetch_add(1, Ordering::SeqCst);
                if fail.load(Ordering::SeqCst) {
                    return (
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        [("content-type", "application/json")],
                        r#"{"error":"temporarily_unavailable"}"#.to_owned(),
                    );
                }
                let text = keys.lock().unwrap().clone();
                (
                    http::StatusCode::OK,
                    [("content-type", "application/json")],
                    text,
                )
            }
        }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    // The server runs on its own thread and runtime, as a remote endpoint would.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap()
        })
    });
    JwksServer {
        url: format!("http://{addr}/common/discovery/v2.0/keys"),
        hits,
        answered,
        delay_ms,
        failing,
        body,
    }
}

/// Claims of a validation token; tests change fields to break one rule at a time.
pub fn token_claims() -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    serde_json::json!({
        "aud": APP_ID,
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "appid": GRAPH_PUBLISHER,
        "appidacr": "2",
        "tid": TENANT,
        "ver": "1.0",
    })
}

/// Signs `claims` with test key `key_file` (in tests/fixtures), announcing `kid`.
pub fn sign_token(claims: &serde_json::Value, key_file: &str, kid: &str) -> String {
    let pem = std::fs::read(format!(
        "{}/tests/fixtures/{key_file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A rich notification batch (Microsoft's SDK vector as `encryptedContent`) with `clientState`
/// and the given validation tokens.
pub fn rich_batch_with(client_state: &str, tokens: Option<Vec<String>>) -> String {
    let mut content: serde_json::Value = serde_json::from_str(include_str!(
        "../vectors/graph-rich-notification/encrypted-content.json"
    ))
    .unwrap();
    content["encryptionCertificateId"] = "custom-id-for-testing".into();
    content["encryptionCertificateThumbprint"] = "4B95353E086AD37196606ACF834A14532F03E6DB".into();
    let mut batch = serde_json::json!({
        "value": [{
            "id": "rich-1",
            "subscriptionId": "9a1c7b0e-5c8e-4f7e-8a52-6a1f0d9c3b21",
            "subscriptionExpirationDateTime": "2026-11-26T06:00:00.000Z",
            "clientState": client_state,
            "changeType": "updated",
            "resource": "Users/6e7b768e-07e2-4810-8459-485f84f8f204",
            "tenantId": TENANT,
            "resourceData": { "id": "6e7b768e-07e2-4810-8459-485f84f8f204" },
            "encryptedContent": content,
        }]
    });
    if let Some(tokens) = tokens {
        batch["validationTokens"] = tokens.into();
    }
    batch.to_string()
}

/// A rich notification batch with the development clientState.
pub fn rich_batch(tokens: Option<Vec<String>>) -> String {
    rich_batch_with(CLIENT_STATE, tokens)
}

/// Application ID URI of the Sentinel endpoint in tests (`RR_SENTINEL_AUDIENCE`).
pub const SENTINEL_AUDIENCE: &str = "api://risk-responder-test";
/// Object id of the playbook's managed identity on the allow-list.
pub const PLAYBOOK_OID: &str = "3f1b6b2e-94a4-4a53-8e36-0c8c5f8f2a11";
/// Application (client) id of that managed identity.
pub const PLAYBOOK_APPID: &str = "9d5c1e0a-7b2f-4c8e-a1d3-5e6f7a8b9c0d";

/// Claims of a v1 access token, as Entra ID issues it to a Logic App's system-assigned
/// managed identity for the resource `SENTINEL_AUDIENCE`.
pub fn entra_claims() -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    serde_json::json!({
        "aud": SENTINEL_AUDIENCE,
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "aio": "E2RgYJj+f3T4dWq6ZtW3zAA=",
        "appid": PLAYBOOK_APPID,
        "appidacr": "2",
        "idp": format!("https://sts.windows.net/{TENANT}/"),
        "idtyp": "app",
        "oid": PLAYBOOK_OID,
        "rh": "0.AAAA",
        "sub": PLAYBOOK_OID,
        "tid": TENANT,
        "uti": "kq1R1Yq0yUO3C8m7z2AAAA",
        "ver": "1.0",
        "xms_mirid": "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/soc/providers/Microsoft.Logic/workflows/RiskResponder-Notify",
    })
}

/// A bearer token of the allow-listed managed identity, signed by the JWKS key.
pub fn entra_token() -> String {
    sign_token(&entra_claims(), "jwt-test-key-1.pem", "test-kid-1")
}

/// Ingress secrets allowing the playbook's managed identity (and the development HMAC key).
pub fn entra_secrets() -> String {
    serde_json::json!({
        "webhook_hmac_keys": [WEBHOOK_KEY],
        "sentinel_callers": { "object_ids": [PLAYBOOK_OID] },
    })
    .to_string()
}

/// A valid token signed by the JWKS key.
pub fn valid_token() -> String {
    sign_token(&token_claims(), "jwt-test-key-1.pem", "test-kid-1")
}

/// A queue that refuses everything, as SQS does when unreachable.
pub struct FailingQueue;

#[async_trait]
impl WorkQueue for FailingQueue {
    async fn send(&self, _items: &[WorkItem]) -> Result<(), QueueError> {
        Err(QueueError::Unavailable("connection refused".into()))
    }
}

/// Application state over the embedded development secrets and an in-memory queue.
pub async fn app_with(config: Config, queue: Arc<dyn WorkQueue>) -> AppState {
    let secrets = Arc::new(StaticSecretStore::<IngressSecrets>::embedded_dev().unwrap());
    let intake = risk_responder::http::Intake::in_process(queue).unwrap();
    intake
        .ledger
        .record_subscriptions(TENANT, FIXTURE_SUBSCRIPTIONS)
        .await
        .unwrap();
    AppState::new(config, secrets, intake, reqwest::Client::new())
}

/// Application state over the given ingress secrets document and an in-memory queue.
pub fn app_with_secrets(config: Config, secrets_json: &str, queue: Arc<dyn WorkQueue>) -> AppState {
    use risk_responder::support::secret::SecretDocument;
    let secrets = IngressSecrets::from_json(secrets_json).unwrap();
    let intake = risk_responder::http::Intake::in_process(queue).unwrap();
    with_fixture_subscriptions(AppState::new(
        config,
        Arc::new(StaticSecretStore::new(secrets)),
        intake,
        reqwest::Client::new(),
    ))
}

pub async fn app(jwks_url: &str) -> (AppState, Arc<MemoryQueue>) {
    let queue = Arc::new(MemoryQueue::default());
    let config = Config {
        jwks_url: jwks_url.to_owned(),
        ..Config::default()
    };
    (app_with(config, queue.clone()).await, queue)
}

/// Captures every log line written while the guard lives (current thread).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        // tracing-core caches a callsite's interest from the *current thread's* subscriber
        // while at most one dispatcher is registered: a line first logged on a thread that
        // captures nothing would then stay disabled for a capturing thread. A second
        // dispatcher that lives for the whole process makes it ask every registered one.
        static KEEP: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        KEEP.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends a request through the router and returns status, content type and body text.
pub async fn call<B>(state: AppState, request: http::Request<B>) -> (u16, String, String)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = risk_responder::http::router(state)
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A JSON POST to `path`.
pub fn post_json(path: &str, body: impl Into<String>) -> http::Request<axum::body::Body> {
    http::Request::post(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.into()))
        .unwrap()
}

/// The webhook key of the embedded development secrets (the Standard Webhooks spec example).
pub const WEBHOOK_KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Reads a file under `events/`.
pub fn event_body(path: &str) -> String {
    std::fs::read_to_string(format!("{}/events/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// Standard Webhooks headers for `body`, signed now with `key`.
pub fn signed_headers(key: &str, id: &str, body: &str) -> Vec<(&'static str, String)> {
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let raw = risk_responder::ingress::signature::decode_key(key).unwrap();
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts.to_string()),
        (
            "webhook-signature",
            risk_responder::ingress::signature::sign(&raw, id, ts, body.as_bytes()),
        ),
    ]
}

/// A POST to `/sentinel/alerts` with the given headers.
pub fn post_sentinel(
    body: &str,
    headers: &[(&'static str, String)],
) -> http::Request<axum::body::Body> {
    let mut request = post_json("/sentinel/alerts", body.to_owned());
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    request
}

/// The Python interpreter of the test venv (made by `make test`), with `standardwebhooks`.
pub fn test_python() -> String {
    let python = std::env::var("RR_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} missing: run the tests with `make test`, which creates the venv"
    );
    python
}

/// The risk events a memory queue holds (lifecycle items are left out), draining it.
pub fn risk_events(queue: &MemoryQueue) -> Vec<risk_responder::event::RiskEvent> {
    queue
        .drain()
        .into_iter()
        .filter_map(|item| match item {
            WorkItem::Risk(event) => Some(event),
            _ => None,
        })
        .collect()
}
