//! Microsoft Graph over reqwest: app-only tokens, retries (honouring `Retry-After` on 429
//! and 503), `@odata.nextLink` paging and timeouts, and the typed calls the worker makes.

pub mod api;
pub mod batch;
pub mod credential;
pub mod limiter;
pub mod mailbox;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

pub use mailbox::{MAILBOX_CONCURRENCY, MailPermit, MailSlots};
pub use token::{ClientCredential, TokenProvider};

/// Errors from Graph or its token endpoint. Messages never include tokens or passwords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("token request refused: {error}: {description}")]
    TokenRefused { error: String, description: String },
    #[error("token endpoint unavailable: {0}")]
    TokenUnavailable(String),
    #[error("Graph refused access (403 {code}): {message}; check the application permissions")]
    Forbidden { code: String, message: String },
    #[error("Graph resource not found (404 {code}): {message}")]
    NotFound { code: String, message: String },
    #[error("Graph still throttling after {attempts} attempts")]
    Throttled { attempts: u32 },
    #[error("Graph error {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("Graph unreachable: {0}")]
    Transport(String),
    #[error("unexpected Graph response: {0}")]
    Decode(String),
    #[error("Graph client configuration: {0}")]
    Config(String),
    #[error("rate limiter unavailable: {0}")]
    RateLimiter(String),
    /// A listing had more pages than the client follows: what was read is not the whole
    /// collection, and nothing may treat it as complete.
    #[error("listing stopped at the page limit ({pages} pages): the rest was not read")]
    Truncated { pages: usize },
}

impl GraphError {
    /// Whether an operator must fix something (credentials, permissions, configuration) before a
    /// retry can succeed. Such work is kept for retry and, failing that, the dead-letter queue.
    pub fn needs_operator(&self) -> bool {
        match self {
            GraphError::TokenRefused { .. }
            | GraphError::Forbidden { .. }
            | GraphError::Config(_) => true,
            // Any other refusal we did not plan for (400 bad request, 411 length required, ...)
            // waits for a person: it is never a silent completion.
            GraphError::Api { status, .. } => {
                (400..500).contains(status) && !matches!(status, 408 | 409 | 412 | 429)
            }
            _ => false,
        }
    }

    /// Whether a later attempt may succeed (throttling, outages), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GraphError::TokenUnavailable(_)
                | GraphError::RateLimiter(_)
                | GraphError::Throttled { .. }
                | GraphError::Truncated { .. }
                | GraphError::Transport(_)
                | GraphError::Api {
                    status: 500..=599 | 408 | 409 | 412,
                    ..
                }
        )
    }
}

/// How a paged listing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// Every page was read (`@odata.nextLink` ran out).
    Complete,
    /// The client stopped at [`RetryPolicy::max_pages`]: more pages were left unread.
    Truncated { pages: usize },
}

impl Paging {
    /// Whether every page was read.
    pub fn is_complete(self) -> bool {
        self == Paging::Complete
    }

    /// The listing as a result: a truncated one is an error.
    pub fn complete(self) -> Result<(), GraphError> {
        match self {
            Paging::Complete => Ok(()),
            Paging::Truncated { pages } => Err(GraphError::Truncated { pages }),
        }
    }
}

/// How far a paged listing got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub paging: Paging,
    /// Pages read.
    pub pages: usize,
    /// Where a truncated listing stopped: Graph's `@odata.nextLink` for the first page not
    /// read, so a later run can continue from there.
    pub next_link: Option<String>,
}

/// Retry settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// First backoff when the server gives no `Retry-After`; doubled each time.
    pub base_delay: Duration,
    /// Longest single wait (a longer `Retry-After` fails the call as throttled).
    pub max_delay: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Most pages followed by one listing.
    pub max_pages: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
            max_pages: 50,
        }
    }
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A Graph client for one application, usable for many tenants.
pub struct GraphClient {
    http: reqwest::Client,
    base_url: String,
    tokens: Arc<TokenProvider>,
    retry: RetryPolicy,
    limiter: Arc<dyn limiter::RateLimiter>,
    /// HTTP requests sent (attempts included), for benchmarks and tests.
    requests: std::sync::atomic::AtomicUsize,
    /// Slots taken ahead with [`GraphClient::reserve`], per (tenant, budget): when each was
    /// taken. A slot is good for its budget's window only.
    credits: std::sync::Mutex<
        std::collections::HashMap<(String, limiter::Budget), Vec<std::time::Instant>>,
    >,
    /// This process's part of Outlook's concurrent requests per mailbox.
    mail: MailSlots,
    /// Places for `$batch` requests in flight ([`batch::BATCHES_IN_FLIGHT`]).
    batches: tokio::sync::Semaphore,
    /// Graph's clock, from the `Date` header of every response.
    clock: Arc<crate::support::clock::ServiceClock>,
}

impl GraphClient {
    /// `base_url` is e.g. `https://graph.microsoft.com/v1.0`.
    pub fn new(
        http: reqwest::Client,
        base_url: impl Into<String>,
        tokens: Arc<TokenProvider>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            tokens,
            retry,
            limiter: Arc::new(limiter::LocalLimiter::new(limiter::Limits::published(0.5))),
            requests: std::sync::atomic::AtomicUsize::new(0),
            credits: std::sync::Mutex::new(std::collections::HashMap::new()),
            mail: MailSlots::new(1),
            batches: tokio::sync::Semaphore::new(batch::BATCHES_IN_FLIGHT),
            clock: Arc::default(),
        }
    }

    /// Graph's clock as measured from its responses (see [`crate::support::clock`]).
    pub fn clock(&self) -> &Arc<crate::support::clock::ServiceClock> {
        &self.clock
    }

    /// Graph's time now: the time to write into shared state.
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// Waits for a place among the client's `$batch` requests in flight, held until dropped.
    async fn batch_place(&self) -> tokio::sync::SemaphorePermit<'_> {
        match self.batches.acquire().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("batch places are never closed"),
        }
    }

    /// Waits for one slot of `budget` in `tenant` and keeps it for the next request of that
    /// budget. Lets a caller wait for its turn, then decide whether the request is still needed
    /// (another worker may have done the work meanwhile); an unused slot serves a later request
    /// only within [`GraphClient::credit_life`] (our window's margin over Graph's), and is
    /// dropped after it: the slot was counted when it was taken, but Graph counts the request
    /// when it arrives, and a request sent later than that margin could arrive within Graph's
    /// window of the next slot another process takes (two Identity Protection requests 0.1 s
    /// apart: a 429).
    pub async fn reserve(&self, tenant: &str, budget: limiter::Budget) -> Result<(), GraphError> {
        self.limiter.acquire(tenant, budget, "", 1).await?;
        self.credits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((tenant.to_owned(), budget))
            .or_default()
            .push(std::time::Instant::now());
        Ok(())
    }

    /// How long a reserved slot of `budget` may wait for its request: our window less Graph's
    /// published one (1 request/s for Identity Protection, 5 per 10 s for the reports, per
    /// 10 s for directory reads, 150 s for directory writes, 10 min for Outlook, a minute for
    /// security). Requests admitted a
    /// window `W` apart stay at least Graph's interval apart however late each goes within
    /// `W - Graph's`; 1.2 s for Identity Protection at a share of 0.5, none at a share of 1.
    pub fn credit_life(&self, budget: limiter::Budget) -> Duration {
        let graphs = match budget {
            limiter::Budget::IdentityProtection => Duration::from_secs(1),
            limiter::Budget::Reports | limiter::Budget::Directory => Duration::from_secs(10),
            limiter::Budget::DirectoryWrites => Duration::from_secs(150),
            limiter::Budget::Mail => Duration::from_secs(600),
            limiter::Budget::Security => Duration::from_secs(60),
        };
        self.limiter.limit(budget).1.saturating_sub(graphs)
    }

    fn take_credit(&self, tenant: &str, budget: limiter::Budget) -> bool {
        let life = self.credit_life(budget);
        let mut credits = self.credits.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slots) = credits.get_mut(&(tenant.to_owned(), budget)) else {
            return false;
        };
        slots.retain(|taken| taken.elapsed() < life);
        let fresh = slots.pop().is_some();
        if slots.is_empty() {
            credits.remove(&(tenant.to_owned(), budget));
        }
        fresh
    }

    /// Slots reserved and not used yet for `budget` in `tenant` (expired ones included until
    /// the next request of the budget drops them).
    pub fn reserved(&self, tenant: &str, budget: limiter::Budget) -> usize {
        self.credits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant.to_owned(), budget))
            .map_or(0, Vec::len)
    }

    /// How long to wait after a 429 without `Retry-After`: the budget's own window (Identity
    /// Protection and the reports never send one), with up to 250 ms of jitter.
    fn window_wait(&self, budget: limiter::Budget) -> Duration {
        let (_, window) = self.limiter.limit(budget);
        let mut byte = [0u8; 1];
        let jitter = if aws_lc_rs::rand::fill(&mut byte).is_ok() {
            u64::from(byte[0])
        } else {
            128
        };
        window + Duration::from_millis(jitter)
    }

    /// Keeps to this process's share of each mailbox's concurrent requests when `workers`
    /// processes send mail at once (the worker's `MaximumConcurrency`).
    pub fn with_concurrent_workers(mut self, workers: usize) -> Self {
        self.mail = self.mail.for_workers(workers);
        self
    }

    /// Keeps each mailbox's requests in flight in `ledger`, for every process of the
    /// deployment: never more than Outlook's four in all, and a process may use the slots of
    /// workers that are not sending (see [`mailbox`]).
    pub fn with_shared_mail_slots(mut self, ledger: crate::ledger::Ledger) -> Self {
        self.mail = self.mail.shared(ledger);
        self
    }

    /// This process's part of each mailbox's concurrent requests.
    pub fn mail_slots(&self) -> &MailSlots {
        &self.mail
    }

    /// Uses `limiter` for the per-tenant budgets (e.g. a [`limiter::SharedLimiter`] over the
    /// ledger, so concurrent workers share one window).
    pub fn with_limiter(mut self, limiter: Arc<dyn limiter::RateLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// The application's token provider (for deriving providers for other resources).
    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.tokens
    }

    /// Pages one listing follows at most ([`RetryPolicy::max_pages`]).
    pub fn max_pages(&self) -> usize {
        self.retry.max_pages
    }

    /// HTTP requests sent so far (every attempt counts; a `$batch` counts once).
    pub fn requests_sent(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The base URL (e.g. `https://graph.microsoft.com/v1.0`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The request's path relative to the base URL (`/users/...`).
    fn relative<'a>(&self, url: &'a str) -> &'a str {
        url.strip_prefix(&self.base_url).unwrap_or(url)
    }

    /// Sends one request (path relative to the base URL, or an absolute URL on the same
    /// base) with retries. Returns the JSON body, or `Value::Null` for empty answers.
    pub async fn send(
        &self,
        tenant: &str,
        method: Method,
        path_or_url: &str,
        body: Option<&Value>,
    ) -> Result<Value, GraphError> {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            // Only follow links on our Graph base: a token must never go anywhere else.
            if !path_or_url.starts_with(&format!("{}/", self.base_url)) {
                return Err(GraphError::Decode(
                    "link points outside the Graph base URL".into(),
                ));
            }
            path_or_url.to_owned()
        } else {
            format!("{}{}", self.base_url, path_or_url)
        };
        let mut attempt = 0;
        let mut reauthenticated = false;
        let relative = self.relative(&url).to_owned();
        let budget = limiter::Budget::of(&method, &relative);
        let mailbox = if budget == limiter::Budget::Mail {
            relative
                .split('/')
                .nth(2)
                .unwrap_or("")
                .to_ascii_lowercase()
        } else {
            String::new()
        };
        loop {
            attempt += 1;
            // A $batch acquires for its members before it is sent.
            if relative != "/$batch" && !self.take_credit(tenant, budget) {
                self.limiter.acquire(tenant, budget, &mailbox, 1).await?;
            }
            // A mail on its own holds one slot of its mailbox while it is in flight (a $batch
            // takes them for its mails before it is sent); dropped, it is given back.
            let _slot = if budget == limiter::Budget::Mail && relative != "/$batch" {
                Some(self.mail.take(tenant, &mailbox, 1).await?)
            } else {
                None
            };
            let token = self.tokens.token(tenant).await?;
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose())
                .timeout(self.retry.request_timeout);
            request = match body {
                Some(body) => request.json(body),
                // Graph answers 411 to a POST or PATCH with neither Content-Length nor
                // Transfer-Encoding: a bodyless write says its length is zero.
                None if method != Method::GET && method != Method::DELETE => request
                    .header(reqwest::header::CONTENT_LENGTH, "0")
                    .body(Vec::<u8>::new()),
                None => request,
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    if attempt < self.retry.max_attempts {
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return Err(GraphError::Transport(e.without_url().to_string()));
                }
            };
            if let Some(date) = response
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok())
            {
                self.clock.observe(date);
            }
            let status = response.status();
            if status.is_success() {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| GraphError::Transport(e.without_url().to_string()))?;
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_slice(&bytes)
                    .map_err(|e| GraphError::Decode(e.to_string()));
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let envelope: ErrorEnvelope = response.json().await.unwrap_or_default();
            let ErrorBody { code, message } = envelope.error;
            match status {
                StatusCode::UNAUTHORIZED if !reauthenticated => {
                    // A revoked or expired token: fetch a new one once.
                    self.tokens.invalidate(tenant).await;
                    reauthenticated = true;
                    attempt -= 1;
                    continue;
                }
                StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
                | StatusCode::BAD_GATEWAY
                | StatusCode::INTERNAL_SERVER_ERROR => {
                    // Identity Protection and the reports throttle without Retry-After: wait
                    // out the budget's window (a shorter backoff could give up just before it
                    // passes).
                    let wait = retry_after.unwrap_or_else(|| {
                        if status == StatusCode::TOO_MANY_REQUESTS {
                            self.window_wait(budget)
                        } else {
                            self.backoff(attempt)
                        }
                    });
                    let too_long = retry_after.is_some_and(|after| after > self.retry.max_delay);
                    if attempt >= self.retry.max_attempts || too_long {
                        tracing::warn!(
                            status = status.as_u16(),
                            attempt,
                            "Graph retries exhausted"
                        );
                        return Err(if status == StatusCode::TOO_MANY_REQUESTS {
                            GraphError::Throttled { attempts: attempt }
                        } else {
                            GraphError::Api {
                                status: status.as_u16(),
                                code,
                                message,
                            }
                        });
                    }
                    tracing::info!(
                        status = status.as_u16(),
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "Graph asked to retry"
                    );
                    tokio::time::sleep(wait).await;
                }
                StatusCode::FORBIDDEN => return Err(GraphError::Forbidden { code, message }),
                StatusCode::NOT_FOUND => return Err(GraphError::NotFound { code, message }),
                _ => {
                    return Err(GraphError::Api {
                        status: status.as_u16(),
                        code,
                        message,
                    });
                }
            }
        }
    }

    /// GETs a whole collection, following `@odata.nextLink` to the end; a collection longer
    /// than `max_pages` is an error ([`GraphError::Truncated`]), never a short answer.
    pub async fn get_all(&self, tenant: &str, path: &str) -> Result<Vec<Value>, GraphError> {
        let mut items = Vec::new();
        self.for_each_item(tenant, path, |item| {
            items.push(item);
            Ok(())
        })
        .await?
        .complete()?;
        Ok(items)
    }

    /// GETs a collection page by page, following `@odata.nextLink` (at most `max_pages`), and
    /// hands each item to `visit` without keeping the pages. Says whether every page was read:
    /// a caller must not treat a truncated listing as the whole collection.
    pub async fn for_each_item(
        &self,
        tenant: &str,
        path: &str,
        visit: impl FnMut(Value) -> Result<(), GraphError>,
    ) -> Result<Paging, GraphError> {
        self.for_each_item_up_to(tenant, path, self.retry.max_pages, visit)
            .await
            .map(|(paging, _)| paging)
    }

    /// As [`GraphClient::for_each_item`], following at most `max_pages` pages (a caller
    /// sharing one page budget between listings); also says how many pages were read.
    pub async fn for_each_item_up_to(
        &self,
        tenant: &str,
        path: &str,
        max_pages: usize,
        visit: impl FnMut(Value) -> Result<(), GraphError>,
    ) -> Result<(Paging, usize), GraphError> {
        self.list_pages(tenant, path, max_pages, visit)
            .await
            .map(|listed| (listed.paging, listed.pages))
    }

    /// GETs a collection from `path` (a first request, or the `@odata.nextLink` a truncated
    /// listing stopped at), following at most `max_pages` pages and handing each item to
    /// `visit`; says where a truncated listing stopped.
    pub async fn list_pages(
        &self,
        tenant: &str,
        path: &str,
        max_pages: usize,
        mut visit: impl FnMut(Value) -> Result<(), GraphError>,
    ) -> Result<Listed, GraphError> {
        let mut next = Some(path.to_owned());
        let mut pages = 0;
        while let Some(link) = next.take() {
            if pages == max_pages {
                tracing::warn!(
                    pages,
                    "stopped paging at the page limit: the listing continues from its next link"
                );
                return Ok(Listed {
                    paging: Paging::Truncated { pages },
                    pages,
                    next_link: Some(link),
                });
            }
            pages += 1;
            let mut page = self.send(tenant, Method::GET, &link, None).await?;
            next = page
                .get("@odata.nextLink")
                .and_then(Value::as_str)
                .map(str::to_owned);
            match page.get_mut("value").map(Value::take) {
                Some(Value::Array(values)) => {
                    for value in values {
                        visit(value)?;
                    }
                }
                _ => {
                    return Err(GraphError::Decode(
                        "collection without a value array".into(),
                    ));
                }
            }
        }
        Ok(Listed {
            paging: Paging::Complete,
            pages,
            next_link: None,
        })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry
            .base_delay
            .saturating_mul(1 << attempt.saturating_sub(1).min(10));
        // Full jitter keeps many workers from retrying in step.
        let mut byte = [0u8; 1];
        let jitter = if aws_lc_rs::rand::fill(&mut byte).is_ok() {
            f64::from(byte[0]) / 255.0
        } else {
            1.0
        };
        exp.min(self.retry.max_delay).mul_f64(0.5 + jitter / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(limits: limiter::Limits) -> GraphClient {
        let http = reqwest::Client::new();
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            "http://127.0.0.1:9",
            "11111111-2222-3333-4444-555555555555",
            ClientCredential::Secret(crate::support::secret::SecretString::new("unused")),
            "https://graph.microsoft.com/.default",
        ));
        GraphClient::new(
            http,
            "http://127.0.0.1:9/v1.0",
            tokens,
            RetryPolicy::default(),
        )
        .with_limiter(Arc::new(limiter::LocalLimiter::new(limits)))
    }

    #[tokio::test]
    async fn a_reserved_slot_lapses_once_its_request_could_crowd_the_next() {
        let budget = limiter::Budget::IdentityProtection;
        // Our window 1.15 s, Graph's 1 s: a reserved slot may wait 150 ms for its request.
        let graph = client(limiter::Limits {
            identity_protection: (1, Duration::from_millis(1150)),
            ..limiter::Limits::published(1.0)
        });
        assert_eq!(graph.credit_life(budget), Duration::from_millis(150));
        graph.reserve("t", budget).await.unwrap();
        assert!(
            graph.take_credit("t", budget),
            "a fresh slot serves the next request"
        );
        assert!(!graph.take_credit("t", budget), "and only one");
        graph.reserve("t", budget).await.unwrap();
        assert_eq!(graph.reserved("t", budget), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !graph.take_credit("t", budget),
            "a slot older than its life is not used: the request takes a new one"
        );
        assert_eq!(graph.reserved("t", budget), 0, "and the old one is dropped");
        // At a share of 0.5 (1 per 2.2 s), 1.2 s; at the whole budget, the 10% margin only.
        let half = client(limiter::Limits::published(0.5));
        assert_eq!(half.credit_life(budget), Duration::from_millis(1200));
        let whole = client(limiter::Limits::published(1.0));
        assert_eq!(whole.credit_life(budget), Duration::from_millis(100));
    }

    #[test]
    fn paging_says_whether_the_listing_is_whole() {
        assert!(Paging::Complete.complete().is_ok());
        assert_eq!(
            Paging::Truncated { pages: 50 }.complete(),
            Err(GraphError::Truncated { pages: 50 })
        );
        assert!(GraphError::Truncated { pages: 50 }.is_transient());
    }
}
