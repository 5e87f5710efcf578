//! A simulated Microsoft Graph tenant and identity platform token endpoint, following the
//! documented request and response shapes: `/{tenant}/oauth2/v2.0/token` (for several
//! applications), `/v1.0/users` (`$select`, `$filter=id|userPrincipalName in (…)` with at most
//! 15 values, `$expand=manager[($select=…)]` as documented: one relationship, not with advanced
//! queries, `$levels` only on one user, at most 100 users a page; `PATCH` of several properties
//! at once, `manager`, `transitiveMemberOf`, `revokeSignInSessions`, `sendMail`),
//! `/v1.0/groups/{id}/transitiveMembers/microsoft.graph.user`,
//! `/v1.0/roleManagement/directory/roleAssignments|roleEligibilitySchedules` (`$filter`,
//! `$select`, `$expand=principal[($select=…)]`, nothing else),
//! `/v1.0/directoryRoles(roleTemplateId='…')`, `/v1.0/identityProtection/riskyUsers` (`$filter`
//! on `riskLastUpdatedDateTime` or `riskState`), `/v1.0/auditLogs/signIns` with the exact
//! `$filter` grammar the product uses (and no `$select`, which the API does not support),
//! registration details, `@odata.nextLink` paging, JSON batching validated as Graph validates
//! it (a write needs a body and its `Content-Type`, ids are required and unique, or the whole
//! batch is refused), subscriptions with the validation handshake, errors in the
//! `{"error":{"code","message"}}` envelope, 411 for a bodyless write without `Content-Length`.
//!
//! The published throttle limits are enforced at their documented scope (Identity Protection
//! per tenant for all apps; reports, directory and security per app and tenant; directory
//! reads in resource units as Microsoft costs them ([`resource_units`]); directory writes on
//! directory objects 3,000 per 150 s per app and tenant, 35,000 per 5 min per app and
//! 18,000 per 5 min per tenant for all apps; Outlook per app and mailbox, with 4 requests in
//! flight across every request and batch), each `$batch` member counted, and a request refused
//! by one limit spending nothing of the others. A batch's members run at once, Outlook ones at
//! most four at a time (the rest wait); every request takes the time [`Latency`] says (none by
//! default, [`Latency::MODELLED`] for the burst benchmark). A 429 carries `Retry-After` only
//! where Graph sends one: not for Identity Protection (documented) nor the reports (none
//! documented). The tenant's other apps can spend its shared budget
//! ([`GraphSimulator::other_app_request`]). Faults (429 with `Retry-After`, 503, 403, other
//! refusals) can be injected.
//!
//! Microsoft Sentinel incidents are there too (`sentinel`): Azure Resource Manager's incident
//! comments (`/subscriptions/…`, with an ARM token for `https://management.azure.com/.default`
//! from the same token endpoint) and Graph's `security/incidents`.
//!
//! The test suite runs against it, and `--demo` runs the product against it: nothing it
//! serves can reach a real tenant.

pub mod demo;
pub mod sentinel;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, post};
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

/// The published Microsoft Graph throttle limits the simulator enforces (on by default).
#[derive(Clone, Debug)]
pub struct Limits {
    pub enabled: bool,
    /// Identity Protection and Conditional Access: per tenant for all apps (no Retry-After).
    pub identity_protection: (usize, Duration),
    /// Identity and access reports (sign-ins, registration details): per app per tenant.
    pub reports: (usize, Duration),
    /// Directory resource units per app and tenant (a small tenant: 3,500 per 10 s).
    pub directory: (usize, Duration),
    /// Directory resource units per app across all tenants (150,000 per 20 s).
    pub directory_app: (usize, Duration),
    /// Directory writes per app and tenant (3,000 per 2 min 30 s).
    pub directory_writes: (usize, Duration),
    /// Directory writes per app across all tenants (35,000 per 5 min).
    pub directory_app_writes: (usize, Duration),
    /// Directory writes per tenant for all apps (18,000 per 5 min).
    pub directory_tenant_writes: (usize, Duration),
    /// Outlook: requests per app per mailbox (10,000 per 10 min).
    pub mail: (usize, Duration),
    /// Outlook: concurrent requests per app per mailbox.
    pub mail_concurrency: usize,
    /// Security incidents (the Defender XDR incidents API): per app per tenant, per minute
    /// and per hour.
    pub security: (usize, Duration),
    pub security_hourly: (usize, Duration),
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            enabled: true,
            identity_protection: (1, Duration::from_secs(1)),
            reports: (5, Duration::from_secs(10)),
            directory: (3500, Duration::from_secs(10)),
            directory_app: (150_000, Duration::from_secs(20)),
            directory_writes: (3000, Duration::from_secs(150)),
            directory_app_writes: (35_000, Duration::from_secs(300)),
            directory_tenant_writes: (18_000, Duration::from_secs(300)),
            mail: (10_000, Duration::from_secs(600)),
            mail_concurrency: 4,
            security: (50, Duration::from_secs(60)),
            security_hourly: (1500, Duration::from_secs(3600)),
        }
    }
}

/// How long the stand-in takes to answer a request, or a `$batch` member, once admitted: the
/// time Graph spends on it as the client sees it. A `sendMail` holds its mailbox's concurrency
/// slot for this long.
///
/// [`Latency::INSTANT`] (the default, what the tests use) answers at once but holds a sendMail
/// 2 ms, so Outlook's concurrency limit stays observable. [`Latency::MODELLED`] is what the
/// burst benchmark runs against. Microsoft publishes no latency figures for these APIs (no SLA
/// on response time, no percentiles in the throttling or batching documentation), so its values
/// are stated assumptions, conservative for a Graph front end in the same geography: 150 ms for
/// a directory, Identity Protection, reports or security read or write, 600 ms for Outlook to
/// accept a `sendMail` (the message is saved, then handed to transport; reported sends take
/// from about half a second to a second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// Any GET.
    pub read: Duration,
    /// Any other write (PATCH, POST, PUT, DELETE), `sendMail` excepted.
    pub write: Duration,
    /// `POST /users/{id}/sendMail`.
    pub mail: Duration,
}

impl Latency {
    /// Answers at once; a sendMail holds its mailbox 2 ms.
    pub const INSTANT: Latency = Latency {
        read: Duration::ZERO,
        write: Duration::ZERO,
        mail: Duration::from_millis(2),
    };

    /// The modelled latency (assumptions, see the type's documentation): 150 ms reads and
    /// writes, 600 ms sendMail.
    pub const MODELLED: Latency = Latency {
        read: Duration::from_millis(150),
        write: Duration::from_millis(150),
        mail: Duration::from_millis(600),
    };

    /// How long `method path` (under `/v1.0`) takes.
    pub fn of(&self, method: &Method, path: &str) -> Duration {
        if Budget::of(method, path) == Budget::Mail {
            self.mail
        } else if *method == Method::GET {
            self.read
        } else {
            self.write
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::INSTANT
    }
}

/// Which published limit a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Budget {
    IdentityProtection,
    Reports,
    Directory,
    Mail,
    Security,
}

impl Budget {
    /// The budget of `path` (under `/v1.0`) as Graph's throttling documentation groups it.
    pub fn of(method: &Method, path: &str) -> Budget {
        let lower = path.to_ascii_lowercase();
        if lower.starts_with("/identityprotection/")
            || lower.starts_with("/identity/conditionalaccess/")
        {
            Budget::IdentityProtection
        } else if lower.starts_with("/auditlogs/") || lower.starts_with("/reports/") {
            Budget::Reports
        } else if *method == Method::POST
            && lower.starts_with("/users/")
            && lower.ends_with("/sendmail")
        {
            Budget::Mail
        } else if lower.starts_with("/security/") {
            Budget::Security
        } else {
            Budget::Directory
        }
    }
}

/// Requests admitted per (tenant, budget or mailbox), for the sliding windows.
#[derive(Default)]
pub struct Windows {
    log: HashMap<String, VecDeque<Instant>>,
}

impl Windows {
    /// Admits a request under `key` if fewer than `limit` were admitted within `window`;
    /// otherwise returns how long until one leaves the window.
    fn admit(&mut self, key: String, limit: (usize, Duration)) -> Result<(), Duration> {
        self.admit_all(&[(key, limit, 1)])
    }

    /// Admits a request costing `cost` under each key (a request, or its resource units) at
    /// once, or under none: a request refused by one limit spends nothing of the others (Graph
    /// throttles only the requests that exceed a limit). Refused: how long until every window
    /// has room.
    fn admit_all(&mut self, limits: &[(String, (usize, Duration), usize)]) -> Result<(), Duration> {
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for (key, (limit, window), cost) in limits {
            let log = self.log.entry(key.clone()).or_default();
            while log
                .front()
                .is_some_and(|t| now.duration_since(*t) >= *window)
            {
                log.pop_front();
            }
            if log.len() + cost > *limit {
                let freeing = (log.len() + cost - limit).clamp(1, log.len().max(1));
                let until = log
                    .get(freeing - 1)
                    .map_or(*window, |t| window.saturating_sub(now.duration_since(*t)));
                wait = wait.max(until.max(Duration::from_millis(1)));
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (key, _, cost) in limits {
            let log = self.log.entry(key.clone()).or_default();
            log.extend(std::iter::repeat_n(now, *cost));
        }
        Ok(())
    }
}

/// The directory objects whose writes count against the directory write quota: the same list
/// the client's limiter classifies by (both from Microsoft's identity and access service
/// limits).
use crate::graph::limiter::DIRECTORY_OBJECTS;

/// The directory resource units a request costs, as Microsoft's identity and access service
/// limits count them: its path's base cost (`GET users` 2, `groups/{id}/members` 3,
/// `groups/{id}/transitiveMembers` 5, … any other 1), one less with `$select`, one more with
/// `$expand`, one less with `$top` under 20, never under 1. What `me/` costs, `users/{id}/`
/// costs too.
pub fn resource_units(method: &Method, path: &str, query: &str) -> usize {
    let lower = path.to_ascii_lowercase();
    let mut segments: Vec<&str> = lower.trim_start_matches('/').split('/').collect();
    if segments.first() == Some(&"users") && segments.len() > 2 {
        segments.splice(0..2, ["me"]);
    }
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let selected = params.contains_key("$select");
    let base: i64 = match segments.as_slice() {
        ["applications"] if get => 2,
        ["applications", _, "extensionproperties"] if get => 2,
        ["contracts"] if get => 3,
        ["directoryobjects", "getbyids"] | ["getobjectsbyid"] if post => {
            return if selected { 2 } else { 5 };
        }
        ["domains", _, "domainnamereferences"] if get => 4,
        ["groups", _, "members", ..] if get => 3,
        ["groups", _, "transitivemembers", ..] if get => 5,
        ["ismemberof"] | ["me", "checkmembergroups"] | ["me", "checkmemberobjects"] if post => 4,
        ["me", "getmembergroups"] | ["me", "getmemberobjects"] if post => 2,
        [
            "me",
            "licensedetails" | "memberof" | "ownedobjects" | "transitivememberof",
            ..,
        ] if get => 2,
        ["oauth2permissiongrants"] | ["oauth2permissiongrants", _] if get => 2,
        ["serviceprincipals", _, "approleassignments"] if get => 2,
        ["subscribedskus"] if get => 3,
        ["users"] if get => 2,
        _ => 1,
    };
    let top_under_20 = params
        .get("$top")
        .and_then(|t| t.parse::<u32>().ok())
        .is_some_and(|t| t < 20);
    let cost = base - i64::from(selected) + i64::from(params.contains_key("$expand"))
        - i64::from(top_under_20);
    cost.max(1) as usize
}

/// Whether `method path` is a write on a directory object (POST, PATCH, PUT, DELETE).
fn directory_write(method: &Method, path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let first = lower.trim_start_matches('/').split(['/', '(']).next();
    !matches!(*method, Method::GET | Method::HEAD)
        && first.is_some_and(|first| DIRECTORY_OBJECTS.contains(&first))
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
    /// userId -> `userRegistrationDetails` (authentication-method registration).
    pub registrations: HashMap<String, Value>,
    /// Conditional Access policies.
    pub ca_policies: Vec<Value>,
    /// roleTemplateId -> id of the tenant's activated directory role.
    pub directory_roles: HashMap<String, String>,
    pub mails: Vec<(String, Value)>,
    /// Every Graph call as "METHOD /path?query", with when it arrived.
    pub calls: Vec<(String, Instant)>,
    pub token_requests: usize,
    /// Passwords set through `PATCH /users/{id}` (a `passwordProfile`).
    pub password_resets: usize,
    /// Each `PATCH /users/{id}` Graph accepted: the user and the properties its body set
    /// (names only, never values: no password is kept here).
    pub user_patches: Vec<(String, Vec<String>)>,
    /// Access tokens issued, and the tenant each is for.
    pub issued: HashMap<String, String>,
    /// Access tokens issued, and the application (client id) each is for: Graph's limits are
    /// kept per app and tenant, per tenant for all apps, or per app and mailbox.
    pub token_apps: HashMap<String, String>,
    /// Other applications the token endpoint knows (client id -> client secret), besides
    /// [`CLIENT_ID`]: the tenant's other apps, which share its Identity Protection budget.
    pub apps: HashMap<String, String>,
    /// Users whose sessions were revoked (`revokeSignInSessions` answered 200).
    pub revoked: Vec<String>,
    /// Every `$batch` that passed validation, as its members ("METHOD url"), in order.
    pub batches: Vec<Vec<String>>,
    /// How long each request takes (a sendMail holds its mailbox's concurrency slot this
    /// long); [`Latency::INSTANT`] unless set.
    pub latency: Latency,
    /// Requests of the tenant's other applications that Graph admitted (see
    /// [`GraphSimulator::other_app_request`]).
    pub other_apps_admitted: usize,
    /// Groups of the tenant (ids); any id in `member_of` that is not a directory role is a
    /// group too.
    pub groups: Vec<String>,
    /// PIM: (principalId, roleDefinitionId) of role eligibilities (`roleEligibilitySchedules`).
    pub role_eligibilities: Vec<(String, String)>,
    /// (principalId, roleDefinitionId) of active role assignments besides the members of the
    /// activated roles in `directory_roles` (e.g. a role-assignable group holding a role).
    pub role_assignments: Vec<(String, String)>,
    pub faults: Faults,
    pub certificate: Option<CertificateCredential>,
    pub page_size: usize,
    pub subscriptions: Vec<Value>,
    pub reauthorized: Vec<String>,
    /// The throttle limits enforced.
    pub limits: Limits,
    pub windows: Windows,
    /// Requests answered 429, per budget.
    pub throttled: HashMap<Budget, usize>,
    /// Requests admitted, per budget (members of a `$batch` count one each).
    pub admitted: HashMap<Budget, usize>,
    /// Directory resource units admitted, of every application ([`resource_units`]).
    pub resource_units: usize,
    /// HTTP requests received on `/v1.0` (a `$batch` counts once).
    pub http_requests: usize,
    /// sendMail requests being served per app and mailbox (`{app}|{mailbox}`), across every
    /// request and `$batch` (Outlook's concurrency limit).
    pub mail_in_flight: HashMap<String, usize>,
    /// Microsoft Sentinel: incidents and their comments (ARM), Defender incidents (Graph).
    pub sentinel: sentinel::Sentinel,
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

    /// Azure Resource Manager base URL (`RR_ARM_BASE_URL`).
    pub fn arm_url(&self) -> String {
        self.base.clone()
    }

    /// An incident commenter over this simulator for `path`, with the application and
    /// credential of `graph`.
    pub fn incident_commenter(
        &self,
        graph: &Arc<crate::graph::GraphClient>,
        path: crate::cases::writeback::CommentPath,
        max_attempts: u32,
    ) -> crate::respond::writeback::IncidentCommenter {
        use crate::respond::writeback::{ARM_SCOPE, ArmClient, IncidentCommenter};
        match path {
            crate::cases::writeback::CommentPath::Graph => IncidentCommenter::graph(graph.clone()),
            crate::cases::writeback::CommentPath::Arm => {
                let retry = crate::graph::RetryPolicy {
                    max_attempts,
                    base_delay: std::time::Duration::from_millis(5),
                    max_delay: std::time::Duration::from_secs(5),
                    request_timeout: std::time::Duration::from_secs(5),
                    max_pages: 50,
                };
                let tokens = Arc::new(graph.tokens().with_scope(ARM_SCOPE));
                let arm = ArmClient::new(reqwest::Client::new(), self.arm_url(), tokens, retry);
                IncidentCommenter::arm(arm, graph.clone())
            }
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Directory) -> R) -> R {
        f(&mut lock(&self.dir))
    }

    /// A Graph client for this simulator: `credential`, `max_attempts`, millisecond backoff,
    /// and an in-process limiter using the whole Identity Protection budget.
    pub fn client(
        &self,
        credential: crate::graph::ClientCredential,
        max_attempts: u32,
    ) -> Arc<crate::graph::GraphClient> {
        self.client_with(
            credential,
            max_attempts,
            Arc::new(crate::graph::limiter::LocalLimiter::new(
                crate::graph::limiter::Limits::published(1.0),
            )),
        )
    }

    /// As [`GraphSimulator::client`], with `limiter`.
    pub fn client_with(
        &self,
        credential: crate::graph::ClientCredential,
        max_attempts: u32,
        limiter: Arc<dyn crate::graph::limiter::RateLimiter>,
    ) -> Arc<crate::graph::GraphClient> {
        self.client_of_workers(credential, max_attempts, limiter, 1)
    }

    /// As [`GraphSimulator::client_with`], for one of `workers` processes running at once
    /// (each keeps to its share of a mailbox's concurrent requests).
    pub fn client_of_workers(
        &self,
        credential: crate::graph::ClientCredential,
        max_attempts: u32,
        limiter: Arc<dyn crate::graph::limiter::RateLimiter>,
        workers: usize,
    ) -> Arc<crate::graph::GraphClient> {
        Arc::new(
            self.bare_client(CLIENT_ID, credential, max_attempts)
                .with_limiter(limiter)
                .with_concurrent_workers(workers),
        )
    }

    /// A Graph client of application `app_id` for this simulator, with its own token provider
    /// and millisecond backoff, before any limiter is set.
    fn bare_client(
        &self,
        app_id: &str,
        credential: crate::graph::ClientCredential,
        max_attempts: u32,
    ) -> crate::graph::GraphClient {
        use crate::graph::{GraphClient, TokenProvider};
        let http = reqwest::Client::new();
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            self.authority(),
            app_id,
            credential,
            "https://graph.microsoft.com/.default",
        ));
        GraphClient::new(http, self.graph_url(), tokens, test_retry(max_attempts))
    }

    /// A client as a deployed worker has it (`app::shared_graph_client`): one of `workers`
    /// processes sharing `ledger`, whose Identity Protection and reports windows and whose
    /// mailboxes' concurrent requests it keeps there, using `identity_protection_share` of the
    /// tenant's Identity Protection budget.
    pub fn shared_client(
        &self,
        credential: crate::graph::ClientCredential,
        max_attempts: u32,
        ledger: &crate::ledger::Ledger,
        identity_protection_share: f64,
        workers: usize,
    ) -> Arc<crate::graph::GraphClient> {
        let limiter = Arc::new(crate::graph::limiter::SharedLimiter::new(
            ledger.clone(),
            crate::graph::limiter::Limits::published(identity_protection_share),
        ));
        Arc::new(
            self.bare_client(CLIENT_ID, credential, max_attempts)
                .with_limiter(limiter)
                .with_concurrent_workers(workers)
                .with_shared_mail_slots(ledger.clone()),
        )
    }

    /// A client of application `app_id` (registered in [`Directory::apps`] with `secret`),
    /// with an in-process limiter.
    pub fn app_client(
        &self,
        app_id: &str,
        secret: &str,
        max_attempts: u32,
    ) -> Arc<crate::graph::GraphClient> {
        let secret = crate::secrets::SecretString::new(secret);
        Arc::new(
            self.bare_client(
                app_id,
                crate::graph::ClientCredential::Secret(secret),
                max_attempts,
            )
            .with_limiter(Arc::new(crate::graph::limiter::LocalLimiter::new(
                crate::graph::limiter::Limits::published(1.0),
            ))),
        )
    }

    /// A client with the right client secret.
    pub fn secret_client(&self, max_attempts: u32) -> Arc<crate::graph::GraphClient> {
        let secret = crate::secrets::SecretString::new(CLIENT_SECRET);
        self.client(crate::graph::ClientCredential::Secret(secret), max_attempts)
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

/// Retries for clients of the stand-in: `max_attempts`, millisecond backoff, short timeouts.
fn test_retry(max_attempts: u32) -> crate::graph::RetryPolicy {
    crate::graph::RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        max_pages: 50,
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
        .route("/subscriptions/{*rest}", any(sentinel::arm))
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
    // Graph, or Azure Resource Manager (incident comments).
    let arm =
        form.get("scope").map(String::as_str) == Some("https://management.azure.com/.default");
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let expected_secret = if client_id == CLIENT_ID {
        Some(CLIENT_SECRET.to_owned())
    } else {
        dir.apps.get(&client_id).cloned()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || expected_secret.is_none()
        || (form.get("scope").map(String::as_str) != Some("https://graph.microsoft.com/.default")
            && !arm)
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
    } else if form.get("client_secret") != expected_secret.as_ref() {
        return invalid_client("AADSTS7000215: Invalid client secret provided.");
    }
    let access_token = if arm {
        let token = format!("standin-arm-token-{}-{}", tenant, uuid::Uuid::new_v4());
        dir.sentinel.issued.insert(token.clone(), tenant.clone());
        token
    } else {
        let token = format!("standin-token-{}-{}", tenant, uuid::Uuid::new_v4());
        dir.issued.insert(token.clone(), tenant.clone());
        dir.token_apps.insert(token.clone(), client_id.clone());
        token
    };
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

/// Whether Graph sends `Retry-After` with a 429 of `budget`. Identity Protection and
/// Conditional Access document that they do not; the identity and access reports (sign-ins,
/// registration details) do not document one either, so the stand-in sends none and the client
/// must cope without it. Directory, Outlook and the security API send it.
pub fn sends_retry_after(budget: Budget) -> bool {
    !matches!(budget, Budget::IdentityProtection | Budget::Reports)
}

/// Checks one request (or one member of a `$batch`) of application `app` against the
/// published limits, each kept at its documented scope: Identity Protection per tenant for all
/// apps; reports, directory and security per app and tenant (directory resource units and
/// writes also per app, writes also per tenant for all apps); Outlook per app and mailbox, with at most `mail_concurrency` requests in flight.
/// Admitted: the mailbox slot it holds until it completes (release it with
/// [`release_mail`]); throttled: how long until the window frees a slot.
fn limit(
    dir: &mut Directory,
    tenant: &str,
    app: &str,
    method: &Method,
    path: &str,
    query: &str,
) -> Result<Option<String>, Duration> {
    if !dir.limits.enabled {
        return Ok(None);
    }
    let limits = dir.limits.clone();
    match Budget::of(method, path) {
        Budget::IdentityProtection => dir
            .windows
            .admit(
                format!("{tenant}|identity-protection"),
                limits.identity_protection,
            )
            .map(|()| None),
        Budget::Reports => dir
            .windows
            .admit(format!("{tenant}|{app}|reports"), limits.reports)
            .map(|()| None),
        Budget::Directory => {
            let units = resource_units(method, path, query);
            let mut windows = vec![
                (format!("{tenant}|{app}|directory"), limits.directory, units),
                (format!("{app}|directory"), limits.directory_app, units),
            ];
            if directory_write(method, path) {
                windows.extend([
                    (
                        format!("{tenant}|{app}|directory-writes"),
                        limits.directory_writes,
                        1,
                    ),
                    (
                        format!("{app}|directory-writes"),
                        limits.directory_app_writes,
                        1,
                    ),
                    (
                        format!("{tenant}|directory-writes"),
                        limits.directory_tenant_writes,
                        1,
                    ),
                ]);
            }
            dir.windows.admit_all(&windows)?;
            dir.resource_units += units;
            Ok(None)
        }
        Budget::Security => dir
            .windows
            .admit_all(&[
                (format!("{tenant}|{app}|security"), limits.security, 1),
                (
                    format!("{tenant}|{app}|security-hourly"),
                    limits.security_hourly,
                    1,
                ),
            ])
            .map(|()| None),
        Budget::Mail => {
            let mailbox = path.split('/').nth(2).unwrap_or("").to_ascii_lowercase();
            let key = format!("{app}|{mailbox}");
            let in_flight = dir.mail_in_flight.get(&key).copied().unwrap_or(0);
            if in_flight >= limits.mail_concurrency {
                return Err(Duration::from_secs(1));
            }
            dir.windows.admit(format!("{key}|window"), limits.mail)?;
            *dir.mail_in_flight.entry(key.clone()).or_default() += 1;
            Ok(Some(key))
        }
    }
}

/// Ends a sendMail request admitted by [`limit`] (its mailbox slot is free again).
fn release_mail(dir: &mut Directory, key: &str) {
    if let Some(n) = dir.mail_in_flight.get_mut(key) {
        *n = n.saturating_sub(1);
    }
}

/// Applies the published throttle limits to one request (or one member of a `$batch`) of our
/// application, counting it; a 429 carries `Retry-After` only where Graph sends one.
fn throttle(
    dir: &mut Directory,
    tenant: &str,
    app: &str,
    method: &Method,
    path: &str,
    query: &str,
) -> Result<Option<String>, Box<Response>> {
    let budget = Budget::of(method, path);
    match limit(dir, tenant, app, method, path, query) {
        Ok(mail) => {
            *dir.admitted.entry(budget).or_default() += 1;
            Ok(mail)
        }
        Err(wait) => {
            *dir.throttled.entry(budget).or_default() += 1;
            let mut response = if budget == Budget::Mail {
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                )
            } else {
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Too many requests are being sent. Please retry later.",
                )
            };
            if sends_retry_after(budget) {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from(seconds.max(1)));
            }
            Err(Box::new(response))
        }
    }
}

/// Records the call, checks the bearer token, applies the limits and injected faults. Admitted:
/// the mailbox slot a sendMail holds until it completes (see [`release_mail`]).
fn gate(
    dir: &mut Directory,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<String>, Box<Response>> {
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
        return Err(Box::new(
            (
                StatusCode::LENGTH_REQUIRED,
                [("content-type", "text/html; charset=us-ascii")],
                "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n<HTML><HEAD><TITLE>Length Required</TITLE></HEAD><BODY><h2>Length Required</h2><hr><p>HTTP Error 411. The request must be chunked or have a content length.</p></BODY></HTML>\r\n",
            )
                .into_response(),
        ));
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        None => {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token is empty.",
            )));
        }
        Some(token) if !dir.issued.contains_key(token) => {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
            )));
        }
        _ => {}
    }
    let tenant = bearer
        .and_then(|t| dir.issued.get(t))
        .cloned()
        .unwrap_or_default();
    let app = bearer
        .and_then(|t| dir.token_apps.get(t))
        .cloned()
        .unwrap_or_default();
    let path = uri.path().strip_prefix("/v1.0").unwrap_or("");
    // The `$batch` envelope counts nothing: each member counts against its own limit.
    let mail = if path == "/$batch" {
        None
    } else {
        throttle(dir, &tenant, &app, method, path, uri.query().unwrap_or(""))?
    };
    // Past this point a refusal frees the mailbox slot at once.
    let refuse = |dir: &mut Directory, response: Response| {
        if let Some(key) = &mail {
            release_mail(dir, key);
        }
        Err(Box::new(response))
    };
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
        return refuse(dir, response);
    }
    let matches = |list: &[(Method, String)]| {
        list.iter()
            .any(|(m, prefix)| m == method && path.starts_with(prefix.as_str()))
    };
    if dir.faults.unavailable_next > 0 || matches(&dir.faults.unavailable_paths) {
        dir.faults.unavailable_next = dir.faults.unavailable_next.saturating_sub(1);
        return refuse(
            dir,
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "The service is temporarily unavailable.",
            ),
        );
    }
    let refused = dir
        .faults
        .refused_paths
        .iter()
        .find(|(m, prefix, _)| m == method && path.starts_with(prefix.as_str()))
        .map(|(_, _, status)| *status);
    if let Some(status) = refused {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return refuse(dir, error(status, "BadRequest", "The request was refused."));
    }
    if matches(&dir.faults.forbidden) {
        return refuse(
            dir,
            error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
        );
    }
    Ok(mail)
}

async fn graph(
    State(s): State<GraphSimulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() == "/v1.0/$batch" {
        return batch(&s, &method, &uri, &headers, &body).await;
    }
    let (response, mail, latency) = {
        let mut dir = lock(&s.dir);
        dir.http_requests += 1;
        let (response, mail) = dispatch(&s, &mut dir, &method, &uri, &headers, &body);
        let path = uri.path().strip_prefix("/v1.0").unwrap_or("");
        (response, mail, dir.latency.of(&method, path))
    };
    // Graph takes a moment to answer; a sendMail holds its mailbox's slot meanwhile.
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(key) = mail {
        release_mail(&mut lock(&s.dir), &key);
    }
    response
}

/// Outlook members of one `$batch` that Graph runs at a time, whatever their mailboxes (the rest
/// wait their turn, they are not refused): "Microsoft Graph sends the Outlook service up to four
/// individual requests from the batch at a time, regardless of the target mailboxes" (Microsoft
/// Graph service-specific throttling limits, *Outlook service limits for JSON batching*).
pub const OUTLOOK_BATCH_PARALLELISM: usize = 4;

/// Most requests in one `$batch` (Graph's limit).
pub const BATCH_MAX: usize = 20;

/// A refusal of a whole `$batch` (400, Graph's error envelope): nothing in it runs.
fn bad_batch(message: &str) -> Box<Response> {
    Box::new(error(StatusCode::BAD_REQUEST, "BadRequest", message))
}

/// Validates a `$batch` body as Graph does before running any member: 1 to 20 requests, each
/// with an `id` unique in the batch (ids are not case-sensitive), a method and a url; a write
/// (POST, PATCH, PUT) must carry a body and a `Content-Type` header, and so must any request
/// with a body. Graph refuses the whole batch otherwise.
fn check_batch(body: &Bytes) -> Result<Vec<Value>, Box<Response>> {
    let parsed: Value =
        serde_json::from_slice(body).map_err(|_| bad_batch("Invalid batch payload format."))?;
    let requests = parsed["requests"]
        .as_array()
        .cloned()
        .ok_or_else(|| bad_batch("Invalid batch payload format."))?;
    if requests.is_empty() || requests.len() > BATCH_MAX {
        return Err(bad_batch(
            "Invalid batch payload format: the number of requests must be between 1 and 20.",
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for request in &requests {
        let Some(id) = request["id"].as_str().filter(|id| !id.trim().is_empty()) else {
            return Err(bad_batch(
                "Invalid batch payload format: every request needs an id.",
            ));
        };
        if !ids.insert(id.to_ascii_lowercase()) {
            return Err(bad_batch(&format!(
                "Invalid batch payload format: request id '{id}' is not unique in the batch."
            )));
        }
        let method = request["method"].as_str().unwrap_or_default();
        if request["url"].as_str().is_none_or(str::is_empty)
            || Method::from_bytes(method.as_bytes()).is_err()
        {
            return Err(bad_batch(&format!(
                "Invalid batch payload format: request id '{id}' needs a method and a url."
            )));
        }
        let write = matches!(
            method.to_ascii_uppercase().as_str(),
            "POST" | "PATCH" | "PUT"
        );
        let has_body = !matches!(request.get("body"), None | Some(Value::Null));
        let content_type = request["headers"].as_object().is_some_and(|h| {
            h.iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.is_string())
        });
        if (write || has_body) && !(has_body && content_type) {
            return Err(bad_batch(&format!(
                "Write request id : {id} does not contain Content-Type header or body."
            )));
        }
    }
    Ok(requests)
}

/// `POST /$batch`: JSON batching. The batch is validated first (see [`check_batch`]); then its
/// members run at once, as Graph runs them, each counted against its own limit, and the batch
/// is answered when the last one is done. Outlook members run at most
/// [`OUTLOOK_BATCH_PARALLELISM`] at a time, the others queued behind them; each holds its
/// mailbox's concurrency slot while it runs, so a batch alone never exceeds a mailbox's four,
/// while other requests and batches in flight to the same mailbox (from any worker) count too:
/// past four, a member is answered 429 as Outlook does. `dependsOn` is not modelled (the
/// product does not use it).
async fn batch(
    s: &GraphSimulator,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let requests = {
        let mut dir = lock(&s.dir);
        dir.http_requests += 1;
        if let Err(response) = gate(&mut dir, method, uri, headers) {
            return *response;
        }
        match check_batch(body) {
            Ok(requests) => requests,
            Err(response) => return *response,
        }
    };
    let authorization = headers.get("authorization").cloned();
    {
        let mut dir = lock(&s.dir);
        dir.batches.push(
            requests
                .iter()
                .map(|r| {
                    format!(
                        "{} {}",
                        r["method"]
                            .as_str()
                            .unwrap_or_default()
                            .to_ascii_uppercase(),
                        r["url"].as_str().unwrap_or_default()
                    )
                })
                .collect(),
        );
    }
    let outlook = Arc::new(tokio::sync::Semaphore::new(OUTLOOK_BATCH_PARALLELISM));
    let members = requests
        .into_iter()
        .map(|request| batch_member(s, request, authorization.clone(), outlook.clone()));
    let responses = futures_util::future::join_all(members).await;
    axum::Json(json!({ "responses": responses })).into_response()
}

/// Runs one `$batch` member: waits for its turn if it is an Outlook request, is admitted or
/// refused, takes its time, and gives its answer as the batch carries it.
async fn batch_member(
    s: &GraphSimulator,
    request: Value,
    authorization: Option<axum::http::HeaderValue>,
    outlook: Arc<tokio::sync::Semaphore>,
) -> Value {
    let id = request["id"].as_str().unwrap_or_default().to_owned();
    let method = Method::from_bytes(
        request["method"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_uppercase()
            .as_bytes(),
    )
    .unwrap_or(Method::GET);
    let url = request["url"].as_str().unwrap_or_default();
    let Ok(member_uri) = format!(
        "/v1.0{}",
        if url.starts_with('/') {
            url.to_owned()
        } else {
            format!("/{url}")
        }
    )
    .parse::<Uri>() else {
        return json!({"id": id, "status": 400, "body": {"error": {"code": "BadRequest", "message": "Invalid url."}}});
    };
    let body = match request.get("body") {
        Some(Value::Null) | None => Bytes::new(),
        Some(b) => Bytes::from(b.to_string()),
    };
    let mut member_headers = HeaderMap::new();
    // The member's own headers (e.g. `ConsistencyLevel`); not its authorization or length.
    for (name, value) in request["headers"].as_object().into_iter().flatten() {
        if let (Ok(name), Some(Ok(value))) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            value.as_str().map(axum::http::HeaderValue::from_str),
        ) {
            member_headers.insert(name, value);
        }
    }
    if let Some(auth) = authorization {
        member_headers.insert("authorization", auth);
    }
    // Validated above: a write member has a body, whose length the JSON gives.
    member_headers.insert("content-length", axum::http::HeaderValue::from(body.len()));
    let path = member_uri
        .path()
        .strip_prefix("/v1.0")
        .unwrap_or("")
        .to_owned();
    // Graph hands Outlook a batch's requests four at a time: the rest wait, they are not refused.
    let _turn = if Budget::of(&method, &path) == Budget::Mail {
        outlook.acquire_owned().await.ok()
    } else {
        None
    };
    let (response, mail, latency) = {
        let mut dir = lock(&s.dir);
        let (response, mail) = dispatch(s, &mut dir, &method, &member_uri, &member_headers, &body);
        (response, mail, dir.latency.of(&method, &path))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(key) = mail {
        release_mail(&mut lock(&s.dir), &key);
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut member = json!({"id": id, "status": parts.status.as_u16()});
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        if let Ok(v) = value.to_str() {
            headers.insert(name.as_str().to_owned(), Value::String(v.to_owned()));
        }
    }
    member["headers"] = Value::Object(headers);
    if !bytes.is_empty() {
        member["body"] = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    }
    member
}

/// Serves one Graph request (or one `$batch` member) against the directory.
fn dispatch(
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

/// Answers an admitted request.
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
    let params = query_params(uri);

    let advanced = headers
        .get("consistencylevel")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["users", id]) => {
            let expand = match user_expand(&params, true, advanced) {
                Ok(expand) => expand,
                Err(response) => return *response,
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
        (Method::PATCH, ["users", id]) => patch_user(dir, id, body),
        (Method::GET, ["users"]) => list_users(s, dir, &params, advanced),
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
        (Method::GET, ["groups", id, "transitiveMembers", "microsoft.graph.user"]) => {
            group_user_members(s, dir, id, &params)
        }
        (
            Method::GET,
            [
                "roleManagement",
                "directory",
                kind @ ("roleAssignments" | "roleEligibilitySchedules"),
            ],
        ) => role_principals(s, dir, kind, &params),
        (Method::GET, ["users", id, "manager"]) => {
            let Some(user) = find_user(dir, id) else {
                return user_not_found(id);
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
            let Some(user) = find_user(dir, id) else {
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
        (Method::GET, ["identityProtection", "riskyUsers"]) => risky_users(s, dir, &params),
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
        (Method::GET, ["reports", "authenticationMethods", "userRegistrationDetails", id]) => {
            registration_details(dir, id, &params)
        }
        (Method::GET, ["identity", "conditionalAccess", "policies"]) => axum::Json(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#identity/conditionalAccess/policies",
            "value": dir.ca_policies,
        }))
        .into_response(),
        (Method::POST, ["identity", "conditionalAccess", "policies"]) => {
            create_ca_policy(dir, body)
        }
        (Method::GET, ["auditLogs", "signIns"]) => sign_ins(s, dir, &params),
        (Method::GET, ["security", "incidents", id]) => sentinel::defender_get(&dir.sentinel, id),
        (Method::POST, ["security", "incidents", id, "comments"]) => {
            sentinel::defender_comment(&mut dir.sentinel, id, &body)
        }
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

/// `POST /identity/conditionalAccess/policies`: the documented shape, checked as Graph checks
/// it (display name, state, conditions with users and applications, grant controls).
fn create_ca_policy(dir: &mut Directory, body: Value) -> Response {
    let bad = |message: &str| error(StatusCode::BAD_REQUEST, "BadRequest", message);
    if body["displayName"].as_str().is_none_or(str::is_empty) {
        return bad("displayName is required.");
    }
    let state = body["state"].as_str().unwrap_or("");
    if !matches!(
        state,
        "enabled" | "disabled" | "enabledForReportingButNotEnforced"
    ) {
        return bad("Invalid state.");
    }
    let conditions = &body["conditions"];
    if !conditions["users"].is_object() || !conditions["applications"].is_object() {
        return bad("conditions.users and conditions.applications are required.");
    }
    let levels = conditions["userRiskLevels"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if levels
        .iter()
        .any(|l| !matches!(l.as_str(), Some("low" | "medium" | "high")))
    {
        return bad("Invalid userRiskLevels.");
    }
    let controls = &body["grantControls"];
    let built_in: Vec<&str> = controls["builtInControls"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if built_in.contains(&"passwordChange")
        && (controls["operator"] != "AND" || !built_in.contains(&"mfa"))
    {
        return bad("passwordChange must be combined with mfa using the AND operator.");
    }
    let mut policy = body.clone();
    policy["id"] = uuid::Uuid::new_v4().to_string().into();
    policy["createdDateTime"] = now_iso().into();
    dir.ca_policies.push(policy.clone());
    (StatusCode::CREATED, axum::Json(policy)).into_response()
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

/// `PATCH /users/{id}`: several properties at once, as Graph's Update user takes them (the
/// body is checked whole before anything changes). Records which properties each PATCH set.
fn patch_user(dir: &mut Directory, id: &str, body: Value) -> Response {
    let Some(index) = dir.users.iter().position(|u| u["id"].as_str() == Some(id)) else {
        return user_not_found(id);
    };
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

/// `GET /identityProtection/riskyUsers[?$filter=riskLastUpdatedDateTime ge|gt {iso}]`, with
/// `$select` and `$top` (at most 500), paged with `@odata.nextLink`.
fn risky_users(s: &GraphSimulator, dir: &Directory, params: &HashMap<String, String>) -> Response {
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

/// `$filter=[userId eq '{guid}' and ]status/errorCode eq {n} and createdDateTime ge {iso}[ and
/// createdDateTime le {iso}]`, exactly; anything else is refused as Graph refuses unsupported
/// queries.
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

/// A page of `items` at `path` (under `/v1.0`), `page` a page, continued with `$skiptoken`.
fn page_of(
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
fn directory_top(params: &HashMap<String, String>) -> Result<usize, Box<Response>> {
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
fn filter_values(filter: &str, property: &str) -> Option<Vec<String>> {
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

/// What a user read expands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UserExpand {
    None,
    /// `manager`, with the properties of its `$select` (all when `None`).
    Manager(Option<String>),
}

/// `$expand` on users, as Microsoft Graph documents it ("Use query parameters", "List
/// manager"): one relationship per request; `manager`, `directReports` and `memberOf` can be
/// expanded (this stand-in models `manager`; the other two answer 501), nothing else; inside
/// `manager(…)`, `$select`, and `$levels` on a single user only (not modelled here: 501);
/// never with an advanced query (`$count`, `$search`, `ConsistencyLevel: eventual`).
fn user_expand(
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
fn expand_user(dir: &Directory, user: &Value, out: &mut Value, expand: &UserExpand) {
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
fn list_users(
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
    let mut users: Vec<Value> = dir.users.clone();
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

/// Whether `id` is a group of the directory (listed, or a non-role id in `member_of`).
fn group_exists(dir: &Directory, id: &str) -> bool {
    let is_role = dir.directory_roles.values().any(|r| r == id);
    dir.groups.iter().any(|g| g == id)
        || (!is_role && dir.member_of.values().flatten().any(|g| g == id))
}

/// Users that are (transitive) members of group `id`.
fn users_in_group(dir: &Directory, id: &str) -> Vec<String> {
    let mut users: Vec<String> = dir
        .member_of
        .iter()
        .filter(|(_, of)| of.iter().any(|g| g == id))
        .map(|(u, _)| u.clone())
        .collect();
    users.sort();
    users
}

/// `GET /groups/{id}/transitiveMembers/microsoft.graph.user?$select=id&$top=999`: the group's
/// users, direct or through nested groups, paged.
fn group_user_members(
    s: &GraphSimulator,
    dir: &Directory,
    id: &str,
    params: &HashMap<String, String>,
) -> Response {
    if !group_exists(dir, id) {
        return error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        );
    }
    let top = match directory_top(params) {
        Ok(top) => top,
        Err(response) => return *response,
    };
    let items = users_in_group(dir, id)
        .into_iter()
        .map(|u| {
            let user = find_user(dir, &u).unwrap_or_else(|| json!({ "id": u }));
            let mut out = select(user, params.get("$select"));
            out["@odata.type"] = "#microsoft.graph.user".into();
            out
        })
        .collect();
    page_of(
        s,
        &format!("/groups/{id}/transitiveMembers/microsoft.graph.user"),
        "users",
        params,
        items,
        top.min(dir.page_size.max(1)),
    )
}

/// Properties of a `unifiedRoleAssignment` (v1.0), what `$select` may name on
/// `roleAssignments`.
const ROLE_ASSIGNMENT_PROPERTIES: &[&str] = &[
    "id",
    "principalId",
    "roleDefinitionId",
    "directoryScopeId",
    "appScopeId",
    "condition",
];
/// Properties of a `unifiedRoleEligibilitySchedule` (v1.0), what `$select` may name on
/// `roleEligibilitySchedules`.
const ROLE_ELIGIBILITY_PROPERTIES: &[&str] = &[
    "id",
    "principalId",
    "roleDefinitionId",
    "directoryScopeId",
    "appScopeId",
    "createdUsing",
    "createdDateTime",
    "modifiedDateTime",
    "status",
    "memberType",
    "scheduleInfo",
];
/// Properties of an expanded `principal` (a `directoryObject`: a user or a group) that
/// `$expand=principal($select=…)` may name.
const PRINCIPAL_PROPERTIES: &[&str] = &[
    "id",
    "deletedDateTime",
    "displayName",
    "userPrincipalName",
    "mail",
    "accountEnabled",
    "userType",
];

/// A `$select` list, each name one of `known` (case-insensitive, as Graph reads property
/// names), in their documented spelling; or the 400 Graph answers for the first unknown one.
fn select_list(list: &str, known: &[&str], type_name: &str) -> Result<Vec<String>, Box<Response>> {
    list.split(',')
        .map(|name| {
            known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(name.trim()))
                .map(|k| (*k).to_owned())
                .ok_or_else(|| {
                    Box::new(error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!(
                            "Could not find a property named '{}' on type '{type_name}'.",
                            name.trim()
                        ),
                    ))
                })
        })
        .collect()
}

/// `GET /roleManagement/directory/roleAssignments|roleEligibilitySchedules
/// ?$filter=roleDefinitionId eq '{id}'[&$select=…][&$expand=principal[($select=…)]]`, the
/// query options both list methods document (`$filter`, `$select`, `$expand`). `$select`
/// names the type's properties; the only navigation expanded is `principal`, whole or with a
/// `$select` of its own (the principal's `@odata.type` always comes, as Graph sends it for a
/// derived type). Active assignments are the members of the activated roles
/// (`directory_roles`, `member_of`) and `role_assignments`; eligibilities are
/// `role_eligibilities`. A built-in role's definition id is its template id.
fn role_principals(
    s: &GraphSimulator,
    dir: &Directory,
    kind: &str,
    params: &HashMap<String, String>,
) -> Response {
    let wanted = match params.get("$filter") {
        None => None,
        Some(filter) => match filter_values(filter, "roleDefinitionId") {
            Some(values) if values.len() == 1 => values.into_iter().next(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Invalid filter clause: only roleDefinitionId eq '{id}' is supported here.",
                );
            }
        },
    };
    let (properties, type_name) = if kind == "roleAssignments" {
        (
            ROLE_ASSIGNMENT_PROPERTIES,
            "microsoft.graph.unifiedRoleAssignment",
        )
    } else {
        (
            ROLE_ELIGIBILITY_PROPERTIES,
            "microsoft.graph.unifiedRoleEligibilitySchedule",
        )
    };
    let selected = match params.get("$select") {
        None => None,
        Some(list) => match select_list(list, properties, type_name) {
            Ok(names) => Some(names),
            Err(response) => return *response,
        },
    };
    // None: not expanded; Some(None): the whole principal; Some(Some(names)): those.
    let expand: Option<Option<Vec<String>>> = match params.get("$expand").map(String::as_str) {
        None => None,
        Some("principal") => Some(None),
        Some(other) => {
            let inner = other
                .strip_prefix("principal($select=")
                .and_then(|rest| rest.strip_suffix(')'));
            match inner {
                Some(list) => {
                    match select_list(
                        list,
                        PRINCIPAL_PROPERTIES,
                        "microsoft.graph.directoryObject",
                    ) {
                        Ok(names) => Some(Some(names)),
                        Err(response) => return *response,
                    }
                }
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("Could not find a property named '{other}' to expand."),
                    );
                }
            }
        }
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if kind == "roleAssignments" {
        for (template, role) in &dir.directory_roles {
            for (user, of) in &dir.member_of {
                if of.iter().any(|id| id == role) {
                    pairs.push((user.clone(), template.clone()));
                }
            }
        }
        pairs.extend(dir.role_assignments.iter().cloned());
    } else {
        pairs.extend(dir.role_eligibilities.iter().cloned());
    }
    pairs.retain(|(_, role)| {
        wanted
            .as_deref()
            .is_none_or(|w| w.eq_ignore_ascii_case(role))
    });
    pairs.sort();
    pairs.dedup();
    let items = pairs
        .into_iter()
        .map(|(principal, role)| {
            let mut item = json!({
                "id": format!("{role}_{principal}"),
                "principalId": principal,
                "roleDefinitionId": role,
                "directoryScopeId": "/",
            });
            if kind == "roleEligibilitySchedules" {
                item["memberType"] = "Direct".into();
                item["status"] = "Provisioned".into();
                item["scheduleInfo"] = json!({"startDateTime": "2026-01-01T00:00:00Z", "expiration": {"type": "noExpiration"}});
            }
            if let Some(names) = &selected {
                item = select(item, Some(&names.join(",")));
            }
            if let Some(inner) = &expand {
                let mut whole = match find_user(dir, &principal) {
                    Some(mut user) => {
                        user["@odata.type"] = "#microsoft.graph.user".into();
                        user
                    }
                    None => json!({ "@odata.type": "#microsoft.graph.group", "id": principal }),
                };
                if let Some(names) = inner {
                    let kind = whole["@odata.type"].clone();
                    whole = select(whole, Some(&names.join(",")));
                    whole["@odata.type"] = kind;
                }
                item["principal"] = whole;
            }
            item
        })
        .collect();
    page_of(
        s,
        &format!("/roleManagement/directory/{kind}"),
        &format!("roleManagement/directory/{kind}"),
        params,
        items,
        dir.page_size.max(1),
    )
}

/// `GET /reports/authenticationMethods/userRegistrationDetails/{id}` (no OData query
/// parameters). The report covers every enabled user, registered or not (a user with nothing
/// registered has a record saying so); a disabled user or an unknown id is 404. The answer is
/// shaped as the documented example: the record under `value`.
fn registration_details(dir: &Directory, id: &str, params: &HashMap<String, String>) -> Response {
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

// ---- subscriptions ----

fn max_minutes(resource: &str) -> Option<i64> {
    // The legacy security/alerts resource is retired: only users is subscribable here.
    (resource == "users").then_some(41_760)
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
    if let Err(response) = gate(&mut dir, &method, &uri, &headers) {
        return *response;
    }
    let skip: usize = query_params(&uri)
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let size = dir.page_size.max(1);
    let page: Vec<Value> = dir
        .subscriptions
        .iter()
        .skip(skip)
        .take(size)
        .cloned()
        .collect();
    let mut out = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions",
        "value": page,
    });
    if skip + size < dir.subscriptions.len() {
        out["@odata.nextLink"] =
            format!("{}/v1.0/subscriptions?$skiptoken={}", s.base, skip + size).into();
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
        if let Err(response) = gate(&mut dir, &method, &uri, &headers) {
            return *response;
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
    if let Err(response) = gate(&mut dir, &method, &uri, &headers) {
        return *response;
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
    if let Err(response) = gate(&mut dir, &method, &uri, &headers) {
        return *response;
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
