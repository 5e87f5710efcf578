//! The HTTP surface: one axum router served by lambda_http in Lambda and by a local server.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::config::Config;
use crate::ingress::entra::EntraVerifier;
use crate::ingress::graph::{BatchError, GraphIngress, handshake_token};
use crate::ingress::secrets::IngressSecrets;
use crate::ingress::sentinel::{self, SentinelError};
use crate::ingress::sentinel_auth::{AuthError, SentinelAuth};
use crate::ingress::validation_tokens::{JwksCache, TokenVerifier};
use crate::queue::WorkItem;
pub use crate::respond::intake::{Intake, KeepError};
use crate::vault::SecretStore;

/// Everything the handlers need, built once at cold start.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// The ingress secrets: the webhook never reads the Graph credential.
    pub secrets: Arc<dyn SecretStore<IngressSecrets>>,
    pub tokens: Option<Arc<TokenVerifier>>,
    /// Verifier of Entra ID tokens on `/sentinel/alerts`, when an audience is configured; it
    /// shares the signing-key cache with `tokens`.
    pub entra: Option<Arc<EntraVerifier>>,
    pub intake: Intake,
    /// Requests in flight, which the local worker's connections yield to.
    pub activity: IntakeActivity,
    /// (tenant, subscription) pairs read from the ledger as recorded: a subscription's tenant
    /// never changes, so a pair found once is not read again.
    pub recorded_subscriptions: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
}

/// How many requests the server is answering right now. The local server's background work
/// (its worker and the ledger upkeep, see [`SqliteStore::yielding_while`]) waits while this is
/// above zero, so it takes neither the SQLite write lock nor the CPU from an answer to Graph.
#[derive(Clone, Default)]
pub struct IntakeActivity(Arc<std::sync::atomic::AtomicUsize>);

impl IntakeActivity {
    /// Whether a request is being answered.
    pub fn busy(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// The probe a yielding SQLite connection asks.
    pub fn probe(&self) -> crate::ledger::sqlite::BusyProbe {
        let activity = self.clone();
        Arc::new(move || activity.busy())
    }

    fn enter(&self) -> ActivityGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActivityGuard(self.clone())
    }
}

/// Counts one request for as long as it is being answered (dropped with the future too, when
/// the client goes away).
struct ActivityGuard(IntakeActivity);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn count_activity(
    State(activity): State<IntakeActivity>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let _guard = activity.enter();
    next.run(request).await
}

impl AppState {
    /// Builds the state; the validation-token audience is the Graph application id
    /// (`RR_GRAPH_CLIENT_ID`, or the local secrets document's `client_id`). Nothing is fetched:
    /// secrets and signing keys are read when the first request needs them.
    pub fn new(
        config: Config,
        secrets: Arc<dyn SecretStore<IngressSecrets>>,
        intake: Intake,
        http: reqwest::Client,
    ) -> Self {
        let jwks = JwksCache::new(config.jwks_url.clone(), http, config.jwks);
        let tokens = crate::vault::local::validation_token_audience(&config).map(|audience| {
            Arc::new(TokenVerifier::new(
                jwks.clone(),
                audience,
                config.token_leeway,
            ))
        });
        let entra = (!config.sentinel_audiences.is_empty()).then(|| {
            Arc::new(EntraVerifier::new(
                jwks,
                config.sentinel_audiences.clone(),
                config.token_leeway,
            ))
        });
        Self {
            config: Arc::new(config),
            secrets,
            tokens,
            entra,
            intake,
            activity: IntakeActivity::default(),
            recorded_subscriptions: Arc::default(),
        }
    }
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    let activity = state.activity.clone();
    Router::new()
        .route("/graph/notifications", post(graph_notifications))
        .route("/graph/lifecycle", post(graph_notifications))
        .route("/sentinel/alerts", post(sentinel_alerts))
        .route("/health", get(|| async { "ok" }))
        // Bodies are limited in `read_body`, with our own limit and a 413 that says so.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            activity,
            count_activity,
        ))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than {limit} bytes"),
        )),
        Err(_) => Err(error(StatusCode::BAD_REQUEST, "body could not be read")),
    }
}

/// Keeps items (ledger + queue); 503 if they could not be kept, so the sender retries.
pub async fn enqueue(intake: &Intake, items: &[WorkItem]) -> Result<(), Response> {
    intake.keep(items).await.map_err(|e| match e {
        KeepError::Full { .. } => {
            tracing::warn!(error = %e, items = items.len(), "work refused: local queue full");
            busy()
        }
        e => {
            tracing::error!(error = %e, items = items.len(), "could not keep accepted work");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "events could not be kept; retry",
            )
        }
    })
}

/// 503 for back-pressure: the sender should deliver again later.
fn busy() -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "busy; retry");
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// The ingress secrets, read within the request's budget: a cold start whose secrets read is
/// slow answers 503 in time (the read goes on in the background, so the retry finds them).
async fn load_secrets(
    state: &AppState,
    deadline: tokio::time::Instant,
) -> Result<Arc<IngressSecrets>, Response> {
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "secrets unavailable; retry",
        )
    };
    match tokio::time::timeout_at(deadline, state.secrets.load()).await {
        Ok(Ok(secrets)) => Ok(secrets),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "secrets unavailable");
            Err(unavailable())
        }
        Err(_) => {
            tracing::error!("secrets not read within the answer budget");
            Err(unavailable())
        }
    }
}

/// `POST /graph/notifications` and `/graph/lifecycle`: handshake or notification batch.
pub async fn graph_notifications(State(state): State<AppState>, uri: Uri, body: Body) -> Response {
    let deadline = tokio::time::Instant::now() + state.config.jwks.wait;
    if let Some(token) = handshake_token(uri.query()) {
        return match token {
            Ok(token) => (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    ),
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                ],
                token,
            )
                .into_response(),
            Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        };
    }
    let body = match read_body(body, state.config.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let secrets = match load_secrets(&state, deadline).await {
        Ok(secrets) => secrets,
        Err(response) => return response,
    };
    let ingress = GraphIngress {
        config: &state.config,
        secrets: &secrets,
        tokens: state.tokens.as_deref(),
        deadline,
    };
    let outcome = match ingress.process(&body).await {
        Ok(outcome) => outcome,
        Err(e @ BatchError::NotABatch(_)) => {
            tracing::warn!(
                bytes = body.len(),
                "graph request refused: not a notification batch"
            );
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        Err(e @ BatchError::TooMany { count, cap }) => {
            tracing::warn!(
                notifications = count,
                cap,
                bytes = body.len(),
                "graph request refused: too many notifications in one batch"
            );
            return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
        }
        Err(BatchError::KeysUnavailable(reason)) => {
            // Nothing is dropped: Graph delivers the batch again after a 5xx.
            tracing::error!(%reason, "graph batch not checked: signing keys unavailable");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "validation tokens could not be checked; retry",
            );
        }
        Err(BatchError::Busy) => {
            tracing::warn!(
                bytes = body.len(),
                "graph batch not checked: no decryption capacity within the answer budget"
            );
            return busy();
        }
    };
    // A notification is kept only for a subscription this deployment recorded in the tenant it
    // names: a sender holding our clientState cannot speak for another tenant.
    let mut outcome = outcome;
    match recorded_subscriptions(&state, &outcome.subscriptions()).await {
        Ok(recorded) => outcome.keep_recorded(&recorded),
        Err(e) => {
            tracing::error!(error = %e, "subscriptions could not be checked: batch not kept");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "events could not be kept; retry",
            );
        }
    }
    let items: Vec<WorkItem> = outcome
        .events
        .iter()
        .cloned()
        .map(WorkItem::Risk)
        .chain(outcome.lifecycle.iter().cloned().map(WorkItem::Lifecycle))
        .collect();
    let kept = match tokio::time::timeout_at(deadline, enqueue(&state.intake, &items)).await {
        Ok(kept) => kept,
        Err(_) => {
            // What was written is idempotent: Graph's redelivery finds it and adds nothing.
            tracing::error!(
                items = items.len(),
                "accepted work not kept within the answer budget"
            );
            Err(busy())
        }
    };
    log_batch(&outcome, kept.is_ok());
    if let Err(response) = kept {
        return response;
    }
    // No counts, no reasons: what failed a check is in the log, never in the answer, so a
    // sender cannot use the answer to probe (clientState, tenants, tokens).
    StatusCode::ACCEPTED.into_response()
}

/// Of `pairs` (tenant, subscription), those recorded as created in that tenant: from the
/// in-process memory of pairs found before, else one ledger read for the rest.
async fn recorded_subscriptions(
    state: &AppState,
    pairs: &[(String, String)],
) -> Result<std::collections::HashSet<(String, String)>, crate::ledger::LedgerError> {
    let (mut found, unknown): (std::collections::HashSet<_>, Vec<_>) = {
        let seen = state
            .recorded_subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let known = pairs
            .iter()
            .filter(|p| seen.contains(*p))
            .cloned()
            .collect();
        let unknown = pairs
            .iter()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        (known, unknown)
    };
    if !unknown.is_empty() {
        let read = state.intake.ledger.recorded_subscriptions(&unknown).await?;
        state
            .recorded_subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(read.iter().cloned());
        found.extend(read);
    }
    Ok(found)
}

/// One log line per batch, however many notifications it holds: counts, dropped notifications
/// counted by reason with a short sample, and the ids of what was kept.
fn log_batch(outcome: &crate::ingress::graph::BatchOutcome, kept: bool) {
    let event_ids: Vec<&str> = outcome.events.iter().map(|e| e.event_id.as_str()).collect();
    let lifecycle: Vec<serde_json::Value> = outcome
        .lifecycle
        .iter()
        .map(|n| json!({ "tenant_id": n.tenant_id, "subscription_id": n.subscription_id, "kind": n.kind }))
        .collect();
    let notifications = outcome.events.len() + outcome.lifecycle.len() + outcome.dropped.len();
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                notifications,
                accepted = outcome.events.len(),
                lifecycle = outcome.lifecycle.len(),
                dropped = outcome.dropped.len(),
                kept,
                drop_reasons = %json!(outcome.drop_counts()),
                drop_sample = %json!(outcome.drop_sample()),
                event_ids = %json!(event_ids),
                lifecycle_notices = %json!(lifecycle),
                "graph batch"
            )
        };
    }
    if outcome.dropped.is_empty() && kept {
        line!(info);
    } else {
        line!(warn);
    }
}

/// `POST /sentinel/alerts`: a Sentinel alert or incident from a playbook (Entra ID token),
/// a signing SOAR (Standard Webhooks) or an API key.
pub async fn sentinel_alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let deadline = tokio::time::Instant::now() + state.config.jwks.wait;
    // A limit of its own: incident trigger bodies (every alert and entity of the incident) can
    // be large, and Logic Apps does not retry a 413.
    let body = match read_body(body, state.config.sentinel_max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let secrets = match load_secrets(&state, deadline).await {
        Ok(secrets) => secrets,
        Err(response) => return response,
    };
    let tolerance = state.config.webhook_tolerance;
    let now = time::OffsetDateTime::now_utc();
    let auth = SentinelAuth {
        config: &state.config,
        secrets: &secrets,
        entra: state.entra.as_deref(),
    };
    let webhook = match auth
        .authenticate(&headers, &body, now, tolerance, deadline)
        .await
    {
        Ok(authenticated) => authenticated,
        Err(e @ AuthError::Unavailable(_)) => {
            tracing::error!(reason = %e.message(), "sentinel delivery not checked: signing keys unavailable");
            return error(StatusCode::SERVICE_UNAVAILABLE, e.message());
        }
        Err(e) => {
            tracing::warn!(reason = %e.message(), "sentinel delivery not authenticated");
            let mut response = error(StatusCode::UNAUTHORIZED, e.message());
            if state.entra.is_some() {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return response;
        }
    };
    let delivery = &webhook;
    let outcome = match sentinel::parse(&body, &state.config, Some(&delivery.origin)) {
        Ok(outcome) => outcome,
        Err(e @ SentinelError::NotJson(_)) => {
            log_delivery(delivery, "not_json", &[], &[]);
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        Err(SentinelError::NoAccount) => sentinel::SentinelOutcome::default(),
        Err(e) => {
            tracing::warn!(delivery = %delivery.delivery_id, reason = %e, "sentinel payload refused");
            return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
    };
    if !outcome.foreign.is_empty() {
        // A caller naming a tenant its credential is not bound to: a security event, whatever
        // else the payload holds.
        let claimed: Vec<String> = outcome
            .foreign
            .iter()
            .map(|(account, tenant)| format!("{account} in {tenant}"))
            .collect();
        tracing::warn!(
            security_event = "foreign_tenant",
            method = ?delivery.method,
            caller = %delivery.caller,
            bound_to = %json!(delivery.origin.tenants),
            claimed = %json!(claimed),
            "sentinel delivery named accounts of a tenant its caller may not name: refused"
        );
    }
    // Every account of another tenant than the caller's: the run must fail visibly (Logic
    // Apps marks it failed on a 4xx and does not retry it).
    if outcome.events.is_empty() && !outcome.foreign.is_empty() {
        log_delivery(delivery, "forbidden_tenant", &[], &outcome.dropped);
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({
                "status": "forbidden_tenant",
                "detail": "every account in this payload belongs to a tenant this caller's credential is not bound to; nothing was kept",
                "signals": [],
                "dropped": outcome.dropped,
            })),
        )
            .into_response();
    }
    // Logic Apps marks a run failed on any 4xx and retries only 408, 429 and 5xx: a payload
    // with nothing to act on is a success that says so, not an error to retry or alarm on.
    if outcome.events.is_empty() {
        log_delivery(delivery, "no_usable_account", &[], &outcome.dropped);
        return (
            StatusCode::OK,
            axum::Json(json!({
                "status": "no_usable_account",
                "detail": "no account in this payload names an Entra user of an allowed tenant; nothing was done",
                "signals": [],
                "dropped": outcome.dropped,
            })),
        )
            .into_response();
    }
    // Remember the delivery for as long as its credential would be accepted again.
    match state
        .intake
        .replay_guard
        .first_seen(&delivery.delivery_id, delivery.remember_for)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            // Already kept (a retry after a lost answer, or a replay): a success that says so.
            log_delivery(delivery, "duplicate", &outcome.events, &outcome.dropped);
            return (
                StatusCode::OK,
                axum::Json(json!({
                    "status": "duplicate",
                    "detail": "this delivery was already received and kept; it was not kept again",
                    "signals": signal_views(&outcome.events),
                    "dropped": outcome.dropped,
                })),
            )
                .into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "replay store unavailable");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "replay store unavailable; retry",
            );
        }
    }
    let items: Vec<WorkItem> = outcome.events.iter().cloned().map(WorkItem::Risk).collect();
    if let Err(response) = enqueue(&state.intake, &items).await {
        // Not kept: let the sender's retry of the same delivery through.
        state
            .intake
            .replay_guard
            .forget(&delivery.delivery_id)
            .await;
        log_delivery(delivery, "not_kept", &outcome.events, &outcome.dropped);
        return response;
    }
    log_delivery(delivery, "accepted", &outcome.events, &outcome.dropped);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "status": "accepted",
            "signals": signal_views(&outcome.events),
            "dropped": outcome.dropped,
        })),
    )
        .into_response()
}

/// Per account kept, the signal id (`risk-responder cases` finds its case) and the account.
fn signal_views(events: &[crate::event::RiskEvent]) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|e| {
            let (id, upn) = match &e.subject {
                crate::event::Subject::User { id, upn } => (id.clone(), upn.clone()),
                crate::event::Subject::SecurityAlert { .. } => (None, None),
            };
            json!({
                "signal_id": e.event_id,
                "tenant_id": e.tenant_id,
                "aad_user_id": id,
                "user_principal_name": upn,
            })
        })
        .collect()
}

/// One log line per Sentinel delivery: who sent it, what became of it, the signal ids.
fn log_delivery(
    delivery: &crate::ingress::sentinel_auth::Authenticated,
    status: &str,
    events: &[crate::event::RiskEvent],
    dropped: &[sentinel::DroppedAccount],
) {
    let signal_ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let dropped: Vec<String> = dropped.iter().take(10).map(ToString::to_string).collect();
    tracing::info!(
        method = ?delivery.method,
        caller = %delivery.caller,
        delivery = %delivery.delivery_id,
        status,
        accepted = signal_ids.len(),
        signal_ids = %json!(signal_ids),
        dropped = %json!(dropped),
        "sentinel delivery"
    );
}
