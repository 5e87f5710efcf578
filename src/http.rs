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
use crate::ingress::graph::{BatchError, GraphIngress, handshake_token};
use crate::ingress::sentinel::{self, SentinelError};
use crate::ingress::signature::{self, MemoryReplayGuard, ReplayGuard};
use crate::ingress::validation_tokens::{JwksCache, TokenVerifier};
use crate::ledger::Ledger;
use crate::ledger::LedgerError;
use crate::ledger::sqlite::SqliteLedger;
use crate::queue::{WorkItem, WorkQueue};
use crate::secrets::{IngressSecrets, SecretStore};

/// Where accepted work goes: the ledger (audit of what was received), then the queue.
#[derive(Clone)]
pub struct Intake {
    pub ledger: Arc<dyn Ledger>,
    pub queue: Arc<dyn WorkQueue>,
    /// Remembers Standard Webhooks ids to refuse replays.
    pub replay_guard: Arc<dyn ReplayGuard>,
}

impl Intake {
    /// An intake over in-process adapters: an in-memory SQLite ledger, a memory queue and
    /// replay guard (local server, replay, tests).
    pub fn in_process(queue: Arc<dyn WorkQueue>) -> Result<Self, LedgerError> {
        Ok(Self {
            ledger: Arc::new(SqliteLedger::in_memory()?),
            queue,
            replay_guard: Arc::new(MemoryReplayGuard::default()),
        })
    }

    /// Records the events (concurrently) and sends all items; an error means nothing may be
    /// assumed kept.
    pub async fn keep(&self, items: &[WorkItem]) -> Result<(), String> {
        let accepts = items.iter().filter_map(|item| match item {
            WorkItem::Risk(event) => Some(self.ledger.accept(event)),
            WorkItem::Lifecycle(_) => None,
        });
        futures_util::future::try_join_all(accepts)
            .await
            .map_err(|e| e.to_string())?;
        if !items.is_empty() {
            self.queue.send(items).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Everything the handlers need, built once at cold start.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// The ingress secrets: the webhook never reads the Graph credential.
    pub secrets: Arc<dyn SecretStore<IngressSecrets>>,
    pub tokens: Option<Arc<TokenVerifier>>,
    pub intake: Intake,
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
        let tokens = config.validation_token_audience().map(|audience| {
            let jwks = JwksCache::new(config.jwks_url.clone(), http, config.jwks);
            Arc::new(TokenVerifier::new(jwks, audience, config.token_leeway))
        });
        Self {
            config: Arc::new(config),
            secrets,
            tokens,
            intake,
        }
    }
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/graph/notifications", post(graph_notifications))
        .route("/graph/lifecycle", post(graph_notifications))
        .route("/sentinel/alerts", post(sentinel_alerts))
        .route("/health", get(|| async { "ok" }))
        // Bodies are limited in `read_body`, with our own limit and a 413 that says so.
        .layer(DefaultBodyLimit::disable())
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
    intake.keep(items).await.map_err(|e| {
        tracing::error!(error = %e, items = items.len(), "could not keep accepted work");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "events could not be kept; retry",
        )
    })
}

async fn load_secrets(state: &AppState) -> Result<Arc<IngressSecrets>, Response> {
    state.secrets.load().await.map_err(|e| {
        tracing::error!(error = %e, "secrets unavailable");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "secrets unavailable; retry",
        )
    })
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
    let secrets = match state.secrets.load().await {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::error!(error = %e, "secrets unavailable");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "secrets unavailable; retry",
            );
        }
    };
    let ingress = GraphIngress {
        config: &state.config,
        secrets: &secrets,
        tokens: state.tokens.as_deref(),
        deadline,
    };
    let outcome = match ingress.process(&body).await {
        Ok(outcome) => outcome,
        Err(e @ BatchError::NotABatch(_)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(BatchError::KeysUnavailable(reason)) => {
            // Nothing is dropped: Graph delivers the batch again after a 5xx.
            tracing::error!(%reason, "graph batch not checked: signing keys unavailable");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "validation tokens could not be checked; retry",
            );
        }
    };
    for dropped in &outcome.dropped {
        tracing::warn!(
            index = dropped.index,
            subscription_id = dropped.subscription_id.as_deref().unwrap_or(""),
            tenant_id = dropped.tenant_id.as_deref().unwrap_or(""),
            reason = %dropped.reason,
            "graph notification dropped"
        );
    }
    let items: Vec<WorkItem> = outcome
        .events
        .iter()
        .cloned()
        .map(WorkItem::Risk)
        .chain(outcome.lifecycle.iter().cloned().map(WorkItem::Lifecycle))
        .collect();
    if let Err(response) = enqueue(&state.intake, &items).await {
        return response;
    }
    for event in &outcome.events {
        tracing::info!(event_id = %event.event_id, tenant_id = %event.tenant_id, source_id = %event.source_id, "risk event accepted");
    }
    for notice in &outcome.lifecycle {
        tracing::info!(tenant_id = %notice.tenant_id, subscription_id = %notice.subscription_id, kind = ?notice.kind, "lifecycle notification accepted");
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "accepted": outcome.events.len(),
            "lifecycle": outcome.lifecycle.len(),
            "dropped": outcome.dropped.len(),
        })),
    )
        .into_response()
}

/// `POST /sentinel/alerts`: a Standard Webhooks-signed Sentinel alert or incident.
pub async fn sentinel_alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(body, state.config.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let secrets = match load_secrets(&state).await {
        Ok(secrets) => secrets,
        Err(response) => return response,
    };
    let tolerance = state.config.webhook_tolerance;
    let now = time::OffsetDateTime::now_utc();
    let webhook =
        match signature::verify(&headers, &body, &secrets.webhook_hmac_keys, now, tolerance) {
            Ok(webhook) => webhook,
            Err(e) => {
                tracing::warn!(reason = %e, "sentinel delivery not authenticated");
                return error(StatusCode::UNAUTHORIZED, e.to_string());
            }
        };
    let outcome = match sentinel::parse(&body, &state.config) {
        Ok(outcome) => outcome,
        Err(e @ SentinelError::NotJson(_)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            tracing::warn!(webhook_id = %webhook.id, reason = %e, "sentinel payload refused");
            return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
    };
    // Remember the id for the whole window in which its timestamp would still be accepted.
    match state
        .intake
        .replay_guard
        .first_seen(&webhook.id, tolerance * 2)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(webhook_id = %webhook.id, "sentinel delivery replayed");
            return error(
                StatusCode::CONFLICT,
                signature::SignatureError::Replayed.to_string(),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "replay store unavailable");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "replay store unavailable; retry",
            );
        }
    }
    for reason in &outcome.dropped {
        tracing::warn!(webhook_id = %webhook.id, %reason, "sentinel account dropped");
    }
    let items: Vec<WorkItem> = outcome.events.iter().cloned().map(WorkItem::Risk).collect();
    if let Err(response) = enqueue(&state.intake, &items).await {
        // Not kept: let the sender's retry with the same webhook-id through.
        state.intake.replay_guard.forget(&webhook.id).await;
        return response;
    }
    for event in &outcome.events {
        tracing::info!(event_id = %event.event_id, tenant_id = %event.tenant_id, source_id = %event.source_id, "risk event accepted");
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "accepted": outcome.events.len(), "dropped": outcome.dropped.len() })),
    )
        .into_response()
}
