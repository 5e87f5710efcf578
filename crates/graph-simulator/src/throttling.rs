//! Microsoft Graph's published throttle limits, each enforced at its documented scope
//! ("Microsoft Graph service-specific throttling limits": identity and access, Identity
//! Protection and Conditional Access, identity and access reports, Outlook, security), and the
//! latency the stand-in answers with. A 429 carries `Retry-After` only where Graph sends one.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::response::Response;

use crate::Directory;
use crate::odata::error;

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
/// time Graph spends on it as the client sees it, drawn evenly from a [`Span`] per kind of
/// request. A `sendMail` holds its mailbox's concurrency slot for this long.
///
/// [`Latency::INSTANT`] (the default, what the tests use) answers at once but holds a sendMail
/// 2 ms, so Outlook's concurrency limit stays observable. [`Latency::MODELLED`] is what the
/// burst benchmark runs against. Microsoft publishes no latency figures for these APIs (no SLA
/// on response time, no percentiles in the throttling or batching documentation), so its values
/// are stated assumptions for a Graph front end in the same geography, the ones an independent
/// load test of this product used: 20-80 ms for a directory, Identity Protection, reports or
/// security read, 40-120 ms for a write (it is replicated before Graph answers), 100-240 ms for
/// Outlook to accept a `sendMail` (the message is saved, then handed to transport; reported
/// sends range up to about a second, which [`Latency::SLOW_MAIL`] models).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// Any GET.
    pub read: Span,
    /// Any other write (PATCH, POST, PUT, DELETE), `sendMail` excepted.
    pub write: Span,
    /// `POST /users/{id}/sendMail`.
    pub mail: Span,
}

/// A range of latencies, drawn evenly (a fixed one when both ends are equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub min: Duration,
    pub max: Duration,
}

impl Span {
    /// Always `d`.
    pub const fn fixed(d: Duration) -> Span {
        Span { min: d, max: d }
    }

    /// From `min` to `max` milliseconds.
    pub const fn millis(min: u64, max: u64) -> Span {
        Span {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        }
    }

    /// One latency from the span: a fixed, seeded sequence (runs are comparable).
    pub fn draw(&self) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        let width = (self.max - self.min).as_micros() as u64 + 1;
        self.min + Duration::from_micros(next_random() % width)
    }

    pub fn is_zero(&self) -> bool {
        self.max.is_zero()
    }
}

impl From<Duration> for Span {
    fn from(d: Duration) -> Span {
        Span::fixed(d)
    }
}

/// splitmix64 over a process-wide counter: uniform enough for latencies, seeded the same way
/// every run.
fn next_random() -> u64 {
    static STATE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x5eed);
    let mut z = STATE
        .fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Latency {
    /// Answers at once; a sendMail holds its mailbox 2 ms.
    pub const INSTANT: Latency = Latency {
        read: Span::millis(0, 0),
        write: Span::millis(0, 0),
        mail: Span::millis(2, 2),
    };

    /// The modelled latency (assumptions, see the type's documentation): reads 20-80 ms,
    /// writes 40-120 ms, sendMail 100-240 ms.
    pub const MODELLED: Latency = Latency {
        read: Span::millis(20, 80),
        write: Span::millis(40, 120),
        mail: Span::millis(100, 240),
    };

    /// The modelled latency with Outlook at its slowest reported: sendMail 100-1,000 ms.
    pub const SLOW_MAIL: Latency = Latency {
        mail: Span::millis(100, 1_000),
        ..Latency::MODELLED
    };

    /// How long `method path` (under `/v1.0`) takes this time.
    pub fn of(&self, method: &Method, path: &str) -> Duration {
        if Budget::of(method, path) == Budget::Mail {
            self.mail.draw()
        } else if *method == Method::GET {
            self.read.draw()
        } else {
            self.write.draw()
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
    pub(crate) fn admit(&mut self, key: String, limit: (usize, Duration)) -> Result<(), Duration> {
        self.admit_all(&[(key, limit, 1)])
    }

    /// Admits a request costing `cost` under each key (a request, or its resource units) at
    /// once, or under none: a request refused by one limit spends nothing of the others (Graph
    /// throttles only the requests that exceed a limit). Refused: how long until every window
    /// has room.
    pub(crate) fn admit_all(
        &mut self,
        limits: &[(String, (usize, Duration), usize)],
    ) -> Result<(), Duration> {
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

/// The first path segments of the directory objects whose writes count against the directory
/// write quota (the resources Microsoft lists with the identity and access service limits).
pub const DIRECTORY_OBJECTS: &[&str] = &[
    "users",
    "groups",
    "applications",
    "serviceprincipals",
    "devices",
    "directoryobjects",
    "directoryroles",
    "contacts",
    "contracts",
    "domains",
    "oauth2permissiongrants",
    "organization",
    "groupsettings",
];

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
pub(crate) fn directory_write(method: &Method, path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let first = lower.trim_start_matches('/').split(['/', '(']).next();
    !matches!(*method, Method::GET | Method::HEAD)
        && first.is_some_and(|first| DIRECTORY_OBJECTS.contains(&first))
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
pub(crate) fn limit(
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
            // Per app and mailbox; a mailbox is an object of its tenant.
            let key = format!("{tenant}|{app}|{mailbox}");
            let in_flight = dir.mail_in_flight.get(&key).copied().unwrap_or(0);
            if in_flight >= limits.mail_concurrency {
                return Err(Duration::from_secs(1));
            }
            dir.windows.admit(format!("{key}|window"), limits.mail)?;
            let now_in_flight = {
                let n = dir.mail_in_flight.entry(key.clone()).or_default();
                *n += 1;
                *n
            };
            let peak = dir.mail_peak.entry(key.clone()).or_default();
            *peak = (*peak).max(now_in_flight);
            Ok(Some(key))
        }
    }
}

/// Ends a sendMail request admitted by [`limit`] (its mailbox slot is free again).
pub(crate) fn release_mail(dir: &mut Directory, key: &str) {
    if let Some(n) = dir.mail_in_flight.get_mut(key) {
        *n = n.saturating_sub(1);
    }
}

/// A request being answered (counted in [`Directory::in_flight`] and its peak) until it ends,
/// however it ends.
pub(crate) struct InFlight {
    dir: std::sync::Arc<std::sync::Mutex<Directory>>,
}

impl InFlight {
    pub(crate) fn new(dir: std::sync::Arc<std::sync::Mutex<Directory>>) -> Self {
        {
            let mut d = dir.lock().unwrap_or_else(|e| e.into_inner());
            d.in_flight += 1;
            d.peak_in_flight = d.peak_in_flight.max(d.in_flight);
        }
        Self { dir }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut d = self.dir.lock().unwrap_or_else(|e| e.into_inner());
        d.in_flight = d.in_flight.saturating_sub(1);
    }
}

/// A sendMail's mailbox slot, held while Graph works on it and freed when the request ends,
/// however it ends: a client that drops its connection mid-request (a process killed) does not
/// hold the slot for ever, as Exchange's concurrency counts requests being processed.
pub(crate) struct MailSlot {
    dir: std::sync::Arc<std::sync::Mutex<Directory>>,
    key: Option<String>,
}

impl MailSlot {
    pub(crate) fn new(
        dir: std::sync::Arc<std::sync::Mutex<Directory>>,
        key: Option<String>,
    ) -> Self {
        Self { dir, key }
    }
}

impl Drop for MailSlot {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut dir = self.dir.lock().unwrap_or_else(|e| e.into_inner());
            release_mail(&mut dir, &key);
        }
    }
}

/// Applies the published throttle limits to one request (or one member of a `$batch`) of our
/// application, counting it; a 429 carries `Retry-After` only where Graph sends one.
pub(crate) fn throttle(
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
