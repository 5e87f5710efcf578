//! Microsoft Sentinel incidents in the simulated tenant, as the two write-back paths see them.
//!
//! Azure Resource Manager (`/subscriptions/…`, the Microsoft.SecurityInsights Incident Comments
//! REST API): `PUT` and `GET` of
//! `…/providers/Microsoft.SecurityInsights/incidents/{id}/comments/{commentId}` with exactly
//! `api-version=2025-09-01`; ARM's `{"error":{"code","message"}}` envelope with its codes
//! (`AuthenticationFailed`, `InvalidAuthenticationTokenAudience`, `MissingApiVersionParameter`,
//! `NoRegisteredProviderFound`, `AuthorizationFailed` without the Microsoft Sentinel Responder
//! role on the workspace, `UnsupportedMediaType`, `InvalidRequestContent`, `NotFound` for an
//! unknown incident); 201 for a new comment and 200 for a replaced one; 30,000 characters per
//! comment and 100 comments per incident (the documented limits); ARM's write throttling (a token
//! bucket of 200 writes refilled at 10 per second, per subscription and principal) with 429 and
//! `Retry-After`.
//!
//! Microsoft Graph (`/v1.0/security/incidents/{id}` and `…/comments`): the Defender XDR incident
//! with its `comments`, and `POST` of an `alertComment` answered 200 with every comment of the
//! incident; 404 for an unknown incident; 403 when the application may read incidents but not
//! write them (SecurityIncident.Read.All without SecurityIncident.ReadWrite.All). Graph documents
//! no comment limits of its own: the stand-in applies Sentinel's (30,000 characters, counted in
//! UTF-16 code units, and 100 comments per incident), so that the write-back is held to them on
//! both paths.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::odata::{error as graph_error, lock, now_iso};
use crate::{CLIENT_ID, Directory, GraphSimulator};

/// The api-version the product sends.
pub const API_VERSION: &str = "2025-09-01";
/// The api-versions ARM serves for `Microsoft.SecurityInsights/incidents/comments`: the
/// versions Microsoft's template reference lists for the type (stable and preview, up to
/// 2023-02-01-preview in the snapshot read) and the product's own, later one. Any other is
/// refused as ARM refuses it.
pub const API_VERSIONS: &[&str] = &[
    "2019-01-01-preview",
    "2020-01-01",
    "2021-03-01-preview",
    "2021-04-01",
    "2021-09-01-preview",
    "2021-10-01",
    "2021-10-01-preview",
    "2022-01-01-preview",
    "2022-04-01-preview",
    "2022-05-01-preview",
    "2022-06-01-preview",
    "2022-07-01-preview",
    "2022-08-01",
    "2022-08-01-preview",
    "2022-09-01-preview",
    "2022-10-01-preview",
    "2022-11-01",
    "2022-11-01-preview",
    "2022-12-01-preview",
    "2023-02-01-preview",
    API_VERSION,
];
/// Characters per comment, in UTF-16 code units as .NET and JavaScript count them (Microsoft
/// Sentinel, "Investigate incidents": "A single comment can contain up to 30,000 characters";
/// the REST API's `properties.message` has no `maxLength` of its own).
pub const MAX_COMMENT_CHARS: usize = 30_000;
/// Comments per incident ("A single incident can contain up to 100 comments").
pub const MAX_COMMENTS: usize = 100;
/// ARM write throttling: bucket size and refill per second, per subscription and principal.
pub const WRITE_BUCKET: (f64, f64) = (200.0, 10.0);
/// The object id of the application's service principal (the comments' author).
pub const SERVICE_PRINCIPAL_ID: &str = "5f4e3d2c-1b0a-4f9e-8d7c-6b5a4f3e2d1c";

/// What the stand-in holds of Microsoft Sentinel.
#[derive(Default)]
pub struct Sentinel {
    /// Incidents by lower-case ARM id, each with its comment resources (in creation order).
    pub incidents: HashMap<String, Vec<Value>>,
    /// Workspaces (lower-case ARM ids) where the application holds the Microsoft Sentinel
    /// Responder role.
    pub responder_on: Vec<String>,
    /// Defender XDR incidents (Graph `security/incidents`) by id, with their `comments`.
    pub defender: HashMap<String, Value>,
    /// The application holds SecurityIncident.Read.All but not SecurityIncident.ReadWrite.All:
    /// incidents can be read, a comment `POST` answers 403.
    pub defender_read_only: bool,
    /// ARM access tokens issued, and the tenant each is for.
    pub issued: HashMap<String, String>,
    /// Every ARM request as "METHOD /path?query" and the status answered.
    pub calls: Vec<(String, u16)>,
    /// The next N ARM requests answer 503.
    pub unavailable_next: usize,
    /// The next N ARM requests answer 429 with `Retry-After: retry_after`.
    pub throttle_next: usize,
    pub retry_after: u64,
    /// Write token buckets per subscription: (tokens, last refill).
    pub buckets: HashMap<String, (f64, Instant)>,
}

impl Sentinel {
    /// Adds an incident (by its ARM id, as the incident trigger's `object.id` gives it) and
    /// grants the application the Microsoft Sentinel Responder role on its workspace.
    pub fn add_incident(&mut self, arm_id: &str) {
        let arm_id = arm_id.to_ascii_lowercase();
        if let Some(workspace) = workspace_of(&arm_id)
            && !self.responder_on.contains(&workspace)
        {
            self.responder_on.push(workspace);
        }
        self.incidents.entry(arm_id).or_default();
    }

    /// Adds a Defender XDR incident (Graph `security/incidents/{id}`).
    pub fn add_defender_incident(&mut self, id: &str) {
        self.defender.insert(
            id.to_owned(),
            json!({
                "@odata.type": "#microsoft.graph.security.incident",
                "id": id,
                "incidentWebUrl": format!("https://security.microsoft.com/incidents/{id}"),
                "displayName": "Atypical travel involving two users",
                "status": "active",
                "severity": "high",
                "comments": [],
            }),
        );
    }

    /// The comments' messages on the incident `arm_id`.
    pub fn comments(&self, arm_id: &str) -> Vec<Value> {
        self.incidents
            .get(&arm_id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// The comments on the Defender incident `id`.
    pub fn defender_comments(&self, id: &str) -> Vec<Value> {
        self.defender
            .get(id)
            .and_then(|i| i["comments"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// `/subscriptions/{s}/resourcegroups/{rg}/providers/microsoft.operationalinsights/workspaces/{w}`
/// of a lower-case incident id.
fn workspace_of(arm_id: &str) -> Option<String> {
    arm_id
        .find("/providers/microsoft.securityinsights/")
        .map(|i| arm_id[..i].to_owned())
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-ms-request-id", "6b1f7c2e-0000-4000-8000-000000000000"),
            ("x-ms-failure-cause", "gateway"),
        ],
        axum::Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// The parts of a comment path: (incident ARM id, comment id), or `None` for any other path.
fn comment_path(path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.split('/').collect();
    let ok = parts.len() == 15
        && parts[0].is_empty()
        && parts[1].eq_ignore_ascii_case("subscriptions")
        && parts[3].eq_ignore_ascii_case("resourceGroups")
        && parts[5].eq_ignore_ascii_case("providers")
        && parts[6].eq_ignore_ascii_case("Microsoft.OperationalInsights")
        && parts[7].eq_ignore_ascii_case("workspaces")
        && parts[9].eq_ignore_ascii_case("providers")
        && parts[10].eq_ignore_ascii_case("Microsoft.SecurityInsights")
        && parts[11].eq_ignore_ascii_case("incidents")
        && parts[13].eq_ignore_ascii_case("comments")
        && [2, 4, 8, 12, 14].iter().all(|i| !parts[*i].is_empty());
    ok.then(|| (parts[..13].join("/"), parts[14].to_owned()))
}

/// Takes one write from the subscription's bucket, or says how many seconds until one refills.
fn take_write(sentinel: &mut Sentinel, subscription: &str) -> Result<(), u64> {
    let (size, refill) = WRITE_BUCKET;
    let now = Instant::now();
    let (tokens, at) = sentinel
        .buckets
        .entry(subscription.to_owned())
        .or_insert((size, now));
    *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * refill).min(size);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        Ok(())
    } else {
        Err(((1.0 - *tokens) / refill).ceil().max(1.0) as u64)
    }
}

/// Azure Resource Manager: Microsoft.SecurityInsights incident comments.
pub async fn arm(
    State(s): State<GraphSimulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut dir = lock(&s.dir);
    let call = format!(
        "{method} {}{}",
        uri.path(),
        uri.query().map(|q| format!("?{q}")).unwrap_or_default()
    );
    let response = serve(&mut dir.sentinel, &method, &uri, &headers, &body);
    dir.sentinel.calls.push((call, response.status().as_u16()));
    response
}

fn serve(
    sentinel: &mut Sentinel,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        None => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            );
        }
        Some(token) if token.starts_with("standin-token-") => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationTokenAudience",
                "The access token has been obtained for wrong audience or resource 'https://graph.microsoft.com'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'.",
            );
        }
        Some(token) if !sentinel.issued.contains_key(token) => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
            );
        }
        Some(_) => {}
    }
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let Some((incident_id, comment_id)) = comment_path(uri.path()) else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The resource type could not be found in the namespace 'Microsoft.SecurityInsights' for api version '2025-09-01'.",
        );
    };
    match query.get("api-version").map(String::as_str) {
        None | Some("") => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        }
        Some(version) if API_VERSIONS.contains(&version) => {}
        Some(other) => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "NoRegisteredProviderFound",
                &format!(
                    "No registered resource provider found for location 'westeurope' and API version '{other}' for type 'incidents/comments'. The supported api-versions are '{}'. The supported locations are 'westeurope'.",
                    API_VERSIONS.join(", ")
                ),
            );
        }
    }
    if sentinel.throttle_next > 0 {
        sentinel.throttle_next -= 1;
        let mut r = arm_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "The request is being throttled as the limit has been reached for operation type - Write.",
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(sentinel.retry_after));
        return r;
    }
    if sentinel.unavailable_next > 0 {
        sentinel.unavailable_next -= 1;
        return arm_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The service is temporarily unavailable. Please try again later.",
        );
    }
    let key = incident_id.to_ascii_lowercase();
    let workspace = workspace_of(&key).unwrap_or_default();
    let write = *method == Method::PUT;
    if !sentinel.responder_on.contains(&workspace) {
        let action = if write { "write" } else { "read" };
        return arm_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            &format!(
                "The client '{CLIENT_ID}' with object id '{SERVICE_PRINCIPAL_ID}' does not have authorization to perform action 'Microsoft.SecurityInsights/incidents/comments/{action}' over scope '{incident_id}/comments/{comment_id}' or the scope is invalid. If access was recently granted, please refresh your credentials."
            ),
        );
    }
    if write {
        let subscription = key.split('/').nth(2).unwrap_or("").to_owned();
        if let Err(seconds) = take_write(sentinel, &subscription) {
            let mut r = arm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type - Write.",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(seconds));
            return r;
        }
    }
    let Some(comments) = sentinel.incidents.get_mut(&key) else {
        let incident = incident_id.rsplit('/').next().unwrap_or("");
        return arm_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Incident '{incident}' was not found."),
        );
    };
    let resource_id = format!("{incident_id}/comments/{comment_id}");
    let index = comments.iter().position(|c| {
        c["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(&comment_id))
    });
    match *method {
        Method::GET => match index {
            Some(i) => axum::Json(comments[i].clone()).into_response(),
            None => arm_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("Incident comment '{comment_id}' was not found."),
            ),
        },
        Method::PUT => {
            let json_body = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
            if !json_body {
                return arm_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "The content media type is not supported. Content must be of type 'application/json'.",
                );
            }
            let parsed: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return arm_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequestContent",
                        &format!(
                            "The request content was invalid and could not be deserialized: '{e}'."
                        ),
                    );
                }
            };
            let Some(message) = parsed["properties"]["message"]
                .as_str()
                .filter(|m| !m.trim().is_empty())
            else {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "The 'properties.message' field is required.",
                );
            };
            if message.encode_utf16().count() > MAX_COMMENT_CHARS {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "The comment message exceeds the maximum length of 30000 characters.",
                );
            }
            let now = now_iso();
            let etag = format!("\"{}\"", uuid::Uuid::new_v4());
            match index {
                Some(i) => {
                    let c = &mut comments[i];
                    c["properties"]["message"] = message.into();
                    c["properties"]["lastModifiedTimeUtc"] = now.into();
                    c["etag"] = etag.into();
                    (StatusCode::OK, axum::Json(c.clone())).into_response()
                }
                None if comments.len() >= MAX_COMMENTS => arm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "The incident has reached the maximum of 100 comments.",
                ),
                None => {
                    let comment = json!({
                        "id": resource_id,
                        "name": comment_id,
                        "type": "Microsoft.SecurityInsights/incidents/comments",
                        "etag": etag,
                        "properties": {
                            "message": message,
                            "createdTimeUtc": now,
                            "lastModifiedTimeUtc": now,
                            "author": {
                                "objectId": SERVICE_PRINCIPAL_ID,
                                "name": "risk-responder",
                                "userPrincipalName": null,
                                "email": null,
                            }
                        }
                    });
                    comments.push(comment.clone());
                    (StatusCode::CREATED, axum::Json(comment)).into_response()
                }
            }
        }
        _ => arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("The requested method '{method}' is not allowed for this resource."),
        ),
    }
}

/// Graph's `security/incidents` paths.
pub(crate) fn route(r: &crate::Request<'_>, dir: &mut Directory) -> Option<Response> {
    Some(match (r.method.clone(), r.segments.as_slice()) {
        (Method::GET, ["security", "incidents", id]) => defender_get(&dir.sentinel, id),
        (Method::POST, ["security", "incidents", id, "comments"]) => {
            defender_comment(&mut dir.sentinel, id, &r.body)
        }
        _ => return None,
    })
}

/// `GET /security/incidents/{id}`.
pub fn defender_get(sentinel: &Sentinel, id: &str) -> Response {
    match sentinel.defender.get(id) {
        Some(incident) => {
            let mut incident = incident.clone();
            incident["@odata.context"] =
                "https://graph.microsoft.com/v1.0/$metadata#security/incidents/$entity".into();
            axum::Json(incident).into_response()
        }
        None => defender_not_found(id),
    }
}

fn defender_not_found(id: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("Incident with id {id} was not found."),
    )
}

/// `POST /security/incidents/{id}/comments` with an `alertComment`: 200 and the incident's
/// comments.
pub fn defender_comment(sentinel: &mut Sentinel, id: &str, body: &Value) -> Response {
    let kind = body["@odata.type"].as_str();
    if kind.is_some_and(|k| k.trim_start_matches('#') != "microsoft.graph.security.alertComment") {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The @odata.type of the comment must be microsoft.graph.security.alertComment.",
        );
    }
    let Some(comment) = body["comment"].as_str().filter(|c| !c.trim().is_empty()) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The comment is required.",
        );
    };
    if sentinel.defender_read_only {
        return graph_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Missing application roles. API required roles: SecurityIncident.ReadWrite.All. Application roles: SecurityIncident.Read.All.",
        );
    }
    let Some(incident) = sentinel.defender.get_mut(id) else {
        return defender_not_found(id);
    };
    if comment.encode_utf16().count() > MAX_COMMENT_CHARS {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("The comment exceeds the maximum length of {MAX_COMMENT_CHARS} characters."),
        );
    }
    let count = incident["comments"].as_array().map_or(0, Vec::len);
    if count >= MAX_COMMENTS {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("The incident has reached the maximum of {MAX_COMMENTS} comments."),
        );
    }
    let entry = json!({
        "comment": comment,
        "createdByDisplayName": "risk-responder",
        "createdDateTime": now_iso(),
    });
    match incident["comments"].as_array_mut() {
        Some(list) => list.push(entry),
        None => incident["comments"] = json!([entry]),
    }
    axum::Json(json!({
        "@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#security/incidents('{id}')/comments"),
        "value": incident["comments"].clone(),
    }))
    .into_response()
}
