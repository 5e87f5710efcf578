//! Outlook mail ("user: sendMail"): a message needs recipients with addresses and a body;
//! answered 202. The per-mailbox limits are in [`crate::throttling`].

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::Directory;
use crate::odata::error;

/// The mail area's paths.
pub(crate) fn route(r: &crate::Request<'_>, dir: &mut Directory) -> Option<Response> {
    let (Method::POST, ["users", sender, "sendMail"]) = (r.method.clone(), r.segments.as_slice())
    else {
        return None;
    };
    let body = &r.body;
    let valid = body["message"]["toRecipients"]
        .as_array()
        .is_some_and(|to| {
            !to.is_empty() && to.iter().all(|x| x["emailAddress"]["address"].is_string())
        })
        && body["message"]["body"]["content"].is_string();
    if !valid {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid.",
        ));
    }
    let subject = body["message"]["subject"].as_str().unwrap_or_default();
    if dir
        .faults
        .unavailable_mail_subjects
        .iter()
        .any(|f| subject.contains(f.as_str()))
    {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ErrorServiceUnavailable",
            "The service is temporarily unavailable.",
        ));
    }
    dir.mails.push((sender.to_string(), body.clone()));
    Some(StatusCode::ACCEPTED.into_response())
}
