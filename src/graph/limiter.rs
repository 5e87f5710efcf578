//! Per-tenant rate limiting shaped to Microsoft Graph's published service limits, so that a 429
//! is the exception rather than the way we find the limit.
//!
//! | budget | published limit | scope | our default |
//! |---|---|---|---|
//! | Identity Protection (riskyUsers, riskDetections, CA policies; dismiss and confirm too) | 1 request/s, no Retry-After | tenant, all apps | half: 1 per 2.2 s |
//! | identity and access reports (signIns, registration details) | 5 requests/10 s | app and tenant | 5 per 11 s |
//! | directory reads (users, groups, roles) | 3,500 resource units/10 s (small tenant) | app and tenant | 3,000 per 10 s |
//! | directory writes (POST/PATCH/PUT/DELETE on users, groups and other directory objects) | 3,000 requests/150 s; 18,000/5 min for the tenant's apps together | app and tenant | 2,700 per 150 s |
//! | Outlook mail (sendMail) | 10,000 requests/10 min, 4 concurrent | app and mailbox | 9,000 per 10 min |
//! | security incidents (Defender XDR incidents API) | 50 requests/min and 1,500/h | app and tenant | 25 per min (the hourly limit, spread) |
//!
//! Every budget but directory reads is shared by every worker, sweep and CLI process through
//! the ledger ([`SharedLimiter`]): requests admitted per tenant (and mailbox), taken with
//! conditional writes, so the limits hold however many Lambda workers run at once. Directory
//! reads are limited in-process ([`LocalLimiter`]): they are plentiful, and a 429 on them
//! carries Retry-After and is retried.
//!
//! A directory write also costs one resource unit; at our write pace (18 a second at most)
//! that is about 5% of the smallest tenant's resource units, so the read window does not count
//! writes. Our 2,700 writes per 150 s are 5,400 per 5 minutes, under a third of the tenant's
//! 18,000 shared by all its apps.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::GraphError;
use crate::ledger::{Ledger, Store};
use crate::support::clock::{SKEW_ALLOWANCE, ServiceClock};

/// Which published limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    IdentityProtection,
    Reports,
    /// Directory reads (and writes that are not on directory objects, e.g. subscriptions).
    Directory,
    /// Writes on directory objects: `PATCH /users/{id}`, `POST /users/{id}/revokeSignInSessions`.
    DirectoryWrites,
    Mail,
    /// `/security/...` (incidents and their comments).
    Security,
}

/// The first path segments of the directory objects whose writes count against Graph's
/// directory write quota (the resources listed with the identity and access service limits).
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

impl Budget {
    /// The budget of a request to `path` (relative to `/v1.0`, query allowed).
    pub fn of(method: &Method, path: &str) -> Budget {
        let path = path.split('?').next().unwrap_or(path).to_ascii_lowercase();
        if path.starts_with("/identityprotection/")
            || path.starts_with("/identity/conditionalaccess/")
        {
            Budget::IdentityProtection
        } else if path.starts_with("/auditlogs/") || path.starts_with("/reports/") {
            Budget::Reports
        } else if *method == Method::POST
            && path.starts_with("/users/")
            && path.ends_with("/sendmail")
        {
            Budget::Mail
        } else if path.starts_with("/security/") {
            Budget::Security
        } else if *method != Method::GET && *method != Method::HEAD && Self::directory_object(&path)
        {
            Budget::DirectoryWrites
        } else {
            Budget::Directory
        }
    }

    /// Whether `path` (lower case) names a directory object or something under one.
    fn directory_object(path: &str) -> bool {
        let first = path.trim_start_matches('/').split(['/', '(']).next();
        first.is_some_and(|first| DIRECTORY_OBJECTS.contains(&first))
    }

    /// Whether the budget is shared through the ledger by every process ([`SharedLimiter`]);
    /// only directory reads are limited in each process.
    pub fn shared(self) -> bool {
        self != Budget::Directory
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::IdentityProtection => "identity_protection",
            Budget::Reports => "reports",
            Budget::Directory => "directory",
            Budget::DirectoryWrites => "directory_writes",
            Budget::Mail => "mail",
            Budget::Security => "security",
        }
    }
}

/// Requests allowed per sliding window, per budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub identity_protection: (usize, Duration),
    pub reports: (usize, Duration),
    pub directory: (usize, Duration),
    pub directory_writes: (usize, Duration),
    pub mail: (usize, Duration),
    pub security: (usize, Duration),
}

impl Limits {
    /// Our share of the published limits. `identity_protection_share` is the fraction of the
    /// tenant's Identity Protection budget (shared with every other app) this product may use.
    pub fn published(identity_protection_share: f64) -> Self {
        let share = identity_protection_share.clamp(0.05, 1.0);
        // A 10% margin absorbs the time between our clock and Graph's front door.
        Self {
            identity_protection: (1, Duration::from_secs_f64(1.1 / share)),
            reports: (5, Duration::from_secs(11)),
            directory: (3000, Duration::from_secs(10)),
            // 3,000 per 2 min 30 s per app and tenant; 10% left to clock drift and retries.
            directory_writes: (2700, Duration::from_secs(150)),
            mail: (9000, Duration::from_secs(600)),
            // 1,500 an hour is the binding limit: 25 a minute never exceeds it.
            security: (25, Duration::from_secs(60)),
        }
    }

    /// The window of `budget`.
    pub fn of(&self, budget: Budget) -> (usize, Duration) {
        match budget {
            Budget::IdentityProtection => self.identity_protection,
            Budget::Reports => self.reports,
            Budget::Directory => self.directory,
            Budget::DirectoryWrites => self.directory_writes,
            Budget::Mail => self.mail,
            Budget::Security => self.security,
        }
    }
}

/// Longest a caller waits for a slot before the call fails as throttled (the work is given back
/// to the queue and retried later). The same bound as the longest `Retry-After` the client
/// sleeps on ([`super::RetryPolicy::max_delay`]): a wait past 30 s hands the work back.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Port: waits until `count` requests of `budget` may go to `tenant` (`key` tells mailboxes
/// apart for mail). `count` never exceeds the budget's window ([`RateLimiter::limit`]): a
/// larger group is refused, never admitted past the limit.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn acquire(
        &self,
        tenant: &str,
        budget: Budget,
        key: &str,
        count: usize,
    ) -> Result<(), GraphError>;

    /// Requests admitted per window for `budget`, and the window.
    fn limit(&self, budget: Budget) -> (usize, Duration);
}

fn oversized(budget: Budget, count: usize, limit: usize) -> GraphError {
    GraphError::Config(format!(
        "{count} {} requests at once exceed the budget's window of {limit}: split them",
        budget.as_str()
    ))
}

/// Sliding windows in this process.
pub struct LocalLimiter {
    limits: Limits,
    windows: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LocalLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `count` slots now, or says how long until they may be taken.
    fn try_take(
        &self,
        key: &str,
        (limit, window): (usize, Duration),
        count: usize,
    ) -> Result<(), Duration> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let log = windows.entry(key.to_owned()).or_default();
        while log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            log.pop_front();
        }
        if log.len() + count <= limit {
            log.extend(std::iter::repeat_n(now, count));
            return Ok(());
        }
        let blocking = log.len() + count - limit;
        let until = log
            .get(blocking - 1)
            .map_or(window, |t| window.saturating_sub(now.duration_since(*t)));
        Err(until.max(Duration::from_millis(1)))
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn acquire(
        &self,
        tenant: &str,
        budget: Budget,
        key: &str,
        count: usize,
    ) -> Result<(), GraphError> {
        let (limit, _) = self.limits.of(budget);
        if count > limit {
            return Err(oversized(budget, count, limit));
        }
        let key = format!("{tenant}|{}|{key}", budget.as_str());
        let started = Instant::now();
        loop {
            match self.try_take(&key, self.limits.of(budget), count) {
                Ok(()) => return Ok(()),
                Err(wait) => {
                    if started.elapsed() + wait > MAX_WAIT {
                        return Err(GraphError::Throttled { attempts: 0 });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn limit(&self, budget: Budget) -> (usize, Duration) {
        self.limits.of(budget)
    }
}

/// A short random pause (5 to 50 ms) before looking again at a window another process just
/// wrote, so that contending processes do not retry in step.
fn contention_pause() -> Duration {
    let mut byte = [0u8; 1];
    let jitter = if aws_lc_rs::rand::fill(&mut byte).is_ok() {
        u64::from(byte[0]) * 45 / 255
    } else {
        25
    };
    Duration::from_millis(5 + jitter)
}

/// Each shared window is kept as counts per slot of `window / SLOTS_PER_WINDOW`, not one entry
/// per request: the item stays under about 600 bytes whatever the limit (2,700 directory writes
/// or 9,000 mails a window would otherwise be 40 to 130 KB of timestamps, rewritten by every
/// conditional write, and 9,000 is a third of DynamoDB's 400 KB item limit).
const SLOTS_PER_WINDOW: i64 = 32;

/// A window kept in the ledger (`tenant#{tenant}#rate#{budget}`, for mail
/// `tenant#{tenant}#rate#mail#{mailbox}`): the requests admitted per time slot.
///
/// A slot's requests are counted until the window has passed since the slot's end, so every
/// request of the last `window` is counted (the limit holds for any sliding window) at the cost
/// of holding a slot's requests up to one slot longer than needed: the pace is at most
/// 1/[`SLOTS_PER_WINDOW`] (3%) slower than the limit.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Window {
    /// Slot length in milliseconds the counts were kept with.
    #[serde(default)]
    slot_ms: i64,
    /// `(slot, requests)`, oldest first; a slot is unix milliseconds / `slot_ms`.
    #[serde(default)]
    slots: Vec<(i64, u32)>,
    /// Unix milliseconds of each admitted request: what windows held before slots; read once,
    /// then written as slots.
    #[serde(default, skip_serializing)]
    admitted: Vec<i64>,
}

impl Window {
    /// The window with slots of `slot_ms`, holding only slots still counted at `now`. Counts
    /// kept with another slot length (older items, changed limits) move to the new slot that
    /// holds their old slot's end, so none is dropped early.
    fn at(mut self, now: i64, window_ms: i64, slot_ms: i64) -> Self {
        let mut slots: Vec<(i64, u32)> = Vec::new();
        let mut add = |at_ms: i64, count: u32| {
            let slot = at_ms.div_euclid(slot_ms);
            match slots.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, n)) => *n = n.saturating_add(count),
                None => slots.push((slot, count)),
            }
        };
        for t in std::mem::take(&mut self.admitted) {
            add(t, 1);
        }
        if self.slot_ms == slot_ms {
            for (slot, count) in std::mem::take(&mut self.slots) {
                add(slot * slot_ms, count);
            }
        } else if self.slot_ms > 0 {
            for (slot, count) in std::mem::take(&mut self.slots) {
                add((slot + 1) * self.slot_ms - 1, count);
            }
        }
        // A slot still in the window is counted; one further ahead than any host in step with
        // Graph's clock could have written (a host with a fast clock) has expired: counting it
        // would throttle every other process until the host's clock came round.
        let future = now + SKEW_ALLOWANCE.whole_milliseconds() as i64;
        slots
            .retain(|(slot, _)| (slot + 1) * slot_ms + window_ms > now && slot * slot_ms <= future);
        slots.sort_unstable();
        Self {
            slot_ms,
            slots,
            admitted: Vec::new(),
        }
    }

    /// Requests counted.
    fn used(&self) -> usize {
        self.slots.iter().map(|(_, n)| *n as usize).sum()
    }

    /// Counts `count` requests at `now`.
    fn admit(&mut self, now: i64, count: usize) {
        let slot = now.div_euclid(self.slot_ms);
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        match self.slots.last_mut() {
            Some((last, n)) if *last == slot => *n = n.saturating_add(count),
            _ => self.slots.push((slot, count)),
        }
    }

    /// Milliseconds until `blocking` counted requests have left the window.
    fn wait_ms(&self, now: i64, window_ms: i64, blocking: usize) -> i64 {
        let mut freed = 0;
        for (slot, n) in &self.slots {
            freed += *n as usize;
            if freed >= blocking {
                return ((slot + 1) * self.slot_ms + window_ms - now).max(1);
            }
        }
        window_ms
    }
}

/// Every budget but directory reads shared through the ledger by every process
/// ([`Budget::shared`]); directory reads in-process.
pub struct SharedLimiter {
    ledger: Ledger,
    limits: Limits,
    local: LocalLimiter,
    /// Graph's clock: slots are counted in its time, not the host's.
    clock: Option<Arc<ServiceClock>>,
}

impl SharedLimiter {
    /// A limiter sharing its windows through `ledger`.
    pub fn new(ledger: Ledger, limits: Limits) -> Self {
        Self {
            ledger,
            limits,
            local: LocalLimiter::new(limits),
            clock: None,
        }
    }

    /// Counts slots in Graph's time as `clock` measures it (the client's own clock), so a
    /// host whose clock is off writes slots where every other process counts them.
    pub fn with_clock(mut self, clock: Arc<ServiceClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    fn now_ms(&self) -> i64 {
        let now = match &self.clock {
            Some(clock) => clock.now(),
            None => time::OffsetDateTime::now_utc(),
        };
        (now.unix_timestamp_nanos() / 1_000_000) as i64
    }

    fn store(&self) -> &std::sync::Arc<dyn Store> {
        self.ledger.store()
    }
}

/// The ledger key of a shared window.
fn window_key(tenant: &str, budget: Budget, key: &str) -> String {
    if key.is_empty() {
        format!("tenant#{tenant}#rate#{}", budget.as_str())
    } else {
        format!("tenant#{tenant}#rate#{}#{key}", budget.as_str())
    }
}

#[async_trait]
impl RateLimiter for SharedLimiter {
    async fn acquire(
        &self,
        tenant: &str,
        budget: Budget,
        key: &str,
        count: usize,
    ) -> Result<(), GraphError> {
        if !budget.shared() {
            return self.local.acquire(tenant, budget, key, count).await;
        }
        let (limit, window) = self.limits.of(budget);
        if count > limit {
            return Err(oversized(budget, count, limit));
        }
        let window_ms = (window.as_millis() as i64).max(1);
        let slot_ms = (window_ms + SLOTS_PER_WINDOW - 1) / SLOTS_PER_WINDOW;
        let doc_key = window_key(tenant, budget, key);
        let started = Instant::now();
        loop {
            let unavailable =
                |e: crate::ledger::LedgerError| GraphError::RateLimiter(e.to_string());
            let stored = self.store().get(&doc_key).await.map_err(unavailable)?;
            let (state, version) = match &stored {
                Some(s) => (
                    serde_json::from_str::<Window>(&s.doc).unwrap_or_default(),
                    s.version,
                ),
                None => (Window::default(), 0),
            };
            let now = self.now_ms();
            let mut state = state.at(now, window_ms, slot_ms);
            let used = state.used();
            if used + count <= limit {
                state.admit(now, count);
                let doc = serde_json::to_string(&state)
                    .map_err(|e| GraphError::RateLimiter(e.to_string()))?;
                // Kept an hour past its window, so a quiet budget leaves no item behind.
                let expires = Some(
                    time::OffsetDateTime::now_utc().unix_timestamp()
                        + window.as_secs() as i64
                        + 3600,
                );
                match self.store().put(&doc_key, &doc, version, expires).await {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) => {
                        // Another process wrote the window first: look again shortly.
                        if started.elapsed() > MAX_WAIT {
                            return Err(GraphError::Throttled { attempts: 0 });
                        }
                        tokio::time::sleep(contention_pause()).await;
                        continue;
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
            let wait_ms = state.wait_ms(now, window_ms, used + count - limit);
            let wait = Duration::from_millis(wait_ms as u64);
            if started.elapsed() + wait > MAX_WAIT {
                return Err(GraphError::Throttled { attempts: 0 });
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn limit(&self, budget: Budget) -> (usize, Duration) {
        self.limits.of(budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_the_documented_budgets() {
        assert_eq!(
            Budget::of(&Method::GET, "/identityProtection/riskyUsers?$top=500"),
            Budget::IdentityProtection
        );
        assert_eq!(
            Budget::of(&Method::POST, "/identityProtection/riskyUsers/dismiss"),
            Budget::IdentityProtection
        );
        assert_eq!(
            Budget::of(&Method::GET, "/identity/conditionalAccess/policies"),
            Budget::IdentityProtection
        );
        assert_eq!(
            Budget::of(&Method::GET, "/auditLogs/signIns?$filter=x"),
            Budget::Reports
        );
        assert_eq!(
            Budget::of(
                &Method::GET,
                "/reports/authenticationMethods/userRegistrationDetails/x"
            ),
            Budget::Reports
        );
        assert_eq!(
            Budget::of(&Method::POST, "/users/a@b/sendMail"),
            Budget::Mail
        );
        assert_eq!(
            Budget::of(&Method::POST, "/security/incidents/2972395/comments"),
            Budget::Security
        );
    }

    #[test]
    fn writes_on_directory_objects_have_their_own_budget() {
        for (method, path) in [
            (Method::PATCH, "/users/x"),
            (Method::POST, "/users/x/revokeSignInSessions"),
            (Method::DELETE, "/groups/g/members/x/$ref"),
            (Method::POST, "/applications"),
        ] {
            assert_eq!(
                Budget::of(&method, path),
                Budget::DirectoryWrites,
                "{method} {path}"
            );
        }
        for (method, path) in [
            (Method::GET, "/users?$filter=id in ('x')"),
            (Method::GET, "/users/x"),
            (
                Method::GET,
                "/groups/g/transitiveMembers/microsoft.graph.user",
            ),
            (
                Method::GET,
                "/roleManagement/directory/roleAssignments?$expand=principal",
            ),
            // Change notifications are no directory object.
            (Method::POST, "/subscriptions"),
            (Method::PATCH, "/subscriptions/s"),
            // A batch envelope counts nothing itself (its members do).
            (Method::POST, "/$batch"),
        ] {
            assert_eq!(
                Budget::of(&method, path),
                Budget::Directory,
                "{method} {path}"
            );
        }
        // Risk actions stay with Identity Protection, mail with Outlook.
        assert_eq!(
            Budget::of(
                &Method::POST,
                "/identityProtection/riskyUsers/confirmCompromised"
            ),
            Budget::IdentityProtection
        );
        assert_eq!(
            Budget::of(&Method::POST, "/users/soc@contoso.com/sendMail"),
            Budget::Mail
        );
        assert_eq!(
            Limits::published(0.5).of(Budget::DirectoryWrites),
            (2700, Duration::from_secs(150))
        );
        // Only directory reads are limited in each process.
        assert!(!Budget::Directory.shared());
        for budget in [
            Budget::IdentityProtection,
            Budget::Reports,
            Budget::DirectoryWrites,
            Budget::Mail,
            Budget::Security,
        ] {
            assert!(budget.shared(), "{budget:?}");
        }
    }

    #[tokio::test]
    async fn the_local_window_spaces_requests() {
        let limiter = LocalLimiter::new(Limits {
            identity_protection: (1, Duration::from_millis(200)),
            ..Limits::published(1.0)
        });
        let started = Instant::now();
        for _ in 0..3 {
            limiter
                .acquire("t", Budget::IdentityProtection, "", 1)
                .await
                .unwrap();
        }
        assert!(started.elapsed() >= Duration::from_millis(400));
        // Other tenants have their own window.
        let other = Instant::now();
        limiter
            .acquire("u", Budget::IdentityProtection, "", 1)
            .await
            .unwrap();
        assert!(other.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_wait_past_max_wait_hands_the_work_back_at_once() {
        assert_eq!(MAX_WAIT, super::super::RetryPolicy::default().max_delay);
        let limiter = LocalLimiter::new(Limits {
            identity_protection: (1, MAX_WAIT + Duration::from_secs(1)),
            ..Limits::published(1.0)
        });
        limiter
            .acquire("t", Budget::IdentityProtection, "", 1)
            .await
            .unwrap();
        let started = Instant::now();
        let err = limiter
            .acquire("t", Budget::IdentityProtection, "", 1)
            .await
            .unwrap_err();
        assert_eq!(err, GraphError::Throttled { attempts: 0 });
        assert!(started.elapsed() < Duration::from_secs(1), "not slept on");
    }

    #[tokio::test]
    async fn a_group_larger_than_the_window_is_refused_not_admitted() {
        let ledger = Ledger::new(std::sync::Arc::new(
            crate::ledger::sqlite::SqliteStore::in_memory().unwrap(),
        ));
        let shared = SharedLimiter::new(ledger, Limits::published(1.0));
        let local = LocalLimiter::new(Limits::published(1.0));
        for limiter in [&shared as &dyn RateLimiter, &local] {
            let err = limiter.acquire("t", Budget::Reports, "", 6).await;
            assert!(matches!(err, Err(GraphError::Config(_))), "{err:?}");
            limiter.acquire("t", Budget::Reports, "", 5).await.unwrap();
            assert_eq!(limiter.limit(Budget::Reports).0, 5);
        }
    }

    #[tokio::test]
    async fn the_shared_window_holds_across_limiters_on_one_ledger() {
        let ledger = Ledger::new(std::sync::Arc::new(
            crate::ledger::sqlite::SqliteStore::in_memory().unwrap(),
        ));
        let limits = Limits {
            reports: (2, Duration::from_millis(300)),
            ..Limits::published(1.0)
        };
        let a = SharedLimiter::new(ledger.clone(), limits);
        let b = SharedLimiter::new(ledger.clone(), limits);
        let started = Instant::now();
        let (x, y, z, w) = tokio::join!(
            a.acquire("t", Budget::Reports, "", 1),
            b.acquire("t", Budget::Reports, "", 1),
            a.acquire("t", Budget::Reports, "", 1),
            b.acquire("t", Budget::Reports, "", 1),
        );
        for r in [x, y, z, w] {
            r.unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "four requests at two per window take a second window"
        );
    }

    fn memory_ledger() -> Ledger {
        Ledger::new(std::sync::Arc::new(
            crate::ledger::sqlite::SqliteStore::in_memory().unwrap(),
        ))
    }

    #[tokio::test]
    async fn directory_writes_and_mail_hold_across_limiters_on_one_ledger() {
        let ledger = memory_ledger();
        let limits = Limits {
            directory_writes: (2, Duration::from_millis(300)),
            mail: (2, Duration::from_millis(300)),
            ..Limits::published(1.0)
        };
        let a = SharedLimiter::new(ledger.clone(), limits);
        let b = SharedLimiter::new(ledger.clone(), limits);
        for (budget, key) in [
            (Budget::DirectoryWrites, ""),
            (Budget::Mail, "soc@contoso.com"),
        ] {
            let started = Instant::now();
            let (x, y, z, w) = tokio::join!(
                a.acquire("t", budget, key, 1),
                b.acquire("t", budget, key, 1),
                a.acquire("t", budget, key, 1),
                b.acquire("t", budget, key, 1),
            );
            for r in [x, y, z, w] {
                r.unwrap();
            }
            assert!(
                started.elapsed() >= Duration::from_millis(300),
                "{budget:?}: four requests at two per window take a second window"
            );
        }
        // Another mailbox, and another tenant, have windows of their own.
        let started = Instant::now();
        a.acquire("t", Budget::Mail, "helpdesk@contoso.com", 2)
            .await
            .unwrap();
        b.acquire("u", Budget::DirectoryWrites, "", 2)
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(200));
        for key in [
            "tenant#t#rate#directory_writes",
            "tenant#t#rate#mail#soc@contoso.com",
            "tenant#t#rate#mail#helpdesk@contoso.com",
            "tenant#u#rate#directory_writes",
        ] {
            assert!(ledger.store().get(key).await.unwrap().is_some(), "{key}");
        }
        // Directory reads stay in each process: the ledger holds no window for them.
        a.acquire("t", Budget::Directory, "", 1).await.unwrap();
        assert!(
            ledger
                .store()
                .get("tenant#t#rate#directory")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_full_shared_window_is_a_small_item_and_admits_no_more() {
        let ledger = memory_ledger();
        let limiter = SharedLimiter::new(ledger.clone(), Limits::published(1.0));
        // 2,700 writes, 20 at a time (a $batch's members), fill the 150 s window.
        for _ in 0..135 {
            limiter
                .acquire("t", Budget::DirectoryWrites, "", 20)
                .await
                .unwrap();
        }
        let stored = ledger
            .store()
            .get("tenant#t#rate#directory_writes")
            .await
            .unwrap()
            .unwrap();
        assert!(stored.doc.len() < 1000, "{} bytes", stored.doc.len());
        // The next write would wait out most of the 150 s window: handed back at once.
        let started = Instant::now();
        let err = limiter
            .acquire("t", Budget::DirectoryWrites, "", 1)
            .await
            .unwrap_err();
        assert_eq!(err, GraphError::Throttled { attempts: 0 });
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_window_written_as_timestamps_still_counts() {
        let ledger = memory_ledger();
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        ledger
            .store()
            .put(
                "tenant#t#rate#reports",
                &format!("{{\"admitted\":[{now},{now}]}}"),
                0,
                None,
            )
            .await
            .unwrap()
            .unwrap();
        let limiter = SharedLimiter::new(
            ledger.clone(),
            Limits {
                reports: (2, Duration::from_millis(300)),
                ..Limits::published(1.0)
            },
        );
        let started = Instant::now();
        limiter.acquire("t", Budget::Reports, "", 1).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "the two requests already admitted fill the window"
        );
    }

    #[test]
    fn slots_count_every_request_of_the_last_window() {
        // 300 ms in slots of 10 ms: a request in the slot [1000, 1010) is counted until
        // 1310, the end of its slot plus the window, never dropped before 1300 + its offset.
        let mut w = Window::default().at(1005, 300, 10);
        w.admit(1009, 1);
        assert_eq!(w.used(), 1);
        let w = w.at(1308, 300, 10);
        assert_eq!(w.used(), 1, "1009 + 300 > 1308: still in the window");
        assert_eq!(w.wait_ms(1308, 300, 1), 2);
        let w = w.at(1310, 300, 10);
        assert_eq!(w.used(), 0);
        // Counts kept with longer slots move to the new slot holding their old slot's end.
        let mut old = Window::default().at(0, 300, 100);
        old.admit(50, 3);
        let w = old.at(120, 300, 10);
        assert_eq!(w.used(), 3);
        assert_eq!(w.wait_ms(120, 300, 3), 280, "counted until 100 + 300");
    }

    #[test]
    fn a_slot_written_by_a_fast_clock_expires() {
        let hour = 3_600_000;
        // A host two hours fast admitted 40 requests "at" now + 2 h.
        let mut fast = Window::default().at(0, 300, 10);
        fast.admit(2 * hour, 40);
        let w = fast.at(1_000, 300, 10);
        assert_eq!(
            w.used(),
            0,
            "no host in step with Graph could have written it"
        );
        // A host a second ahead is within the allowance: its slot counts.
        let mut near = Window::default().at(0, 300, 10);
        near.admit(2_000, 1);
        assert_eq!(near.at(1_000, 300, 10).used(), 1);
    }

    #[tokio::test]
    async fn a_fast_host_counts_its_slots_in_graphs_time() {
        let ledger = memory_ledger();
        // This host reads two hours more than Graph's Date header.
        let graphs = || {
            let clock = Arc::new(ServiceClock::default());
            let host = time::OffsetDateTime::now_utc();
            clock.observe_at(host - time::Duration::hours(2), host);
            clock
        };
        let fast = SharedLimiter::new(ledger.clone(), Limits::published(1.0)).with_clock(graphs());
        fast.acquire("t", Budget::Reports, "", 5).await.unwrap();
        let stored = ledger
            .store()
            .get("tenant#t#rate#reports")
            .await
            .unwrap()
            .unwrap();
        let window: Window = serde_json::from_str(&stored.doc).unwrap();
        let graph_now =
            (time::OffsetDateTime::now_utc() - time::Duration::hours(2)).unix_timestamp() * 1000;
        let slot = window.slots[0].0 * window.slot_ms;
        assert!(
            (slot - graph_now).abs() < 60_000,
            "slot {slot} vs Graph's now {graph_now}"
        );
        // A process counting in Graph's time sees the five requests in its window.
        let in_step = SharedLimiter::new(
            ledger.clone(),
            Limits {
                reports: (5, Duration::from_millis(300)),
                ..Limits::published(1.0)
            },
        )
        .with_clock(graphs());
        let started = Instant::now();
        in_step.acquire("t", Budget::Reports, "", 1).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "the window was full"
        );
    }
}
