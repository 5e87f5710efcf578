//! What every Graph request meets before its area answers: the call is recorded; a write that
//! says nothing of its length is answered 411 (Graph's front end, HTTP.sys); the bearer token
//! must be one the token endpoint issued ("InvalidAuthenticationToken"); the throttle limits
//! apply; then the injected faults.

use std::time::Instant;

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::Directory;
use crate::odata::error;
use crate::throttling::{release_mail, throttle};

/// Records the call, checks the bearer token, applies the limits and injected faults. Admitted:
/// the mailbox slot a sendMail holds until it completes (see [`release_mail`]).
pub(crate) fn gate(
    dir: &mut Directory,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<String>, Box<Response>> {
    let call = format!(
        "{method} {}{}",
        uri.path(),
        uri.query().map(|q| format!("?{q}")).unwrap_or_default()
    );
    dir.calls.push((call, Instant::now()));
    // Graph's front end refuses a write that says nothing of its length (HTTP.sys 411).
    let writes = matches!(*method, Method::POST | Method::PATCH | Method::PUT);
    if writes
        && !headers.contains_key("content-length")
        && !headers.contains_key("transfer-encoding")
    {
        return Err(Box::new(
            (
                StatusCode::LENGTH_REQUIRED,
                [("content-type", "text/html; charset=us-ascii")],
                "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n<HTML><HEAD><TITLE>Length Required</TITLE></HEAD><BODY><h2>Length Required</h2><hr><p>HTTP Error 411. The request must be chunked or have a content length.</p></BODY></HTML>\r\n",
            )
                .into_response(),
        ));
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        None => {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token is empty.",
            )));
        }
        Some(token) if !dir.issued.contains_key(token) => {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
            )));
        }
        _ => {}
    }
    let tenant = bearer
        .and_then(|t| dir.issued.get(t))
        .cloned()
        .unwrap_or_default();
    let app = bearer
        .and_then(|t| dir.token_apps.get(t))
        .cloned()
        .unwrap_or_default();
    dir.tenant_calls.push((tenant.clone(), Instant::now()));
    dir.caller_tenant = tenant.clone();
    let path = uri.path().strip_prefix("/v1.0").unwrap_or("");
    // The `$batch` envelope counts nothing: each member counts against its own limit.
    let mail = if path == "/$batch" {
        None
    } else {
        throttle(dir, &tenant, &app, method, path, uri.query().unwrap_or(""))?
    };
    // Past this point a refusal frees the mailbox slot at once.
    let refuse = |dir: &mut Directory, response: Response| {
        if let Some(key) = &mail {
            release_mail(dir, key);
        }
        Err(Box::new(response))
    };
    if dir.faults.throttle_next > 0 {
        dir.faults.throttle_next -= 1;
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests are being sent. Please retry after the time in the Retry-After header.",
        );
        response.headers_mut().insert(
            "retry-after",
            axum::http::HeaderValue::from(dir.faults.retry_after),
        );
        return refuse(dir, response);
    }
    let matches = |list: &[(Method, String)]| {
        list.iter()
            .any(|(m, prefix)| m == method && path.starts_with(prefix.as_str()))
    };
    if dir.faults.unavailable_next > 0 || matches(&dir.faults.unavailable_paths) {
        dir.faults.unavailable_next = dir.faults.unavailable_next.saturating_sub(1);
        return refuse(
            dir,
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "The service is temporarily unavailable.",
            ),
        );
    }
    let refused = dir
        .faults
        .refused_paths
        .iter()
        .find(|(m, prefix, _)| m == method && path.starts_with(prefix.as_str()))
        .map(|(_, _, status)| *status);
    if let Some(status) = refused {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return refuse(dir, error(status, "BadRequest", "The request was refused."));
    }
    if matches(&dir.faults.forbidden) {
        return refuse(
            dir,
            error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
        );
    }
    Ok(mail)
}
