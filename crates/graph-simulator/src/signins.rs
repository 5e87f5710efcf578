//! Identity and access reports ("List signIns", "Get userRegistrationDetails"): sign-ins by
//! `$filter` on `status/errorCode`, `createdDateTime` and `userId` (no `$select`, which the API
//! does not support), newest first, `$top` at most 1,000; a user's authentication-method
//! registration, no OData query options.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::odata::{error, now_iso};
use crate::users::find_user;
use crate::{Directory, GraphSimulator};

/// The reports area's paths.
pub(crate) fn route(r: &crate::Request<'_>, dir: &mut Directory) -> Option<Response> {
    Some(match (r.method.clone(), r.segments.as_slice()) {
        (Method::GET, ["auditLogs", "signIns"]) => sign_ins(r.s, dir, &r.params),
        (
            Method::GET,
            [
                "reports",
                "authenticationMethods",
                "userRegistrationDetails",
                id,
            ],
        ) => registration_details(dir, id, &r.params),
        _ => return None,
    })
}

/// `$filter=[userId eq '{guid}' and ]status/errorCode eq {n} and createdDateTime ge {iso}[ and
/// createdDateTime le {iso}]`, exactly; anything else is refused as Graph refuses unsupported
/// queries.
pub(crate) fn sign_ins(
    s: &GraphSimulator,
    dir: &Directory,
    params: &HashMap<String, String>,
) -> Response {
    if params.contains_key("$select") {
        return error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            "$select is not supported on signIns: use $filter, $top and $skiptoken.",
        );
    }
    let Some(filter) = params.get("$filter") else {
        return error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            "This standin needs a $filter.",
        );
    };
    // `[userId eq '{guid}' and ]status/errorCode eq {n} and createdDateTime ge {iso}`
    let parsed = (|| {
        let (user, rest) = match filter.strip_prefix("userId eq '") {
            Some(rest) => {
                let (user, rest) = rest.split_once("' and ")?;
                let guid =
                    user.len() == 36 && user.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
                if !guid {
                    return None;
                }
                (Some(user.to_owned()), rest)
            }
            None => (None, filter.as_str()),
        };
        let rest = rest.strip_prefix("status/errorCode eq ")?;
        let (code, window) = rest.split_once(" and createdDateTime ge ")?;
        let code: i64 = code.parse().ok()?;
        let rfc3339 = |t: &str| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        };
        let (since, until) = match window.split_once(" and createdDateTime le ") {
            Some((since, until)) => (rfc3339(since)?, Some(rfc3339(until)?)),
            None => (rfc3339(window)?, None),
        };
        Some((user, code, since, until))
    })();
    let Some((user, code, since, until)) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            "Invalid filter clause",
        );
    };
    let top: usize = params
        .get("$top")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1000);
    if top == 0 || top > 1000 {
        return error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            "$top must be between 1 and 1000.",
        );
    }
    let page = top.min(dir.page_size.max(1));
    let skip: usize = params
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let matching: Vec<&Value> = dir
        .sign_ins
        .iter()
        .filter(|si| {
            user.as_deref()
                .is_none_or(|u| si["userId"].as_str() == Some(u))
                && si["status"]["errorCode"].as_i64() == Some(code)
                && si["createdDateTime"]
                    .as_str()
                    .and_then(|t| {
                        time::OffsetDateTime::parse(
                            t,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .is_some_and(|t| t >= since && until.is_none_or(|until| t <= until))
        })
        .collect();
    let mut matching = matching;
    // Newest first, as the API returns them.
    matching.sort_by(|a, b| {
        b["createdDateTime"]
            .as_str()
            .cmp(&a["createdDateTime"].as_str())
    });
    let items: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(page)
        .map(|v| (*v).clone())
        .collect();
    let mut out = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#auditLogs/signIns",
        "value": items,
    });
    if skip + page < matching.len() {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("$filter", filter)
            .append_pair("$top", &top.to_string())
            .append_pair("$skiptoken", &(skip + page).to_string())
            .finish();
        out["@odata.nextLink"] = format!("{}/v1.0/auditLogs/signIns?{query}", s.base).into();
    }
    axum::Json(out).into_response()
}

/// `GET /reports/authenticationMethods/userRegistrationDetails/{id}` (no OData query
/// parameters). The report covers every enabled user, registered or not (a user with nothing
/// registered has a record saying so); a disabled user or an unknown id is 404. The answer is
/// shaped as the documented example: the record under `value`.
pub(crate) fn registration_details(
    dir: &Directory,
    id: &str,
    params: &HashMap<String, String>,
) -> Response {
    if let Some(option) = params.keys().next() {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "Query option '{option}' is not allowed. This method does not support OData query parameters."
            ),
        );
    }
    let record = match (dir.registrations.get(id), find_user(dir, id)) {
        (Some(record), _) => record.clone(),
        (None, Some(user)) if user["accountEnabled"] != false => json!({
            "id": user["id"], "userPrincipalName": user["userPrincipalName"],
            "userDisplayName": user["displayName"], "userType": "member", "isAdmin": false,
            "isSsprRegistered": false, "isSsprEnabled": false, "isSsprCapable": false,
            "isMfaRegistered": false, "isMfaCapable": false, "isPasswordlessCapable": false,
            "methodsRegistered": [], "lastUpdatedDateTime": now_iso(),
        }),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "Request_ResourceNotFound",
                &format!(
                    "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
                ),
            );
        }
    };
    axum::Json(json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#reports/authenticationMethods/userRegistrationDetails/$entity",
        "value": record,
    }))
    .into_response()
}
