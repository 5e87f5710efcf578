//! OData conventions every area shares, as Microsoft Graph documents them: the error envelope
//! ("Microsoft Graph error responses and resource types"), `$select`, `$filter` value lists,
//! `$top` and `@odata.nextLink` paging ("Paging Microsoft Graph data in your app").

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{Directory, GraphSimulator};

/// Graph's error envelope: `{"error":{"code","message","innerError"}}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": { "date": "2026-11-25T06:00:00", "request-id": "b3c1f0e2-0000-4000-8000-000000000000" }
            }
        })),
    )
        .into_response()
}

/// Now, as Graph writes timestamps.
pub fn now_iso() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The directory, even after a panicking test thread poisoned its lock.
pub(crate) fn lock(dir: &Mutex<Directory>) -> std::sync::MutexGuard<'_, Directory> {
    dir.lock().unwrap_or_else(|e| e.into_inner())
}

/// The query string's parameters, decoded.
pub(crate) fn query_params(uri: &Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A page of `items` at `path` (under `/v1.0`), `page` a page, continued with `$skiptoken`.
pub(crate) fn page_of(
    s: &GraphSimulator,
    path: &str,
    context: &str,
    params: &HashMap<String, String>,
    items: Vec<Value>,
    page: usize,
) -> Response {
    let skip: usize = params
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let page = page.max(1);
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(skip).take(page).collect();
    let mut out = json!({
        "@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#{context}"),
        "value": value,
    });
    if skip + page < total {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let mut keys: Vec<&String> = params.keys().filter(|k| *k != "$skiptoken").collect();
        keys.sort();
        for k in keys {
            query.append_pair(k, &params[k]);
        }
        query.append_pair("$skiptoken", &(skip + page).to_string());
        out["@odata.nextLink"] = format!("{}/v1.0{path}?{}", s.base, query.finish()).into();
    }
    axum::Json(out).into_response()
}

/// `$top` of a directory collection: 100 by default, at most 999.
pub(crate) fn directory_top(params: &HashMap<String, String>) -> Result<usize, Box<Response>> {
    match params.get("$top") {
        None => Ok(100),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=999).contains(&n) => Ok(n),
            _ => Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "Request_UnsupportedQuery",
                "Invalid page size specified: the value of $top must be between 1 and 999.",
            ))),
        },
    }
}

/// The values of an OData `in ('a','b')` list or the value of `eq 'a'` (quotes doubled inside
/// a value), for `property`.
pub(crate) fn filter_values(filter: &str, property: &str) -> Option<Vec<String>> {
    let rest = filter.trim().strip_prefix(property)?.trim_start();
    if let Some(value) = rest.strip_prefix("eq ") {
        let value = value.trim();
        let inner = value.strip_prefix('\'')?.strip_suffix('\'')?;
        return Some(vec![inner.replace("''", "'")]);
    }
    let list = rest
        .strip_prefix("in")?
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?;
    let mut values = Vec::new();
    let mut chars = list.trim().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next()? != '\'' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => break,
                c => value.push(c),
            }
        }
        values.push(value);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(values),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// `$select`: only the named properties (all when there is no `$select`).
pub(crate) fn select(user: Value, fields: Option<&String>) -> Value {
    let Some(fields) = fields else { return user };
    let mut out = serde_json::Map::new();
    for field in fields.split(',') {
        if let Some(v) = user.get(field) {
            out.insert(field.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}
