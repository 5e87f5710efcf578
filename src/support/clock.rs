//! A service's clock as this process sees it: every Microsoft Graph response carries a `Date`
//! header, and the difference from the host's clock is the host's skew. Times this process writes
//! into shared state (the sweep's watermarks, the risk view, rate windows, leases) are taken
//! from the service's clock, so one host with a fast or slow clock cannot move shared state
//! into the future or hold it in the past; a stored time later than the service's clock by
//! more than [`SKEW_ALLOWANCE`] is refused with an error naming how far ahead it is.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use time::OffsetDateTime;

/// How far a time may be ahead of the service's clock and still be taken as written by a
/// host in step with it: the `Date` header's whole seconds, request latency and ordinary NTP
/// drift are far below it; a host whose clock is off by more is named in the logs.
pub const SKEW_ALLOWANCE: time::Duration = time::Duration::minutes(2);

/// Below this, a measured difference is the `Date` header's one-second resolution plus the
/// response's latency, not skew: the host's clock is used as it is.
const RESOLUTION_MS: i64 = 2_000;

/// A time later than the service's clock allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} ({at}) is {ahead} ahead of Microsoft Graph's clock{host}: it was refused; check the time sync (NTP) of the host that wrote it"
)]
pub struct FutureTime {
    pub what: String,
    pub at: String,
    pub ahead: String,
    host: String,
}

/// The service's clock, measured from the `Date` headers of Graph's responses.
#[derive(Debug, Default)]
pub struct ServiceClock {
    /// Host minus service, in milliseconds (0 within [`RESOLUTION_MS`]).
    offset_ms: AtomicI64,
    measured: AtomicBool,
    /// Whether a skew beyond the allowance was logged already.
    warned: AtomicBool,
}

impl ServiceClock {
    /// Takes a response's `Date` header (an HTTP date), received now.
    pub fn observe(&self, date: &str) {
        if let Ok(at) = httpdate::parse_http_date(date) {
            self.observe_at(OffsetDateTime::from(at), OffsetDateTime::now_utc());
        }
    }

    /// Takes the service's time `service`, seen at the host's time `host`.
    pub fn observe_at(&self, service: OffsetDateTime, host: OffsetDateTime) {
        let offset = (host - service).whole_milliseconds();
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let offset = if offset.abs() < RESOLUTION_MS {
            0
        } else {
            offset
        };
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.measured.store(true, Ordering::Relaxed);
        let skew = time::Duration::milliseconds(offset);
        if skew.abs() > SKEW_ALLOWANCE && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::error!(
                skew = %plain(skew.abs()),
                direction = if offset > 0 { "ahead" } else { "behind" },
                "this host's clock is off Microsoft Graph's clock (the Date header) by more than the allowance: times written to shared state are taken from Graph's clock; fix the host's time sync (NTP)"
            );
        }
    }

    /// The host's clock minus the service's, once a response was seen.
    pub fn skew(&self) -> Option<time::Duration> {
        self.measured
            .load(Ordering::Relaxed)
            .then(|| time::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed)))
    }

    /// The service's time now (the host's, until a response was seen).
    pub fn now(&self) -> OffsetDateTime {
        self.to_service(OffsetDateTime::now_utc())
    }

    /// The service's time when the host's clock read `host`.
    pub fn to_service(&self, host: OffsetDateTime) -> OffsetDateTime {
        host - time::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// `at` if it is no later than the service's clock allows ([`SKEW_ALLOWANCE`]); otherwise
    /// an error naming `what`, how far ahead it is, and this host's own skew.
    pub fn not_future(&self, what: &str, at: OffsetDateTime) -> Result<OffsetDateTime, FutureTime> {
        let now = self.now();
        if at <= now + SKEW_ALLOWANCE {
            return Ok(at);
        }
        let host = match self.skew() {
            Some(skew) if skew.abs() > SKEW_ALLOWANCE => format!(
                " (this host's clock is {} {})",
                plain(skew.abs()),
                if skew.is_positive() {
                    "ahead"
                } else {
                    "behind"
                }
            ),
            Some(_) => " (this host's clock is in step with Graph's)".to_owned(),
            None => String::new(),
        };
        Err(FutureTime {
            what: what.to_owned(),
            at: at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            ahead: plain(at - now),
            host,
        })
    }
}

/// A duration as people say it: "2 h 5 min", "40 s".
pub fn plain(d: time::Duration) -> String {
    let seconds = d.whole_seconds().max(0);
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, m) => format!("{m} min {s} s"),
        (h, m) => format!("{h} h {m} min"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_host_takes_the_services_time_and_refuses_its_own() {
        let clock = ServiceClock::default();
        let host = OffsetDateTime::now_utc();
        assert_eq!(clock.skew(), None);
        // The host reads two hours more than Graph's Date header.
        clock.observe_at(host - time::Duration::hours(2), host);
        let skew = clock.skew().unwrap();
        assert_eq!(skew.whole_minutes(), 120);
        let service = clock.now();
        assert!(
            (service - (OffsetDateTime::now_utc() - time::Duration::hours(2))).abs()
                < time::Duration::seconds(5)
        );
        let err = clock
            .not_future("the sweep watermark", OffsetDateTime::now_utc())
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("the sweep watermark"), "{text}");
        assert!(text.contains("ahead of Microsoft Graph's clock"), "{text}");
        assert!(
            text.contains("this host's clock is 2 h 0 min ahead"),
            "{text}"
        );
        assert!(
            clock
                .not_future("t", service + time::Duration::minutes(1))
                .is_ok()
        );
    }

    #[test]
    fn the_date_headers_resolution_is_not_skew() {
        let clock = ServiceClock::default();
        let host = OffsetDateTime::now_utc();
        clock.observe_at(host - time::Duration::milliseconds(1_400), host);
        assert_eq!(clock.skew(), Some(time::Duration::ZERO));
        clock.observe("Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(clock.skew().unwrap() > time::Duration::days(365 * 30));
        clock.observe("not a date");
        assert!(
            clock.skew().unwrap() > time::Duration::days(365 * 30),
            "kept"
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(plain(time::Duration::seconds(40)), "40 s");
        assert_eq!(plain(time::Duration::seconds(125)), "2 min 5 s");
        assert_eq!(plain(time::Duration::minutes(125)), "2 h 5 min");
    }
}
