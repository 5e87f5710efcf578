//! Users ("user resource type", "Get user", "List users", "Update user", "List manager",
//! "List transitiveMemberOf", "user: revokeSignInSessions"): `$select`, `$filter=id|userPrincipalName
//! in (…)` with at most 15 values, `$expand=manager[($select=…)]` as documented (one
//! relationship, not with advanced queries, `$levels` only on one user), at most 100 users a
//! page with `$expand`; `PATCH` of several properties at once.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::odata::{directory_top, error, filter_values, now_iso, page_of, select};
use crate::{Directory, GraphSimulator};

/// The users area's paths.
pub(crate) fn route(r: &crate::Request<'_>, dir: &mut Directory) -> Option<Response> {
    let advanced = r
        .headers
        .get("consistencylevel")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
    let params = &r.params;
    Some(match (r.method.clone(), r.segments.as_slice()) {
        (Method::GET, ["users", id]) => {
            let expand = match user_expand(params, true, advanced) {
                Ok(expand) => expand,
                Err(response) => return Some(*response),
            };
            match find_user(dir, id) {
                Some(user) => {
                    let mut out = select(user.clone(), params.get("$select"));
                    expand_user(dir, &user, &mut out, &expand);
                    axum::Json(out).into_response()
                }
                None => user_not_found(id),
            }
        }
        (Method::PATCH, ["users", id]) => patch_user(dir, id, r.body.clone()),
        (Method::GET, ["users"]) => list_users(r.s, dir, params, advanced),
        (Method::POST, ["users", id, "revokeSignInSessions"]) => match find_user(dir, id) {
            Some(user) => {
                let uid = user["id"].as_str().unwrap_or_default().to_owned();
                dir.revoked.push(uid);
                axum::Json(json!({
                    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean",
                    "value": true
                }))
                .into_response()
            }
            None => user_not_found(id),
        },
        (Method::GET, ["users", id, "manager"]) => {
            let Some(user) = find_user(dir, id) else {
                return Some(user_not_found(id));
            };
            let uid = user["id"].as_str().unwrap_or_default().to_owned();
            match dir.managers.get(&uid).and_then(|m| find_user(dir, m)) {
                Some(manager) => axum::Json(select(manager, params.get("$select"))).into_response(),
                None => error(
                    StatusCode::NOT_FOUND,
                    "Request_ResourceNotFound",
                    "Resource 'manager' does not exist or one of its queried reference-property objects are not present.",
                ),
            }
        }
        (Method::GET, ["users", id, "transitiveMemberOf"]) => {
            let Some(user) = find_user(dir, id) else {
                return Some(user_not_found(id));
            };
            let uid = user["id"].as_str().unwrap_or_default().to_owned();
            let ids = dir.member_of.get(&uid).cloned().unwrap_or_default();
            let roles: Vec<&String> = dir.directory_roles.values().collect();
            let items: Vec<Value> = ids
                .iter()
                .map(|id| {
                    let kind = if roles.contains(&id) {
                        "#microsoft.graph.directoryRole"
                    } else {
                        "#microsoft.graph.group"
                    };
                    json!({ "@odata.type": kind, "id": id })
                })
                .collect();
            axum::Json(json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects(id)",
                "value": items,
            }))
            .into_response()
        }
        _ => return None,
    })
}

pub(crate) fn user_not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

pub(crate) fn find_user(dir: &Directory, id_or_upn: &str) -> Option<Value> {
    dir.users
        .iter()
        .find(|u| {
            u["id"].as_str() == Some(id_or_upn)
                || u["userPrincipalName"]
                    .as_str()
                    .is_some_and(|upn| upn.eq_ignore_ascii_case(id_or_upn))
        })
        .cloned()
}

/// Whether `user` holds a directory role (a member of an activated role, or assigned one).
fn holds_directory_role(dir: &Directory, user: &str) -> bool {
    let roles: Vec<&String> = dir.directory_roles.values().collect();
    dir.member_of
        .get(user)
        .is_some_and(|ids| ids.iter().any(|id| roles.contains(&id)))
        || dir
            .role_assignments
            .iter()
            .any(|(principal, _)| principal == user)
}

/// `PATCH /users/{id}`: several properties at once, as Graph's Update user takes them (the
/// body is checked whole before anything changes). Records which properties each PATCH set.
pub(crate) fn patch_user(dir: &mut Directory, id: &str, body: Value) -> Response {
    let Some(index) = dir.users.iter().position(|u| u["id"].as_str() == Some(id)) else {
        return user_not_found(id);
    };
    // "Who can reset passwords" / sensitive actions: a User Administrator may change the
    // password and sign-in of users without admin roles only.
    let sensitive = body.get("passwordProfile").is_some() || body.get("accountEnabled").is_some();
    if sensitive && !dir.app_is_privileged_auth_admin && holds_directory_role(dir, id) {
        return error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
    let enabled = match body.get("accountEnabled") {
        None => None,
        Some(v) => match v.as_bool() {
            Some(enabled) => Some(enabled),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    "Invalid value for accountEnabled.",
                );
            }
        },
    };
    if let Some(profile) = body.get("passwordProfile") {
        let password = profile["password"].as_str().unwrap_or("");
        let classes = [
            password.chars().any(|c| c.is_ascii_uppercase()),
            password.chars().any(|c| c.is_ascii_lowercase()),
            password.chars().any(|c| c.is_ascii_digit()),
            password.chars().any(|c| !c.is_ascii_alphanumeric()),
        ];
        if password.len() < 8 || classes.iter().filter(|c| **c).count() < 3 {
            return error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "The specified password does not comply with password complexity requirements. Please provide a different password.",
            );
        }
        dir.users[index]["passwordProfile"] = profile.clone();
        dir.users[index]["lastPasswordChangeDateTime"] = now_iso().into();
        dir.password_resets += 1;
        // An admin-generated temporary password remediates the user's risk.
        let uid = dir.users[index]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(r) = dir.risky_users.get_mut(&uid)
            && matches!(
                r["riskState"].as_str(),
                Some("atRisk" | "confirmedCompromised")
            )
        {
            r["riskState"] = "remediated".into();
            r["riskLevel"] = "none".into();
            r["riskDetail"] = "adminGeneratedTemporaryPassword".into();
            r["riskLastUpdatedDateTime"] = now_iso().into();
        }
    }
    if let Some(enabled) = enabled {
        dir.users[index]["accountEnabled"] = enabled.into();
    }
    let mut properties: Vec<String> = body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    properties.sort();
    dir.user_patches.push((id.to_owned(), properties));
    StatusCode::NO_CONTENT.into_response()
}

/// What a user read expands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UserExpand {
    None,
    /// `manager`, with the properties of its `$select` (all when `None`).
    Manager(Option<String>),
}

/// `$expand` on users, as Microsoft Graph documents it ("Use query parameters", "List
/// manager"): one relationship per request; `manager`, `directReports` and `memberOf` can be
/// expanded (this stand-in models `manager`; the other two answer 501), nothing else; inside
/// `manager(…)`, `$select`, and `$levels` on a single user only (not modelled here: 501);
/// never with an advanced query (`$count`, `$search`, `ConsistencyLevel: eventual`).
pub(crate) fn user_expand(
    params: &HashMap<String, String>,
    single_user: bool,
    advanced: bool,
) -> Result<UserExpand, Box<Response>> {
    let Some(value) = params.get("$expand").map(|v| v.trim()) else {
        return Ok(UserExpand::None);
    };
    let refuse =
        |code: &str, message: &str| Err(Box::new(error(StatusCode::BAD_REQUEST, code, message)));
    if advanced || params.contains_key("$count") || params.contains_key("$search") {
        return refuse(
            "Request_UnsupportedQuery",
            "$expand is not supported with advanced queries ($count, $search, ConsistencyLevel: eventual).",
        );
    }
    let (name, options) = match value.split_once('(') {
        Some((name, rest)) => match rest.strip_suffix(')') {
            Some(options) => (name.trim(), Some(options)),
            None => return refuse("BadRequest", "Invalid $expand expression."),
        },
        None => (value, None),
    };
    if name.contains(',') || options.is_some_and(|o| o.contains('(')) {
        return refuse(
            "Request_UnsupportedQuery",
            "Only one relationship can be expanded in a single request.",
        );
    }
    match name {
        "manager" => {}
        "directReports" | "memberOf" => {
            return Err(Box::new(error(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "The Graph stand-in expands only manager.",
            )));
        }
        other => {
            return refuse(
                "Request_UnsupportedQuery",
                &format!(
                    "Could not find a navigation property named '{other}' that supports $expand on type 'microsoft.graph.user'."
                ),
            );
        }
    }
    let mut select = None;
    for option in options.into_iter().flat_map(|o| o.split(';')) {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match key.trim() {
            "$select" if !value.trim().is_empty() => select = Some(value.trim().to_owned()),
            "$levels" if single_user => {
                return Err(Box::new(error(
                    StatusCode::NOT_IMPLEMENTED,
                    "NotImplemented",
                    "The Graph stand-in does not model manager chains ($levels).",
                )));
            }
            "$levels" => {
                return refuse(
                    "Request_UnsupportedQuery",
                    "$levels is supported only on a single user, not on the list of users.",
                );
            }
            _ => {
                return refuse(
                    "Request_UnsupportedQuery",
                    &format!(
                        "Query option '{}' is not supported inside $expand of manager.",
                        option.trim()
                    ),
                );
            }
        }
    }
    Ok(UserExpand::Manager(select))
}

/// Adds what `expand` asks for to `out`, the answer for `user`: its manager (absent when the
/// user has none).
pub(crate) fn expand_user(dir: &Directory, user: &Value, out: &mut Value, expand: &UserExpand) {
    let UserExpand::Manager(fields) = expand else {
        return;
    };
    let uid = user["id"].as_str().unwrap_or_default();
    if let Some(manager) = dir.managers.get(uid).and_then(|m| find_user(dir, m)) {
        let mut manager = select(manager, fields.as_ref());
        manager["@odata.type"] = "#microsoft.graph.user".into();
        out["manager"] = manager;
    }
}

/// `GET /users[?$filter=id|userPrincipalName in (...) | eq '...']`, `$select`, `$top`, paged.
/// Graph allows at most 15 values in an `in` list (and 15 `or` clauses) by default.
pub(crate) fn list_users(
    s: &GraphSimulator,
    dir: &Directory,
    params: &HashMap<String, String>,
    advanced: bool,
) -> Response {
    let top = match directory_top(params) {
        Ok(top) => top,
        Err(response) => return *response,
    };
    let expand = match user_expand(params, false, advanced) {
        Ok(expand) => expand,
        Err(response) => return *response,
    };
    // A known Graph limit: with `$expand`, a page of directory objects holds at most 100.
    let top = if expand == UserExpand::None {
        top
    } else {
        top.min(100)
    };
    let mut users: Vec<Value> = dir
        .users
        .iter()
        .filter(|u| dir.in_caller_tenant(u["id"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    if let Some(filter) = params.get("$filter") {
        let (by_id, values) = match (
            filter_values(filter, "id"),
            filter_values(filter, "userPrincipalName"),
        ) {
            (Some(v), _) => (true, v),
            (None, Some(v)) => (false, v),
            (None, None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    "Unsupported or invalid query filter clause specified for property of resource 'User'.",
                );
            }
        };
        if values.len() > 15 {
            return error(
                StatusCode::BAD_REQUEST,
                "Request_UnsupportedQuery",
                &format!(
                    "Too many child clauses specified in search filter expression containing 'OR' operators: {}. Max allowed: 15.",
                    values.len()
                ),
            );
        }
        users.retain(|u| {
            let field = if by_id { "id" } else { "userPrincipalName" };
            u[field]
                .as_str()
                .is_some_and(|have| values.iter().any(|v| v.eq_ignore_ascii_case(have)))
        });
    }
    let items = users
        .into_iter()
        .map(|u| {
            let mut out = select(u.clone(), params.get("$select"));
            expand_user(dir, &u, &mut out, &expand);
            out
        })
        .collect();
    page_of(
        s,
        "/users",
        "users",
        params,
        items,
        top.min(dir.page_size.max(1)),
    )
}
