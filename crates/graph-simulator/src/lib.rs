//! A simulated Microsoft 365 tenant: Microsoft Graph, the identity platform's token endpoint
//! and Microsoft Sentinel's incident comments, answering as Microsoft documents each API, so
//! that risk-responder's tests, benchmarks and `--demo` run the product against something as
//! strict as the real services. Nothing it serves can reach a real tenant.
//!
//! One file per Graph area, as Microsoft's reference is split, each with the documented
//! limits and error bodies beside its handlers and the documentation page it follows named at
//! its top:
//!
//! | area | what it answers |
//! |---|---|
//! | [`identity_platform`] | `/{tenant}/oauth2/v2.0/token` (client secret, PS256 certificate assertion) |
//! | [`users`] | `/users`, `/users/{id}` (read, `PATCH`), manager, `transitiveMemberOf`, `revokeSignInSessions` |
//! | [`roles`] | groups' transitive members, `roleManagement/directory`, `directoryRoles` |
//! | [`identity_protection`] | `identityProtection/riskyUsers` and its `dismiss` / `confirmCompromised` |
//! | [`signins`] | `auditLogs/signIns` and `reports/authenticationMethods/userRegistrationDetails` |
//! | [`mail`] | `users/{id}/sendMail` |
//! | [`conditional_access`] | `identity/conditionalAccess/policies` |
//! | [`subscriptions`] | change-notification subscriptions with the validation handshake |
//! | [`security`] | Sentinel incident comments (Azure Resource Manager) and Graph `security/incidents` |
//! | [`batch`] | JSON batching (`$batch`) |
//! | [`throttling`] | the published throttle limits, each at its documented scope, and latency |
//! | [`faults`] | injected faults (429, 503, 403, refused paths, an unavailable token endpoint) |
//! | [`odata`] | the error envelope, `$select`, `$filter` values, `$top`, `@odata.nextLink` paging |
//!
//! Every request passes the gate ([`gate`]): the call is recorded, a write without
//! `Content-Length` is answered 411, the bearer token must be one the token endpoint issued,
//! the throttle limits and faults apply; then the area answers. The simulated tenant is a
//! [`Directory`] that tests seed and inspect through [`GraphSimulator::with`].

pub mod batch;
pub mod conditional_access;
pub mod demo;
pub mod directory;
pub mod faults;
pub mod gate;
pub mod identity_platform;
pub mod identity_protection;
pub mod mail;
pub mod odata;
pub mod roles;
pub mod security;
pub mod signins;
pub mod subscriptions;
pub mod throttling;
pub mod users;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{any, get, patch, post};
use serde_json::Value;

pub use directory::{CertificateCredential, Directory};
pub use faults::Faults;
pub use odata::now_iso;
pub use throttling::{Budget, Latency, Limits, Span, resource_units, sends_retry_after};

use gate::gate;
use odata::{error, lock, query_params};
use throttling::{limit, release_mail};

/// The application id the token endpoint knows as ours (the development registration).
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
/// Its client secret.
pub const CLIENT_SECRET: &str = "local-development-only";

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

    /// Azure Resource Manager base URL (`RR_ARM_BASE_URL`).
    pub fn arm_url(&self) -> String {
        self.base.clone()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Directory) -> R) -> R {
        f(&mut lock(&self.dir))
    }

    /// Another application of the tenant sends `method path` (relative to `/v1.0`) now: it
    /// spends the limits it shares with ours (Identity Protection: per tenant, all apps
    /// together) and its own. Returns whether Graph admitted it.
    pub fn other_app_request(&self, tenant: &str, app: &str, method: &Method, path: &str) -> bool {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        self.with(|d| match limit(d, tenant, app, method, path, query) {
            Ok(mail) => {
                if let Some(key) = mail {
                    release_mail(d, &key);
                }
                d.other_apps_admitted += 1;
                true
            }
            Err(_) => false,
        })
    }

    /// Another application of the tenant that reads Identity Protection every `every`
    /// (`GET /identityProtection/riskyUsers`), spending part of the tenant's shared budget
    /// until the task is aborted.
    pub fn spawn_other_app(
        &self,
        tenant: &str,
        app: &str,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let (standin, tenant, app) = (self.clone(), tenant.to_owned(), app.to_owned());
        tokio::spawn(async move {
            loop {
                standin.other_app_request(
                    &tenant,
                    &app,
                    &Method::GET,
                    "/identityProtection/riskyUsers",
                );
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Calls that change something (anything but GET).
    pub fn writes(&self) -> Vec<String> {
        self.with(|d| {
            d.calls
                .iter()
                .map(|(c, _)| c.clone())
                .filter(|c| !c.starts_with("GET ") && !c.starts_with("POST /v1.0/$batch"))
                .collect()
        })
    }
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
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(identity_platform::token),
        )
        .route(
            "/v1.0/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route("/v1.0/subscriptions/{id}", patch(subscriptions::renew))
        .route(
            "/v1.0/subscriptions/{id}/reauthorize",
            post(subscriptions::reauthorize),
        )
        .route("/subscriptions/{*rest}", any(security::arm))
        .fallback(graph)
        .with_state(standin.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "Graph simulator stopped");
        }
    });
    Ok(standin)
}

/// Every `/v1.0` request that no route above takes: `$batch`, or one request served by its
/// area after the gate.
async fn graph(
    axum::extract::State(s): axum::extract::State<GraphSimulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut response = if uri.path() == "/v1.0/$batch" {
        batch::batch(&s, &method, &uri, &headers, &body).await
    } else {
        one(&s, method, uri, headers, body).await
    };
    // Graph's clock, as its `Date` header tells it (hyper adds the host's otherwise).
    let behind = lock(&s.dir).faults.clock_behind;
    if !behind.is_zero() {
        let at = std::time::SystemTime::now() - behind;
        if let Ok(value) = axum::http::HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
            response
                .headers_mut()
                .insert(axum::http::header::DATE, value);
        }
    }
    response
}

/// One request (not a `$batch`): the gate, its area, Graph's latency.
async fn one(
    s: &GraphSimulator,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().strip_prefix("/v1.0").unwrap_or("").to_owned();
    if stalled(s, &method, &path) {
        return std::future::pending().await;
    }
    let (response, mail, latency) = {
        let mut dir = lock(&s.dir);
        dir.http_requests += 1;
        let (response, mail) = dispatch(s, &mut dir, &method, &uri, &headers, &body);
        let path = uri.path().strip_prefix("/v1.0").unwrap_or("");
        (response, mail, dir.latency.of(&method, path))
    };
    // Graph takes a moment to answer; a sendMail holds its mailbox's slot meanwhile (freed
    // when the request ends, even if the caller went away).
    let slot = throttling::MailSlot::new(s.dir.clone(), mail);
    let _answering = throttling::InFlight::new(s.dir.clone());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    drop(slot);
    response
}

/// Whether `method path` is a `sendMail` the [`Faults::stall_mail`] fault holds forever.
pub(crate) fn stalled(s: &GraphSimulator, method: &Method, path: &str) -> bool {
    lock(&s.dir).faults.stall_mail && Budget::of(method, path) == Budget::Mail
}

/// Serves one Graph request (or one `$batch` member) against the directory: the gate, then
/// its area. Admitted: the mailbox slot a sendMail holds until it completes.
pub(crate) fn dispatch(
    s: &GraphSimulator,
    dir: &mut Directory,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Response, Option<String>) {
    match gate(dir, method, uri, headers) {
        Ok(mail) => (serve(s, dir, method, uri, headers, body), mail),
        Err(response) => (*response, None),
    }
}

/// One admitted request as its area sees it.
pub(crate) struct Request<'a> {
    pub s: &'a GraphSimulator,
    pub method: &'a Method,
    /// Path segments under `/v1.0`, percent-decoded.
    pub segments: Vec<&'a str>,
    pub params: std::collections::HashMap<String, String>,
    pub headers: &'a HeaderMap,
    /// The JSON body (`Null` when there is none).
    pub body: Value,
}

/// Answers an admitted request: each area in turn takes the paths it serves.
fn serve(
    s: &GraphSimulator,
    dir: &mut Directory,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let Some(path) = uri.path().strip_prefix("/v1.0") else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid version.");
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
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
    let decoded: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let request = Request {
        s,
        method,
        segments: decoded.iter().map(String::as_str).collect(),
        params: query_params(uri),
        headers,
        body,
    };
    let areas: [fn(&Request<'_>, &mut Directory) -> Option<Response>; 7] = [
        users::route,
        roles::route,
        identity_protection::route,
        signins::route,
        mail::route,
        conditional_access::route,
        security::route,
    ];
    for area in areas {
        if let Some(response) = area(&request, dir) {
            return response;
        }
    }
    error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &format!(
            "Resource not found for the segment '{}'.",
            request.segments.first().unwrap_or(&"")
        ),
    )
}
