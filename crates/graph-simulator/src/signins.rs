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

/// A `$filter` on signIns as the API documents it: clauses joined by `and` (any order, any case
/// of `and`, each optionally in parentheses) on the properties this stand-in filters:
/// `userId eq '{guid}'`, `status/errorCode eq {n}`, `createdDateTime` with `ge` or `le` and
/// an unquoted ISO 8601 time (the signIn resource documents `eq`, `le` and `ge` on it; `gt`
/// and `lt` are refused). Anything else is refused as Graph refuses an
/// unsupported query (400 `Request_UnsupportedQuery`, "Invalid filter clause").
#[derive(Default)]
struct SignInFilter {
    user: Option<String>,
    code: Option<i64>,
    /// `createdDateTime ge` and `le` (both inclusive).
    after: Option<time::OffsetDateTime>,
    before: Option<time::OffsetDateTime>,
}

impl SignInFilter {
    fn parse(filter: &str) -> Option<Self> {
        let mut parsed = SignInFilter::default();
        let lower = filter.to_ascii_lowercase();
        // Split on " and " whatever its case, keeping the original text of each clause.
        let mut clauses = Vec::new();
        let mut from = 0;
        while let Some(at) = lower[from..].find(" and ") {
            clauses.push(&filter[from..from + at]);
            from += at + 5;
        }
        clauses.push(&filter[from..]);
        for clause in clauses {
            let clause = clause.trim();
            let clause = clause
                .strip_prefix('(')
                .and_then(|c| c.strip_suffix(')'))
                .unwrap_or(clause)
                .trim();
            let mut words = clause.splitn(3, ' ');
            let (property, op, value) = (words.next()?, words.next()?, words.next()?.trim());
            let rfc3339 = |t: &str| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            };
            match (property, op.to_ascii_lowercase().as_str()) {
                ("userId", "eq") if parsed.user.is_none() => {
                    let user = value.strip_prefix('\'')?.strip_suffix('\'')?;
                    let guid =
                        user.len() == 36 && user.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
                    if !guid {
                        return None;
                    }
                    parsed.user = Some(user.to_owned());
                }
                ("status/errorCode", "eq") if parsed.code.is_none() => {
                    parsed.code = Some(value.parse().ok()?);
                }
                ("createdDateTime", "ge") if parsed.after.is_none() => {
                    parsed.after = Some(rfc3339(value)?);
                }
                ("createdDateTime", "le") if parsed.before.is_none() => {
                    parsed.before = Some(rfc3339(value)?);
                }
                _ => return None,
            }
        }
        Some(parsed)
    }

    fn matches(&self, sign_in: &Value) -> bool {
        let created = sign_in["createdDateTime"].as_str().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        self.user
            .as_deref()
            .is_none_or(|u| sign_in["userId"].as_str() == Some(u))
            && self
                .code
                .is_none_or(|code| sign_in["status"]["errorCode"].as_i64() == Some(code))
            && self.after.is_none_or(|t| created.is_some_and(|c| c >= t))
            && self.before.is_none_or(|t| created.is_some_and(|c| c <= t))
    }
}

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
    let Some(parsed) = SignInFilter::parse(filter) else {
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
        .filter(|si| dir.in_caller_tenant(si["userId"].as_str().unwrap_or("")))
        .filter(|si| parsed.matches(si))
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

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "6e7b768e-07e2-4810-8459-485f84f8f204";

    #[test]
    fn the_filter_follows_the_grammar_not_one_spelling() {
        let parsed = SignInFilter::parse(&format!(
            "createdDateTime ge 2026-12-01T00:00:00Z AND (status/errorCode eq 53011) and userId eq '{USER}' and createdDateTime le 2026-12-02T00:00:00Z"
        ))
        .expect("clauses in any order, any case of and, in parentheses");
        let sign_in = |at: &str, code: i64| json!({"userId": USER, "createdDateTime": at, "status": {"errorCode": code}});
        assert!(parsed.matches(&sign_in("2026-12-01T10:00:00Z", 53011)));
        assert!(
            parsed.matches(&sign_in("2026-12-01T00:00:00Z", 53011)),
            "ge takes its bound"
        );
        assert!(!parsed.matches(&sign_in("2026-11-30T23:59:59Z", 53011)));
        assert!(!parsed.matches(&sign_in("2026-12-01T10:00:00Z", 50126)));
        assert!(
            parsed.matches(&sign_in("2026-12-02T00:00:00Z", 53011)),
            "le takes its bound"
        );
        assert!(!parsed.matches(&sign_in("2026-12-02T00:00:01Z", 53011)));
        for refused in [
            "status/errorCode eq 53011 or userId eq 'x'",
            "appDisplayName eq 'Outlook'",
            "status/errorCode eq 53011 and status/errorCode eq 50126",
            "userId eq 'not-a-guid'",
            "createdDateTime ge yesterday",
            "createdDateTime gt 2026-12-01T00:00:00Z",
            "createdDateTime lt 2026-12-01T00:00:00Z",
        ] {
            assert!(SignInFilter::parse(refused).is_none(), "{refused}");
        }
    }
}
