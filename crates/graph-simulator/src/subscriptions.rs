//! Change-notification subscriptions ("Create subscription", "Update subscription",
//! "subscription: reauthorize", "Receive change notifications through webhooks"): the
//! validation handshake on both endpoints before a subscription is created, the maximum
//! expiration per resource (`users`: 41,760 minutes), `clientState` at most 128 characters.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::gate::gate;
use crate::odata::{error, lock, query_params};
use crate::{CLIENT_ID, GraphSimulator};

pub(crate) fn max_minutes(resource: &str) -> Option<i64> {
    // The legacy security/alerts resource is retired: only users is subscribable here.
    (resource == "users").then_some(41_760)
}

pub(crate) fn check_expiry(resource: &str, value: &Value) -> Result<(), Box<Response>> {
    let invalid =
        |message: &str| Box::new(error(StatusCode::BAD_REQUEST, "InvalidRequest", message));
    let max = max_minutes(resource)
        .ok_or_else(|| invalid(&format!("Resource '{resource}' is not supported.")))?;
    let at = value
        .as_str()
        .and_then(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()
        })
        .ok_or_else(|| invalid("expirationDateTime is invalid."))?;
    let now = time::OffsetDateTime::now_utc();
    if at <= now || at > now + time::Duration::minutes(max) {
        return Err(invalid(&format!(
            "Subscription expiration can only be {max} minutes in the future."
        )));
    }
    Ok(())
}

pub(crate) async fn handshake(url: &str) -> bool {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("validationToken", &token)
        .finish();
    let response = reqwest::Client::new()
        .post(format!("{url}?{query}"))
        .header("content-type", "text/plain; charset=utf-8")
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    match response {
        Ok(r) => {
            let ok = r.status() == 200
                && r.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/plain"));
            ok && r.text().await.ok().as_deref() == Some(token.as_str())
        }
        Err(_) => false,
    }
}

pub(crate) async fn list(
    State(s): State<GraphSimulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut dir = lock(&s.dir);
    if let Err(response) = gate(&mut dir, &method, &uri, &headers) {
        return *response;
    }
    let skip: usize = query_params(&uri)
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let size = dir.page_size.max(1);
    let page: Vec<Value> = dir
        .subscriptions
        .iter()
        .skip(skip)
        .take(size)
        .cloned()
        .collect();
    let mut out = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions",
        "value": page,
    });
    if skip + size < dir.subscriptions.len() {
        out["@odata.nextLink"] =
            format!("{}/v1.0/subscriptions?$skiptoken={}", s.base, skip + size).into();
    }
    axum::Json(out).into_response()
}

pub(crate) async fn create(
    State(s): State<GraphSimulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = {
        let mut dir = lock(&s.dir);
        if let Err(response) = gate(&mut dir, &method, &uri, &headers) {
            return *response;
        }
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Unable to read JSON request payload.",
                );
            }
        }
    };
    let resource = body["resource"].as_str().unwrap_or("");
    if let Err(response) = check_expiry(resource, &body["expirationDateTime"]) {
        return *response;
    }
    if body["clientState"].as_str().is_none_or(|c| c.len() > 128)
        || body["changeType"].as_str().is_none()
    {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "clientState and changeType are required; clientState at most 128 characters.",
        );
    }
    // Graph validates both endpoints before creating the subscription (no lock held).
    for field in ["notificationUrl", "lifecycleNotificationUrl"] {
        if let Some(url) = body[field].as_str()
            && !handshake(url).await
        {
            return error(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
            );
        }
    }
    let mut subscription = body.clone();
    subscription["id"] = uuid::Uuid::new_v4().to_string().into();
    subscription["applicationId"] = CLIENT_ID.into();
    subscription["creatorId"] = CLIENT_ID.into();
    lock(&s.dir).subscriptions.push(subscription.clone());
    (StatusCode::CREATED, axum::Json(subscription)).into_response()
}

pub(crate) async fn renew(
    State(s): State<GraphSimulator>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut dir = lock(&s.dir);
    if let Err(response) = gate(&mut dir, &method, &uri, &headers) {
        return *response;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(index) = dir
        .subscriptions
        .iter()
        .position(|x| x["id"] == id.as_str())
    else {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The object was not found.",
        );
    };
    let resource = dir.subscriptions[index]["resource"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    if let Err(response) = check_expiry(&resource, &body["expirationDateTime"]) {
        return *response;
    }
    dir.subscriptions[index]["expirationDateTime"] = body["expirationDateTime"].clone();
    axum::Json(dir.subscriptions[index].clone()).into_response()
}

pub(crate) async fn reauthorize(
    State(s): State<GraphSimulator>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut dir = lock(&s.dir);
    if let Err(response) = gate(&mut dir, &method, &uri, &headers) {
        return *response;
    }
    if !dir.subscriptions.iter().any(|x| x["id"] == id.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The object was not found.",
        );
    }
    dir.reauthorized.push(id);
    StatusCode::NO_CONTENT.into_response()
}
