//! A simulated Microsoft Graph tenant and identity platform token endpoint, following the
//! documented request and response shapes: `/{tenant}/oauth2/v2.0/token`, `/v1.0/users`
//! (`$select`, `manager`, `transitiveMemberOf`, `revokeSignInSessions`, `sendMail`),
//! `/v1.0/directoryRoles(roleTemplateId='…')`, `/v1.0/identityProtection/riskyUsers`,
//! `/v1.0/auditLogs/signIns` with the exact `$filter` grammar the product uses (and no
//! `$select`, which the API does not support), `@odata.nextLink` paging, subscriptions with the
//! validation handshake, errors in the `{"error":{"code","message"}}` envelope, 411 for a
//! bodyless write without `Content-Length`, and 429 with `Retry-After` where injected.
//!
//! The test suite runs against it, and `--demo` runs the product against it: nothing it
//! serves can reach a real tenant.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "local-development-only";

/// Injected faults.
#[derive(Default, Clone)]
pub struct Faults {
    /// The token endpoint answers 401 invalid_client.
    pub token_refused: bool,
    /// The token endpoint answers 503.
    pub token_down: bool,
    /// The next N Graph calls answer 429 with `Retry-After: retry_after`.
    pub throttle_next: usize,
    pub retry_after: u64,
    /// The next N Graph calls answer 503 (no Retry-After).
    pub unavailable_next: usize,
    /// Paths (method + path prefix) answered 403 Authorization_RequestDenied.
    pub forbidden: Vec<(Method, String)>,
    /// Paths (method + path prefix) answered 503 while listed.
    pub unavailable_paths: Vec<(Method, String)>,
    /// Paths (method + path prefix) answered with this 4xx status while listed.
    pub refused_paths: Vec<(Method, String, u16)>,
    /// `sendMail` answers 503 for messages whose subject contains one of these.
    pub unavailable_mail_subjects: Vec<String>,
}

/// A certificate credential the token endpoint accepts.
pub struct CertificateCredential {
    pub public_key_pem: Vec<u8>,
    /// Base64url SHA-256 thumbprint of the certificate's DER (`x5t#S256`).
    pub thumbprint_sha256_b64url: String,
}

#[derive(Default)]
pub struct Directory {
    pub users: Vec<Value>,
    pub managers: HashMap<String, String>,
    pub risky_users: HashMap<String, Value>,
    pub sign_ins: Vec<Value>,
    /// userId -> ids of the groups and directory roles it is a (transitive) member of.
    pub member_of: HashMap<String, Vec<String>>,
    /// roleTemplateId -> id of the tenant's activated directory role.
    pub directory_roles: HashMap<String, String>,
    pub mails: Vec<(String, Value)>,
    /// Every Graph call as "METHOD /path?query", with when it arrived.
    pub calls: Vec<(String, Instant)>,
    pub token_requests: usize,
    /// Passwords set through `PATCH /users/{id}` (a `passwordProfile`).
    pub password_resets: usize,
    pub issued: HashSet<String>,
    pub faults: Faults,
    pub certificate: Option<CertificateCredential>,
    pub page_size: usize,
    pub subscriptions: Vec<Value>,
    pub reauthorized: Vec<String>,
}

#[derive(Clone)]
pub struct GraphSimulator {
    pub dir: Arc<Mutex<Directory>>,
    pub base: String,
}

impl GraphSimulator {
    /// Graph base URL (`.../v1.0`).
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.base)
    }

    /// Identity platform authority.
    pub fn authority(&self) -> String {
        self.base.clone()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Directory) -> R) -> R {
        f(&mut lock(&self.dir))
    }

    /// A Graph client for this stand-in: `credential`, `max_attempts`, millisecond backoff.
    pub fn client(
        &self,
        credential: crate::graph::ClientCredential,
        max_attempts: u32,
    ) -> Arc<crate::graph::GraphClient> {
        use crate::graph::{GraphClient, RetryPolicy, TokenProvider};
        let http = reqwest::Client::new();
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            self.authority(),
            CLIENT_ID,
            credential,
            "https://graph.microsoft.com/.default",
        ));
        let retry = RetryPolicy {
            max_attempts,
            base_delay: std::time::Duration::from_millis(5),
            max_delay: std::time::Duration::from_secs(5),
            request_timeout: std::time::Duration::from_secs(5),
            max_pages: 50,
        };
        Arc::new(GraphClient::new(http, self.graph_url(), tokens, retry))
    }

    /// A client with the right client secret.
    pub fn secret_client(&self, max_attempts: u32) -> Arc<crate::graph::GraphClient> {
        let secret = crate::secrets::SecretString::new(CLIENT_SECRET);
        self.client(crate::graph::ClientCredential::Secret(secret), max_attempts)
    }

    /// Calls that change something (anything but GET).
    pub fn writes(&self) -> Vec<String> {
        self.with(|d| {
            d.calls
                .iter()
                .map(|(c, _)| c.clone())
                .filter(|c| !c.starts_with("GET "))
                .collect()
        })
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
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

fn lock(dir: &Mutex<Directory>) -> std::sync::MutexGuard<'_, Directory> {
    dir.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the simulator on 127.0.0.1 (a free port) with an empty directory and pages of two.
pub async fn start() -> std::io::Result<GraphSimulator> {
    start_with(Directory {
        page_size: 2,
        ..Directory::default()
    })
    .await
}

/// Starts the simulator on 127.0.0.1 (a free port) with `directory`.
pub async fn start_with(directory: Directory) -> std::io::Result<GraphSimulator> {
    let dir = Arc::new(Mutex::new(directory));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let standin = GraphSimulator {
        dir,
        base: format!("http://{addr}"),
    };
    let app = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route(
            "/v1.0/subscriptions",
            get(list_subscriptions).post(create_subscription),
        )
        .route("/v1.0/subscriptions/{id}", patch(renew_subscription))
        .route(
            "/v1.0/subscriptions/{id}/reauthorize",
            post(reauthorize_subscription),
        )
        .fallback(graph)
        .with_state(standin.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "Graph simulator stopped");
        }
    });
    Ok(standin)
}

async fn token(
    State(s): State<GraphSimulator>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mut dir = lock(&s.dir);
    dir.token_requests += 1;
    if dir.faults.token_down {
        return (StatusCode::SERVICE_UNAVAILABLE, "").into_response();
    }
    let invalid_client = |description: &str| {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({
                "error": "invalid_client",
                "error_description": format!("{description}\r\nTrace ID: 0000\r\nCorrelation ID: 0000\r\nTimestamp: 2026-11-25 06:00:00Z"),
                "error_codes": [7000215],
                "timestamp": "2026-11-25 06:00:00Z",
            })),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || form.get("scope").map(String::as_str) != Some("https://graph.microsoft.com/.default")
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request", "error_description": "AADSTS900144: malformed request"})),
        )
            .into_response();
    }
    if dir.faults.token_refused {
        return invalid_client("AADSTS7000215: Invalid client secret provided.");
    }
    if let Some(assertion) = form.get("client_assertion") {
        let Some(cert) = &dir.certificate else {
            return invalid_client("AADSTS700027: Client assertion contains an invalid signature.");
        };
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return invalid_client("AADSTS700025: wrong client_assertion_type.");
        }
        let Ok(header) = jsonwebtoken::decode_header(assertion) else {
            return invalid_client("AADSTS50027: Invalid JWT token.");
        };
        if header.alg != jsonwebtoken::Algorithm::PS256 {
            return invalid_client(
                "AADSTS5002738: the client assertion must be signed with PS256.",
            );
        }
        if header.x5t_s256.as_deref() != Some(cert.thumbprint_sha256_b64url.as_str()) {
            return invalid_client("AADSTS700027: unknown certificate thumbprint.");
        }
        let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(&cert.public_key_pem) else {
            return invalid_client("AADSTS700027: certificate not usable.");
        };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::PS256);
        validation.set_audience(&[format!("{}/{tenant}/oauth2/v2.0/token", s.base)]);
        validation.set_issuer(&[CLIENT_ID]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
            Ok(data) if data.claims["sub"] == CLIENT_ID && data.claims["jti"].is_string() => {}
            _ => {
                return invalid_client(
                    "AADSTS700027: Client assertion contains an invalid signature.",
                );
            }
        }
    } else if form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET) {
        return invalid_client("AADSTS7000215: Invalid client secret provided.");
    }
    let access_token = format!("standin-token-{}-{}", tenant, uuid::Uuid::new_v4());
    dir.issued.insert(access_token.clone());
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": access_token,
    }))
    .into_response()
}

fn query_params(uri: &Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Records the call, checks the bearer token, and applies injected faults.
fn gate(dir: &mut Directory, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
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
        return Some(
            (
                StatusCode::LENGTH_REQUIRED,
                [("content-type", "text/html; charset=us-ascii")],
                "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n<HTML><HEAD><TITLE>Length Required</TITLE></HEAD><BODY><h2>Length Required</h2><hr><p>HTTP Error 411. The request must be chunked or have a content length.</p></BODY></HTML>\r\n",
            )
                .into_response(),
        );
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        None => {
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token is empty.",
            ));
        }
        Some(token) if !dir.issued.contains(token) => {
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
            ));
        }
        _ => {}
    }
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
        return Some(response);
    }
    let path = uri.path().strip_prefix("/v1.0").unwrap_or("");
    let matches = |list: &[(Method, String)]| {
        list.iter()
            .any(|(m, prefix)| m == method && path.starts_with(prefix.as_str()))
    };
    if dir.faults.unavailable_next > 0 || matches(&dir.faults.unavailable_paths) {
        dir.faults.unavailable_next = dir.faults.unavailable_next.saturating_sub(1);
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "serviceNotAvailable",
            "The service is temporarily unavailable.",
        ));
    }
    if let Some((_, _, status)) = dir
        .faults
        .refused_paths
        .iter()
        .find(|(m, prefix, _)| m == method && path.starts_with(prefix.as_str()))
    {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
        return Some(error(status, "BadRequest", "The request was refused."));
    }
    if matches(&dir.faults.forbidden) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ));
    }
    None
}

async fn graph(
    State(s): State<GraphSimulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut dir = lock(&s.dir);
    if let Some(response) = gate(&mut dir, &method, &uri, &headers) {
        return response;
    }
    let Some(path) = uri.path().strip_prefix("/v1.0") else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid version.");
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
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
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let params = query_params(&uri);
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["users", id]) => match find_user(&dir, id) {
            Some(user) => axum::Json(select(user, params.get("$select"))).into_response(),
            None => user_not_found(id),
        },
        (Method::PATCH, ["users", id]) => patch_user(&mut dir, id, body),
        (Method::POST, ["users", id, "revokeSignInSessions"]) => match find_user(&dir, id) {
            Some(_) => axum::Json(json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean",
                "value": true
            }))
            .into_response(),
            None => user_not_found(id),
        },
        (Method::GET, ["users", id, "manager"]) => {
            let Some(user) = find_user(&dir, id) else {
                return user_not_found(id);
            };
            let uid = user["id"].as_str().unwrap_or_default().to_owned();
            match dir.managers.get(&uid).and_then(|m| find_user(&dir, m)) {
                Some(manager) => axum::Json(select(manager, params.get("$select"))).into_response(),
                None => error(
                    StatusCode::NOT_FOUND,
                    "Request_ResourceNotFound",
                    "Resource 'manager' does not exist or one of its queried reference-property objects are not present.",
                ),
            }
        }
        (Method::POST, ["users", sender, "sendMail"]) => {
            let valid = body["message"]["toRecipients"].as_array().is_some_and(|r| {
                !r.is_empty() && r.iter().all(|x| x["emailAddress"]["address"].is_string())
            }) && body["message"]["body"]["content"].is_string();
            if !valid {
                return error(
                    StatusCode::BAD_REQUEST,
                    "ErrorInvalidRecipients",
                    "At least one recipient is not valid.",
                );
            }
            let subject = body["message"]["subject"].as_str().unwrap_or_default();
            if dir
                .faults
                .unavailable_mail_subjects
                .iter()
                .any(|f| subject.contains(f.as_str()))
            {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ErrorServiceUnavailable",
                    "The service is temporarily unavailable.",
                );
            }
            dir.mails.push((sender.to_string(), body));
            StatusCode::ACCEPTED.into_response()
        }
        (Method::GET, ["users", id, "transitiveMemberOf"]) => {
            let Some(user) = find_user(&dir, id) else {
                return user_not_found(id);
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
        (Method::GET, [role]) if role.starts_with("directoryRoles(roleTemplateId='") => {
            let template = role
                .trim_start_matches("directoryRoles(roleTemplateId='")
                .trim_end_matches("')");
            match dir.directory_roles.get(template) {
                Some(id) => axum::Json(json!({
                    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryRoles(id,roleTemplateId)/$entity",
                    "id": id, "roleTemplateId": template,
                }))
                .into_response(),
                None => error(
                    StatusCode::NOT_FOUND,
                    "Request_ResourceNotFound",
                    &format!("Resource '{template}' does not exist or one of its queried reference-property objects are not present."),
                ),
            }
        }
        (Method::GET, ["identityProtection", "riskyUsers", id]) => match dir.risky_users.get(*id) {
            Some(r) => {
                let mut r = select(r.clone(), params.get("$select"));
                r["@odata.context"] = "https://graph.microsoft.com/v1.0/$metadata#identityProtection/riskyUsers/$entity".into();
                axum::Json(r).into_response()
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
        ) => {
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
                    if *action == "dismiss" {
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
        (Method::GET, ["auditLogs", "signIns"]) => sign_ins(&s, &dir, &params),
        _ => error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "Resource not found for the segment '{}'.",
                segs.first().unwrap_or(&"")
            ),
        ),
    }
}

fn user_not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn find_user(dir: &Directory, id_or_upn: &str) -> Option<Value> {
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

fn select(user: Value, fields: Option<&String>) -> Value {
    let Some(fields) = fields else { return user };
    let mut out = serde_json::Map::new();
    for field in fields.split(',') {
        if let Some(v) = user.get(field) {
            out.insert(field.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

fn patch_user(dir: &mut Directory, id: &str, body: Value) -> Response {
    let Some(index) = dir.users.iter().position(|u| u["id"].as_str() == Some(id)) else {
        return user_not_found(id);
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
    if let Some(enabled) = body.get("accountEnabled") {
        let Some(enabled) = enabled.as_bool() else {
            return error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "Invalid value for accountEnabled.",
            );
        };
        dir.users[index]["accountEnabled"] = enabled.into();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `$filter=userId eq '{guid}' and status/errorCode eq {n} and createdDateTime ge {iso}`,
/// exactly; anything else is refused as Graph refuses unsupported queries.
fn sign_ins(s: &GraphSimulator, dir: &Directory, params: &HashMap<String, String>) -> Response {
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
    let parsed = (|| {
        let rest = filter.strip_prefix("userId eq '")?;
        let (user, rest) = rest.split_once("' and status/errorCode eq ")?;
        let (code, since) = rest.split_once(" and createdDateTime ge ")?;
        let code: i64 = code.parse().ok()?;
        let since =
            time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
                .ok()?;
        let guid = user.len() == 36 && user.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        guid.then_some((user.to_owned(), code, since))
    })();
    let Some((user, code, since)) = parsed else {
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
    let page = top.min(dir.page_size);
    let skip: usize = params
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let matching: Vec<&Value> = dir
        .sign_ins
        .iter()
        .filter(|si| {
            si["userId"].as_str() == Some(user.as_str())
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
                    .is_some_and(|t| t >= since)
        })
        .collect();
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

// ---- subscriptions ----

fn max_minutes(resource: &str) -> Option<i64> {
    if resource == "users" {
        Some(41_760)
    } else if resource == "security/alerts?$filter=vendorInformation/provider eq 'IPC'" {
        Some(43_200)
    } else {
        None
    }
}

fn check_expiry(resource: &str, value: &Value) -> Result<(), Box<Response>> {
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

async fn handshake(url: &str) -> bool {
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

async fn list_subscriptions(
    State(s): State<GraphSimulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut dir = lock(&s.dir);
    if let Some(response) = gate(&mut dir, &method, &uri, &headers) {
        return response;
    }
    let skip: usize = query_params(&uri)
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = dir
        .subscriptions
        .iter()
        .skip(skip)
        .take(dir.page_size)
        .cloned()
        .collect();
    let mut out = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions",
        "value": page,
    });
    if skip + dir.page_size < dir.subscriptions.len() {
        out["@odata.nextLink"] = format!(
            "{}/v1.0/subscriptions?$skiptoken={}",
            s.base,
            skip + dir.page_size
        )
        .into();
    }
    axum::Json(out).into_response()
}

async fn create_subscription(
    State(s): State<GraphSimulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = {
        let mut dir = lock(&s.dir);
        if let Some(response) = gate(&mut dir, &method, &uri, &headers) {
            return response;
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

async fn renew_subscription(
    State(s): State<GraphSimulator>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut dir = lock(&s.dir);
    if let Some(response) = gate(&mut dir, &method, &uri, &headers) {
        return response;
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

async fn reauthorize_subscription(
    State(s): State<GraphSimulator>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut dir = lock(&s.dir);
    if let Some(response) = gate(&mut dir, &method, &uri, &headers) {
        return response;
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
