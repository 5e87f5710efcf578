//! Faults a test injects: the token endpoint refusing or down, the next requests throttled or
//! unavailable, paths refused with 403 or another status, mails that fail. The gate
//! ([`crate::gate`]) applies them after the throttle limits, as Graph's front end would answer.

use axum::http::Method;

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
    /// Every `sendMail` from now on waits without ever reaching Outlook or being answered: the
    /// moment a worker's process dies with its mails unsent (the test then drops the worker).
    pub stall_mail: bool,
    /// Graph's clock (its `Date` header) runs this far behind the host's: the moment of a
    /// host whose clock is that much fast.
    pub clock_behind: std::time::Duration,
}
