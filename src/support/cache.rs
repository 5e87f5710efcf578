//! A value fetched from a remote source (a secret, a signing-key set) and cached in-process:
//! one fetch at a time, shared by every caller waiting for it; a failed fetch is remembered for
//! a while instead of being retried by every request; and the last good value is served while a
//! refetch is retried (stale-while-revalidate), up to a hard limit after which it is not used.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a [`RefreshCache`] ages its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// A value younger than this is served without asking the source.
    pub fresh_for: Duration,
    /// Hard limit: a value older than this (since the source last returned it) is never served.
    pub usable_for: Duration,
    /// After a failed fetch, no new fetch starts for this long; callers get the last good value
    /// (within `usable_for`) or the remembered error at once.
    pub retry_after_failure: Duration,
    /// How long a caller that holds a usable stale value waits for the refetch before it is
    /// served the stale value (zero: served at once, the refetch runs in the background).
    pub stale_wait: Duration,
    /// A fetch that has not finished after this long counts as failed.
    pub fetch_timeout: Duration,
}

/// Why no value could be served. Carries the source's error text (never a secret value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The last fetch failed and no usable value is held.
    #[error("{0}")]
    Failed(String),
    /// The fetch did not finish before the caller's deadline.
    #[error("not fetched within the time allowed")]
    TimedOut,
}

/// The source of a cached value.
#[async_trait]
pub trait Fetch<T>: Send + Sync + 'static {
    /// Fetches the current value. The error text is logged: it must not contain secret values.
    async fn fetch(&self) -> Result<Arc<T>, String>;
}

/// Outcome of [`RefreshCache::refresh`].
#[derive(Debug)]
pub enum Refresh<T> {
    /// A fetch finished while the caller waited and succeeded.
    Fetched(Arc<T>),
    /// A fetch finished while the caller waited and failed.
    Failed(String),
    /// A fetch was running, or started, and did not finish before the deadline.
    TimedOut,
    /// No fetch was started: one was attempted within the interval asked for, or the last one
    /// failed recently. `last_ok` says whether that last attempt succeeded.
    Throttled { last_ok: bool },
}

struct State<T> {
    value: Option<Arc<T>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Error of the last finished attempt, if it failed.
    last_error: Option<String>,
    in_flight: bool,
    /// Number of finished attempts.
    finished: u64,
}

struct Inner<T> {
    name: &'static str,
    fetcher: Box<dyn Fetch<T>>,
    policy: CachePolicy,
    state: Mutex<State<T>>,
    /// Bumped after every finished attempt; waiters subscribe to it.
    done: watch::Sender<u64>,
}

/// A cached remote value; cheap to clone (clones share the cache).
pub struct RefreshCache<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for RefreshCache<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

enum Step<T> {
    Serve(Arc<T>),
    Fail(CacheError),
    Wait {
        receiver: watch::Receiver<u64>,
        until: Instant,
        stale: Option<Arc<T>>,
    },
}

impl<T: Send + Sync + 'static> RefreshCache<T> {
    /// An empty cache; nothing is fetched until a caller asks. `name` appears in log lines.
    pub fn new(name: &'static str, fetcher: impl Fetch<T>, policy: CachePolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                name,
                fetcher: Box::new(fetcher),
                policy,
                state: Mutex::new(State {
                    value: None,
                    fetched_at: None,
                    last_attempt: None,
                    last_error: None,
                    in_flight: false,
                    finished: 0,
                }),
                done: watch::channel(0).0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value: fresh; or stale within the hard limit (a refetch is started, and awaited for
    /// at most `stale_wait`); or, when nothing usable is held, the result of a fetch awaited
    /// until `deadline`. Concurrent callers share one fetch.
    pub async fn get(&self, deadline: Instant) -> Result<Arc<T>, CacheError> {
        let policy = self.inner.policy;
        let mut started_at: Option<u64> = None;
        loop {
            let step = {
                let mut s = self.lock();
                let now = Instant::now();
                let age = s.fetched_at.map(|t| now.saturating_duration_since(t));
                let usable = match (&s.value, age) {
                    (Some(value), Some(age)) if age < policy.usable_for => Some(value.clone()),
                    _ => None,
                };
                if let (Some(value), Some(age)) = (&usable, age)
                    && age < policy.fresh_for
                {
                    return Ok(value.clone());
                }
                let seen = *started_at.get_or_insert(s.finished);
                // An attempt finished since this call began: do not start another for it.
                let attempted_for_us = s.finished > seen;
                let backing_off = s.last_error.is_some()
                    && s.last_attempt.is_some_and(|t| {
                        now.saturating_duration_since(t) < policy.retry_after_failure
                    });
                if !s.in_flight && !backing_off && !attempted_for_us {
                    self.start(&mut s, now);
                }
                match (usable, s.in_flight) {
                    (Some(stale), false) => Step::Serve(stale),
                    (Some(stale), true) if policy.stale_wait.is_zero() => Step::Serve(stale),
                    (stale @ Some(_), true) => Step::Wait {
                        receiver: self.inner.done.subscribe(),
                        until: deadline.min(now + policy.stale_wait),
                        stale,
                    },
                    (None, true) => Step::Wait {
                        receiver: self.inner.done.subscribe(),
                        until: deadline,
                        stale: None,
                    },
                    (None, false) => Step::Fail(CacheError::Failed(
                        s.last_error
                            .clone()
                            .unwrap_or_else(|| "no value fetched yet".into()),
                    )),
                }
            };
            match step {
                Step::Serve(value) => return Ok(value),
                Step::Fail(error) => return Err(error),
                Step::Wait {
                    mut receiver,
                    until,
                    stale,
                } => {
                    let finished = tokio::time::timeout_at(until, receiver.changed()).await;
                    if finished.is_err() {
                        return stale.ok_or(CacheError::TimedOut);
                    }
                }
            }
        }
    }

    /// Asks for a refetch now (for example, for a signing key id that is not known), unless
    /// any fetch was attempted within `min_interval` or the last one failed within the
    /// failure back-off. Waits for it (or for the fetch already running) until `deadline`.
    pub async fn refresh(&self, min_interval: Duration, deadline: Instant) -> Refresh<T> {
        let policy = self.inner.policy;
        let (mut receiver, seen) = {
            let mut s = self.lock();
            let now = Instant::now();
            if !s.in_flight {
                let last_ok = s.last_error.is_none();
                let since = s.last_attempt.map(|t| now.saturating_duration_since(t));
                let throttled = since.is_some_and(|d| d < min_interval)
                    || (!last_ok && since.is_some_and(|d| d < policy.retry_after_failure));
                if throttled {
                    return Refresh::Throttled { last_ok };
                }
                self.start(&mut s, now);
            }
            (self.inner.done.subscribe(), s.finished)
        };
        loop {
            if tokio::time::timeout_at(deadline, receiver.changed())
                .await
                .is_err()
            {
                return Refresh::TimedOut;
            }
            let s = self.lock();
            if s.finished > seen {
                return match (&s.last_error, &s.value) {
                    (None, Some(value)) => Refresh::Fetched(value.clone()),
                    (Some(error), _) => Refresh::Failed(error.clone()),
                    (None, None) => Refresh::Failed("no value".into()),
                };
            }
        }
    }

    /// When the value held was fetched, if any.
    pub fn fetched_at(&self) -> Option<Instant> {
        self.lock().fetched_at
    }

    /// The value held, fresh or stale, if it is still within the hard limit.
    pub fn current(&self) -> Option<Arc<T>> {
        let s = self.lock();
        let age = s.fetched_at?.elapsed();
        (age < self.inner.policy.usable_for)
            .then(|| s.value.clone())
            .flatten()
    }

    fn start(&self, s: &mut State<T>, now: Instant) {
        s.in_flight = true;
        s.last_attempt = Some(now);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let timeout = inner.policy.fetch_timeout;
            let result = match tokio::time::timeout(timeout, inner.fetcher.fetch()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            };
            {
                let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                s.in_flight = false;
                s.finished += 1;
                match result {
                    Ok(value) => {
                        if s.last_error.is_some() {
                            tracing::info!(cache = inner.name, "refreshed after a failure");
                        }
                        s.value = Some(value);
                        s.fetched_at = Some(Instant::now());
                        s.last_error = None;
                    }
                    Err(error) => {
                        let age = s.fetched_at.map(|t| t.elapsed());
                        let serving = age.filter(|a| *a < inner.policy.usable_for);
                        match serving {
                            Some(age) => tracing::warn!(
                                cache = inner.name,
                                error = %error,
                                last_good_age_s = age.as_secs(),
                                served_for_at_most_s =
                                    inner.policy.usable_for.saturating_sub(age).as_secs(),
                                "refresh failed; serving the last good value"
                            ),
                            None => tracing::error!(
                                cache = inner.name,
                                error = %error,
                                "fetch failed; no usable value"
                            ),
                        }
                        s.last_error = Some(error);
                    }
                }
            }
            inner.done.send_modify(|n| *n += 1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Source {
        calls: Arc<AtomicUsize>,
        fail: Arc<AtomicBool>,
        delay: Duration,
    }

    #[async_trait]
    impl Fetch<usize> for Source {
        async fn fetch(&self) -> Result<Arc<usize>, String> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            if self.fail.load(Ordering::SeqCst) {
                Err(format!("failure {n}"))
            } else {
                Ok(Arc::new(n))
            }
        }
    }

    fn policy() -> CachePolicy {
        CachePolicy {
            fresh_for: Duration::from_millis(100),
            usable_for: Duration::from_millis(400),
            retry_after_failure: Duration::from_millis(150),
            stale_wait: Duration::ZERO,
            fetch_timeout: Duration::from_secs(5),
        }
    }

    fn cache(delay: Duration) -> (RefreshCache<usize>, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let source = Source {
            calls: calls.clone(),
            fail: fail.clone(),
            delay,
        };
        (RefreshCache::new("test", source, policy()), calls, fail)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let (cache, calls, _) = cache(Duration::from_millis(50));
        let results = futures_util::future::join_all((0..8).map(|_| cache.get(soon()))).await;
        assert!(
            results.iter().all(|r| r.as_deref() == Ok(&1)),
            "{results:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Fresh: served without a fetch.
        assert_eq!(*cache.get(soon()).await.unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_is_remembered_then_retried() {
        let (cache, calls, fail) = cache(Duration::ZERO);
        fail.store(true, Ordering::SeqCst);
        assert_eq!(
            cache.get(soon()).await,
            Err(CacheError::Failed("failure 1".into()))
        );
        assert_eq!(
            cache.get(soon()).await,
            Err(CacheError::Failed("failure 1".into()))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "failure remembered");
        tokio::time::sleep(Duration::from_millis(200)).await;
        fail.store(false, Ordering::SeqCst);
        assert_eq!(*cache.get(soon()).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn stale_value_is_served_up_to_the_hard_limit() {
        let (cache, calls, fail) = cache(Duration::ZERO);
        assert_eq!(*cache.get(soon()).await.unwrap(), 1);
        fail.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Stale: served at once, a refetch runs in the background and fails.
        assert_eq!(*cache.get(soon()).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(*cache.get(soon()).await.unwrap(), 1);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "back-off after the failure"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        let err = cache.get(soon()).await.unwrap_err();
        assert!(matches!(err, CacheError::Failed(_)), "{err:?}");
        assert!(cache.current().is_none());
    }

    #[tokio::test]
    async fn a_slow_fetch_times_out_for_the_caller_but_fills_the_cache() {
        let (cache, calls, _) = cache(Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(cache.get(deadline).await, Err(CacheError::TimedOut));
        assert_eq!(cache.get(deadline).await, Err(CacheError::TimedOut));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(*cache.get(soon()).await.unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn forced_refreshes_are_limited() {
        let (cache, calls, fail) = cache(Duration::ZERO);
        assert_eq!(*cache.get(soon()).await.unwrap(), 1);
        let interval = Duration::from_secs(60);
        for _ in 0..5 {
            assert!(matches!(
                cache.refresh(interval, soon()).await,
                Refresh::Throttled { last_ok: true }
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            cache.refresh(Duration::ZERO, soon()).await,
            Refresh::Failed(_)
        ));
        for _ in 0..5 {
            assert!(matches!(
                cache.refresh(Duration::ZERO, soon()).await,
                Refresh::Throttled { last_ok: false }
            ));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "no fetch during the back-off"
        );
    }
}
