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
    // The skiptoken is opaque to the client: here, the (time, id) of the last record served,
    // so a page continues after it however the collection changed meanwhile.
    let after: Option<(i128, String)> = match params.get("$skiptoken") {
        None => None,
        Some(token) => match token
            .split_once('.')
            .and_then(|(at, id)| Some((at.parse::<i128>().ok()?, id.to_owned())))
        {
            Some(cursor) => Some(cursor),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "The $skiptoken is not valid.",
                );
            }
        },
    };
    // Records changed together (a bulk dismissal) share their timestamp: parse each once.
    let mut parsed: HashMap<String, Option<i128>> = HashMap::new();
    let mut parse = |v: &Value| {
        let text = v["riskLastUpdatedDateTime"].as_str()?;
        if let Some(at) = parsed.get(text) {
            return *at;
        }
        let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(time::OffsetDateTime::unix_timestamp_nanos);
        parsed.insert(text.to_owned(), at);
        at
    };
    let since = since.map(|(t, inclusive)| (t.unix_timestamp_nanos(), inclusive));
    let mut matching: Vec<((i128, &str), &Value)> = dir
        .risky_users
        .iter()
        .filter(|(id, _)| dir.in_caller_tenant(id))
        .map(|(id, r)| (parse(r), id.as_str(), r))
        .filter(|(at, _, _)| match (since, at) {
            (None, _) => true,
            (Some((t, true)), Some(at)) => *at >= t,
            (Some((t, false)), Some(at)) => *at > t,
            (Some(_), None) => false,
        })
        .filter(|(_, _, r)| {
            states.as_ref().is_none_or(|wanted| {
                r["riskState"]
                    .as_str()
                    .is_some_and(|state| wanted.iter().any(|w| w == state))
            })
        })
        .map(|(at, id, r)| ((at.unwrap_or(i128::MIN), id), r))
        .filter(|(key, _)| {
            after
                .as_ref()
                .is_none_or(|(at, id)| *key > (*at, id.as_str()))
        })
        .collect();
    let page = top.min(dir.page_size.max(1));
    let more = matching.len() > page;
    if more {
        matching.select_nth_unstable_by(page, |a, b| a.0.cmp(&b.0));
        matching.truncate(page);
    }
    matching.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let items: Vec<Value> = matching
        .iter()
        .map(|(_, v)| select((*v).clone(), params.get("$select")))
        .collect();
    let mut out = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#identityProtection/riskyUsers",
        "value": items,
    });
    if let Some(((at, id), _)) = matching.last().filter(|_| more) {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            if k != "$skiptoken" {
                query.append_pair(k, v);
            }
        }
        query.append_pair("$skiptoken", &format!("{at}.{id}"));
        out["@odata.nextLink"] = format!(
            "{}/v1.0/identityProtection/riskyUsers?{}",
            s.base,
            query.finish()
        )
        .into();
    }
    axum::Json(out).into_response()
}
