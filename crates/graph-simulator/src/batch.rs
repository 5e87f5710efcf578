//! JSON batching ("Combine multiple HTTP requests using JSON batching"): `POST /$batch` with at
//! most 20 requests, validated whole before any runs; members run at once, Outlook ones four at
//! a time ("Outlook service limits for JSON batching"), each counted against its own limit.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::gate::gate;
use crate::odata::{error, lock};
use crate::throttling::Budget;
use crate::{GraphSimulator, dispatch};

/// Outlook members of one `$batch` that Graph runs at a time, whatever their mailboxes (the rest
/// wait their turn, they are not refused): "Microsoft Graph sends the Outlook service up to four
/// individual requests from the batch at a time, regardless of the target mailboxes" (Microsoft
/// Graph service-specific throttling limits, *Outlook service limits for JSON batching*).
pub const OUTLOOK_BATCH_PARALLELISM: usize = 4;

/// Most requests in one `$batch` (Graph's limit).
pub const BATCH_MAX: usize = 20;

/// A refusal of a whole `$batch` (400, Graph's error envelope): nothing in it runs.
pub(crate) fn bad_batch(message: &str) -> Box<Response> {
    Box::new(error(StatusCode::BAD_REQUEST, "BadRequest", message))
}

/// Validates a `$batch` body as Graph does before running any member: 1 to 20 requests, each
/// with an `id` unique in the batch (ids are not case-sensitive), a method and a url; a write
/// (POST, PATCH, PUT) must carry a body and a `Content-Type` header, and so must any request
/// with a body. Graph refuses the whole batch otherwise.
pub(crate) fn check_batch(body: &Bytes) -> Result<Vec<Value>, Box<Response>> {
    let parsed: Value =
        serde_json::from_slice(body).map_err(|_| bad_batch("Invalid batch payload format."))?;
    let requests = parsed["requests"]
        .as_array()
        .cloned()
        .ok_or_else(|| bad_batch("Invalid batch payload format."))?;
    if requests.is_empty() || requests.len() > BATCH_MAX {
        return Err(bad_batch(
            "Invalid batch payload format: the number of requests must be between 1 and 20.",
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for request in &requests {
        let Some(id) = request["id"].as_str().filter(|id| !id.trim().is_empty()) else {
            return Err(bad_batch(
                "Invalid batch payload format: every request needs an id.",
            ));
        };
        if !ids.insert(id.to_ascii_lowercase()) {
            return Err(bad_batch(&format!(
                "Invalid batch payload format: request id '{id}' is not unique in the batch."
            )));
        }
        let method = request["method"].as_str().unwrap_or_default();
        if request["url"].as_str().is_none_or(str::is_empty)
            || Method::from_bytes(method.as_bytes()).is_err()
        {
            return Err(bad_batch(&format!(
                "Invalid batch payload format: request id '{id}' needs a method and a url."
            )));
        }
        let write = matches!(
            method.to_ascii_uppercase().as_str(),
            "POST" | "PATCH" | "PUT"
        );
        let has_body = !matches!(request.get("body"), None | Some(Value::Null));
        let content_type = request["headers"].as_object().is_some_and(|h| {
            h.iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.is_string())
        });
        if (write || has_body) && !(has_body && content_type) {
            return Err(bad_batch(&format!(
                "Write request id : {id} does not contain Content-Type header or body."
            )));
        }
    }
    Ok(requests)
}

/// `POST /$batch`: JSON batching. The batch is validated first (see [`check_batch`]); then its
/// members run at once, as Graph runs them, each counted against its own limit, and the batch
/// is answered when the last one is done. Outlook members run at most
/// [`OUTLOOK_BATCH_PARALLELISM`] at a time, the others queued behind them; each holds its
/// mailbox's concurrency slot while it runs, so a batch alone never exceeds a mailbox's four,
/// while other requests and batches in flight to the same mailbox (from any worker) count too:
/// past four, a member is answered 429 as Outlook does. `dependsOn` is not modelled (the
/// product does not use it).
pub(crate) async fn batch(
    s: &GraphSimulator,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let requests = {
        let mut dir = lock(&s.dir);
        dir.http_requests += 1;
        if let Err(response) = gate(&mut dir, method, uri, headers) {
            return *response;
        }
        match check_batch(body) {
            Ok(requests) => requests,
            Err(response) => return *response,
        }
    };
    let authorization = headers.get("authorization").cloned();
    {
        let mut dir = lock(&s.dir);
        dir.batches.push(
            requests
                .iter()
                .map(|r| {
                    format!(
                        "{} {}",
                        r["method"]
                            .as_str()
                            .unwrap_or_default()
                            .to_ascii_uppercase(),
                        r["url"].as_str().unwrap_or_default()
                    )
                })
                .collect(),
        );
    }
    let outlook = Arc::new(tokio::sync::Semaphore::new(OUTLOOK_BATCH_PARALLELISM));
    let members = requests
        .into_iter()
        .map(|request| batch_member(s, request, authorization.clone(), outlook.clone()));
    let mut responses = futures_util::future::join_all(members).await;
    // "Responses in a batch might not be in the same order as the requests; use the id to
    // match them" (JSON batching): here always in reverse, so a caller that relies on the
    // order fails every time, not now and then.
    responses.reverse();
    axum::Json(json!({ "responses": responses })).into_response()
}

/// Runs one `$batch` member: waits for its turn if it is an Outlook request, is admitted or
/// refused, takes its time, and gives its answer as the batch carries it.
pub(crate) async fn batch_member(
    s: &GraphSimulator,
    request: Value,
    authorization: Option<axum::http::HeaderValue>,
    outlook: Arc<tokio::sync::Semaphore>,
) -> Value {
    let id = request["id"].as_str().unwrap_or_default().to_owned();
    let method = Method::from_bytes(
        request["method"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_uppercase()
            .as_bytes(),
    )
    .unwrap_or(Method::GET);
    let url = request["url"].as_str().unwrap_or_default();
    let Ok(member_uri) = format!(
        "/v1.0{}",
        if url.starts_with('/') {
            url.to_owned()
        } else {
            format!("/{url}")
        }
    )
    .parse::<Uri>() else {
        return json!({"id": id, "status": 400, "body": {"error": {"code": "BadRequest", "message": "Invalid url."}}});
    };
    let body = match request.get("body") {
        Some(Value::Null) | None => Bytes::new(),
        Some(b) => Bytes::from(b.to_string()),
    };
    let mut member_headers = HeaderMap::new();
    // The member's own headers (e.g. `ConsistencyLevel`); not its authorization or length.
    for (name, value) in request["headers"].as_object().into_iter().flatten() {
        if let (Ok(name), Some(Ok(value))) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            value.as_str().map(axum::http::HeaderValue::from_str),
        ) {
            member_headers.insert(name, value);
        }
    }
    if let Some(auth) = authorization {
        member_headers.insert("authorization", auth);
    }
    // Validated above: a write member has a body, whose length the JSON gives.
    member_headers.insert("content-length", axum::http::HeaderValue::from(body.len()));
    let path = member_uri
        .path()
        .strip_prefix("/v1.0")
        .unwrap_or("")
        .to_owned();
    if crate::stalled(s, &method, &path) {
        return std::future::pending().await;
    }
    // Graph hands Outlook a batch's requests four at a time: the rest wait, they are not refused.
    let _turn = if Budget::of(&method, &path) == Budget::Mail {
        outlook.acquire_owned().await.ok()
    } else {
        None
    };
    let (response, mail, latency) = {
        let mut dir = lock(&s.dir);
        let (response, mail) = dispatch(s, &mut dir, &method, &member_uri, &member_headers, &body);
        (response, mail, dir.latency.of(&method, &path))
    };
    let slot = crate::throttling::MailSlot::new(s.dir.clone(), mail);
    let _answering = crate::throttling::InFlight::new(s.dir.clone());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    drop(slot);
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut member = json!({"id": id, "status": parts.status.as_u16()});
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        if let Ok(v) = value.to_str() {
            headers.insert(name.as_str().to_owned(), Value::String(v.to_owned()));
        }
    }
    member["headers"] = Value::Object(headers);
    if !bytes.is_empty() {
        member["body"] = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    }
    member
}
