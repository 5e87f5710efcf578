//! Identity Protection ("List riskyUsers", "Get riskyUser", "riskyUser: dismiss", "riskyUser:
//! confirmCompromised"): `$filter` on `riskLastUpdatedDateTime` or `riskState`, `$top` at most
//! 500, `@odata.nextLink` paging; feedback for 1 to 60 users a request, answered 204.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::odata::{error, now_iso, select};
use crate::{Directory, GraphSimulator};

/// The Identity Protection area's paths.
pub(crate) fn route(r: &crate::Request<'_>, dir: &mut Directory) -> Option<Response> {
    Some(match (r.method.clone(), r.segments.as_slice()) {
        (Method::GET, ["identityProtection", "riskyUsers"]) => risky_users(r.s, dir, &r.params),
        (Method::GET, ["identityProtection", "riskyUsers", id]) => match dir.risky_users.get(*id) {
            Some(record) => {
                let mut record = select(record.clone(), r.params.get("$select"));
                record["@odata.context"] = "https://graph.microsoft.com/v1.0/$metadata#identityProtection/riskyUsers/$entity".into();
                axum::Json(record).into_response()
            }
            None => error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                "The requested resource was not found.",
            ),
        },
        (
            Method::POST,
            [
                "identityProtection",
                "riskyUsers",
                action @ ("dismiss" | "confirmCompromised"),
            ],
        ) => feedback(dir, action, &r.body),
        _ => return None,
    })
}

/// `POST /identityProtection/riskyUsers/dismiss|confirmCompromised` with `userIds` (1 to 60).
fn feedback(dir: &mut Directory, action: &str, body: &Value) -> Response {
    let Some(ids) = body["userIds"].as_array() else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "userIds is required.",
        );
    };
    if ids.is_empty() || ids.len() > 60 {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The number of userIds must be between 1 and 60.",
        );
    }
    for id in ids.iter().filter_map(Value::as_str) {
        if let Some(r) = dir.risky_users.get_mut(id) {
            r["riskLastUpdatedDateTime"] = now_iso().into();
            if action == "dismiss" {
                r["riskState"] = "dismissed".into();
                r["riskLevel"] = "none".into();
                r["riskDetail"] = "adminDismissedAllRiskForUser".into();
            } else {
                r["riskState"] = "confirmedCompromised".into();
                r["riskLevel"] = "high".into();
                r["riskDetail"] = "adminConfirmedUserCompromised".into();
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /identityProtection/riskyUsers[?$filter=riskLastUpdatedDateTime ge|gt {iso}]`, with
/// `$select` and `$top` (at most 500), paged with `@odata.nextLink`.
pub(crate) fn risky_users(
    s: &GraphSimulator,
    dir: &Directory,
    params: &HashMap<String, String>,
) -> Response {
    // `riskLastUpdatedDateTime ge|gt {iso}`, or `riskState eq '{state}'` clauses joined by `or`.
    let mut since = None;
    let mut states: Option<Vec<String>> = None;
    if let Some(filter) = params.get("$filter") {
        let by_date = filter
            .strip_prefix("riskLastUpdatedDateTime ge ")
            .map(|t| (t, true))
            .or_else(|| {
                filter
                    .strip_prefix("riskLastUpdatedDateTime gt ")
                    .map(|t| (t, false))
            })
            .and_then(|(t, inclusive)| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .map(|t| (t, inclusive))
            });
        let by_state = || -> Option<Vec<String>> {
            filter
                .split(" or ")
                .map(|clause| {
                    let value = clause.trim().strip_prefix("riskState eq ")?;
                    let value = value
                        .strip_prefix("microsoft.graph.riskState")
                        .unwrap_or(value);
                    let state = value.strip_prefix('\'')?.strip_suffix('\'')?;
                    matches!(
                        state,
                        "none"
                            | "confirmedSafe"
                            | "remediated"
                            | "dismissed"
                            | "atRisk"
                            | "confirmedCompromised"
                            | "unknownFutureValue"
                    )
                    .then(|| state.to_owned())
                })
                .collect()
        };
        match (by_date, by_state()) {
            (Some(date), _) => since = Some(date),
            (None, Some(wanted)) => states = Some(wanted),
            (None, None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Invalid filter clause: Syntax error.",
                );
            }
        }
    }
    let top: usize = params
        .get("$top")
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    if top == 0 || top > 500 {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The maximum page size with $top is 500.",
        );
    }
    let skip: usize = params
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let parse = |v: &Value| {
        v["riskLastUpdatedDateTime"].as_str().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let mut matching: Vec<&Value> = dir
        .risky_users
        .values()
        .filter(|r| match (since, parse(r)) {
            (None, _) => true,
            (Some((t, true)), Some(at)) => at >= t,
            (Some((t, false)), Some(at)) => at > t,
            (Some(_), None) => false,
        })
        .filter(|r| {
            states.as_ref().is_none_or(|wanted| {
                r["riskState"]
                    .as_str()
                    .is_some_and(|state| wanted.iter().any(|w| w == state))
            })
        })
        .collect();
    matching.sort_by(|a, b| {
        parse(a)
            .cmp(&parse(b))
            .then(a["id"].as_str().cmp(&b["id"].as_str()))
    });
    let page = top.min(dir.page_size.max(1));
    let items: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(page)
        .map(|v| select((*v).clone(), params.get("$select")))
        .collect();
    let mut out = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#identityProtection/riskyUsers",
        "value": items,
    });
    if skip + page < matching.len() {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            if k != "$skiptoken" {
                query.append_pair(k, v);
            }
        }
        query.append_pair("$skiptoken", &(skip + page).to_string());
        out["@odata.nextLink"] = format!(
            "{}/v1.0/identityProtection/riskyUsers?{}",
            s.base,
            query.finish()
        )
        .into();
    }
    axum::Json(out).into_response()
}
