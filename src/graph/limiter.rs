//! Per-tenant rate limiting shaped to Microsoft Graph's published service limits, so that a 429
//! is the exception rather than the way we find the limit.
//!
//! | budget | published limit | scope | our default |
//! |---|---|---|---|
//! | Identity Protection (riskyUsers, riskDetections, CA policies) | 1 request/s, no Retry-After | tenant, all apps | half: 1 per 2.2 s |
//! | identity and access reports (signIns, registration details) | 5 requests/10 s | app and tenant | 5 per 11 s |
//! | directory (users, groups, roles) | 3,500 RU/10 s; 3,000 writes/150 s | app and tenant | 3,000 per 10 s |
//! | Outlook mail | 10,000 requests/10 min, 4 concurrent | app and mailbox | 9,000 per 10 min |
//! | security incidents (Defender XDR incidents API) | 50 requests/min and 1,500/h | app and tenant | 25 per min (the hourly limit, spread) |
//!
//! The two scarce budgets (Identity Protection and reports) are shared by every worker, sweep
//! and CLI process through the ledger ([`SharedLimiter`]): a sliding window of admitted requests
//! per tenant, taken with conditional writes, so the limits hold however many Lambda workers
//! run at once. The larger budgets are limited in-process ([`LocalLimiter`]); a 429 on them
//! carries Retry-After and is retried.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::GraphError;
use crate::ledger::{Ledger, Store};

/// Which published limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    IdentityProtection,
    Reports,
    Directory,
    Mail,
    /// `/security/...` (incidents and their comments).
    Security,
}

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
        } else {
            Budget::Directory
        }
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::IdentityProtection => "identity_protection",
            Budget::Reports => "reports",
            Budget::Directory => "directory",
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

/// A sliding window kept in the ledger (`tenant#{tenant}#rate#{budget}`): unix milliseconds of
/// the requests admitted within the window.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Window {
    admitted: Vec<i64>,
}

/// The scarce budgets (Identity Protection, reports) shared through the ledger by every
/// process; the others in-process.
pub struct SharedLimiter {
    ledger: Ledger,
    limits: Limits,
    local: LocalLimiter,
}

impl SharedLimiter {
    /// A limiter sharing its scarce windows through `ledger`.
    pub fn new(ledger: Ledger, limits: Limits) -> Self {
        Self {
            ledger,
            limits,
            local: LocalLimiter::new(limits),
        }
    }

    fn store(&self) -> &std::sync::Arc<dyn Store> {
        self.ledger.store()
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
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
        if !matches!(budget, Budget::IdentityProtection | Budget::Reports) {
            return self.local.acquire(tenant, budget, key, count).await;
        }
        let (limit, window) = self.limits.of(budget);
        if count > limit {
            return Err(oversized(budget, count, limit));
        }
        let window_ms = window.as_millis() as i64;
        let doc_key = format!("tenant#{tenant}#rate#{}", budget.as_str());
        let started = Instant::now();
        loop {
            let unavailable =
                |e: crate::ledger::LedgerError| GraphError::RateLimiter(e.to_string());
            let stored = self.store().get(&doc_key).await.map_err(unavailable)?;
            let (mut state, version) = match &stored {
                Some(s) => (
                    serde_json::from_str::<Window>(&s.doc).unwrap_or_default(),
                    s.version,
                ),
                None => (Window::default(), 0),
            };
            let now = now_ms();
            state.admitted.retain(|t| now - t < window_ms);
            state.admitted.sort_unstable();
            if state.admitted.len() + count <= limit {
                state.admitted.extend(std::iter::repeat_n(now, count));
                let doc = serde_json::to_string(&state).unwrap_or_default();
                let expires = Some(time::OffsetDateTime::now_utc().unix_timestamp() + 3600);
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
            let blocking = state.admitted.len() + count - limit;
            let wait_ms = state
                .admitted
                .get(blocking - 1)
                .map_or(window_ms, |t| window_ms - (now - t))
                .max(1);
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
        assert_eq!(Budget::of(&Method::PATCH, "/users/x"), Budget::Directory);
        assert_eq!(
            Budget::of(&Method::POST, "/security/incidents/2972395/comments"),
            Budget::Security
        );
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
}
