//! Standard Webhooks authentication (HMAC-SHA256): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64>` headers over `{id}.{timestamp}.{body}`, `whsec_` keys
//! (several at once for rotation), timestamp tolerance, and refusal of replayed ids.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::hmac;
use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::HeaderMap;
use time::OffsetDateTime;

/// Accepted distance between `webhook-timestamp` and our clock, either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Most `v1,` entries examined in one signature header.
const MAX_SIGNATURES: usize = 8;
/// Longest accepted `webhook-id`.
const MAX_ID_LEN: usize = 256;

/// Why a request is not authenticated (answered 401, except [`SignatureError::Replayed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-id is empty, too long or not printable")]
    BadId,
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the {0}-second tolerance")]
    Stale(u64),
    #[error("no webhook-signature matches any configured key")]
    NoMatch,
    #[error("no webhook signing key is configured")]
    NoKeys,
    #[error("webhook-id was already received")]
    Replayed,
}

/// A request whose signature verified: its id and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedWebhook {
    pub id: String,
    pub timestamp: OffsetDateTime,
    /// Position of the key that signed it (each key names the tenants it may speak for).
    pub key: usize,
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(SignatureError::MissingHeader(name))
}

/// Standard base64 with or without its `=` padding, as the reference libraries accept keys
/// (the Python one appends `==` and decodes leniently).
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a `whsec_<base64>` key (the prefix is optional, the padding too) into HMAC key
/// bytes; `None` if it is not base64 or empty.
pub fn decode_key(key: &str) -> Option<Vec<u8>> {
    let encoded = key.trim();
    let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
    KEY_BASE64.decode(encoded).ok().filter(|k| !k.is_empty())
}

/// Shortest signing key accepted, in bytes once decoded: Standard Webhooks keys are 24 to 64
/// random bytes (the specification's "Signature scheme" section).
pub const MIN_KEY_BYTES: usize = 24;

/// Why a configured signing key is refused (never showing the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not a Standard Webhooks key (whsec_ followed by base64)")]
    NotBase64,
    #[error("is {0} bytes long; Standard Webhooks keys are at least {MIN_KEY_BYTES} random bytes")]
    TooShort(usize),
}

/// A Standard Webhooks signing key, decoded once when the secrets load. `Debug` shows nothing
/// of it, and the key bytes are not kept outside aws-lc-rs.
#[derive(Clone)]
pub struct WebhookKey(hmac::Key);

impl WebhookKey {
    /// Parses a `whsec_<base64>` key of at least [`MIN_KEY_BYTES`] bytes.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        let mut bytes = decode_key(key).ok_or(KeyError::NotBase64)?;
        let length = bytes.len();
        let parsed =
            (length >= MIN_KEY_BYTES).then(|| Self(hmac::Key::new(hmac::HMAC_SHA256, &bytes)));
        zeroize::Zeroize::zeroize(&mut bytes);
        parsed.ok_or(KeyError::TooShort(length))
    }
}

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey([redacted])")
    }
}

/// Verifies headers and body against `keys` at time `now`. Does not check for replay.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    keys: &[WebhookKey],
    now: OffsetDateTime,
    tolerance: Duration,
) -> Result<VerifiedWebhook, SignatureError> {
    let id = header(headers, "webhook-id")?;
    let timestamp = header(headers, "webhook-timestamp")?;
    let signatures = header(headers, "webhook-signature")?;
    if id.len() > MAX_ID_LEN || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(SignatureError::BadId);
    }
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let sent =
        OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| SignatureError::BadTimestamp)?;
    if (now - sent).unsigned_abs() > tolerance {
        return Err(SignatureError::Stale(tolerance.as_secs()));
    }

    if keys.is_empty() {
        return Err(SignatureError::NoKeys);
    }
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);

    let candidates = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| STANDARD.decode(sig).ok())
        .take(MAX_SIGNATURES);
    for candidate in candidates {
        // hmac::verify compares in constant time.
        if let Some(key) = keys
            .iter()
            .position(|key| hmac::verify(&key.0, &signed, &candidate).is_ok())
        {
            return Ok(VerifiedWebhook {
                id: id.to_owned(),
                timestamp: sent,
                key,
            });
        }
    }
    Err(SignatureError::NoMatch)
}

/// Signs like a Standard Webhooks sender: the `webhook-signature` header value for a key.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
}

/// The replay store could not be reached: the delivery cannot be accepted safely (503).
#[derive(Debug, thiserror::Error)]
#[error("replay store unavailable: {0}")]
pub struct ReplayStoreError(pub String);

/// Port: remembers webhook ids long enough to refuse replays within the tolerance window.
#[async_trait]
pub trait ReplayGuard: Send + Sync {
    /// Records `id`; `Ok(false)` if it was already recorded and has not expired.
    async fn first_seen(&self, id: &str, remember_for: Duration) -> Result<bool, ReplayStoreError>;
    /// Forgets `id`, so that a retry of a delivery that could not be kept is let through.
    async fn forget(&self, id: &str);
}

/// In-process replay guard (one instance; the DynamoDB ledger serves several).
#[derive(Default)]
pub struct MemoryReplayGuard {
    seen: Mutex<HashMap<String, OffsetDateTime>>,
}

#[async_trait]
impl ReplayGuard for MemoryReplayGuard {
    async fn first_seen(&self, id: &str, remember_for: Duration) -> Result<bool, ReplayStoreError> {
        let now = OffsetDateTime::now_utc();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, expires| *expires > now);
        if seen.contains_key(id) {
            return Ok(false);
        }
        seen.insert(id.to_owned(), now + remember_for);
        Ok(true)
    }

    async fn forget(&self, id: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published example of the Standard Webhooks specification.
    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", ts.parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        h
    }

    fn at(ts: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(ts).unwrap()
    }

    fn keys(list: &[&str]) -> Vec<WebhookKey> {
        list.iter().map(|k| WebhookKey::parse(k).unwrap()).collect()
    }

    /// A second key of 24 bytes ("another-24-byte-hmac-key").
    const OTHER_KEY: &str = "whsec_YW5vdGhlci0yNC1ieXRlLWhtYWMta2V5";

    #[test]
    fn keys_shorter_than_24_bytes_are_refused() {
        // 23 bytes: one short of the specification's minimum.
        let short = "whsec_c2lnbmluZy1rZXktb2YtMjMtYnl0ZXM";
        assert_eq!(decode_key(short).map(|k| k.len()), Some(23));
        assert_eq!(WebhookKey::parse(short).err(), Some(KeyError::TooShort(23)));
        assert!(WebhookKey::parse(KEY).is_ok(), "24 bytes");
        assert_eq!(
            WebhookKey::parse("whsec_not*base64").err(),
            Some(KeyError::NotBase64)
        );
    }

    #[test]
    fn unpadded_keys_are_accepted_as_the_reference_libraries_do() {
        // The spec's key is 24 bytes (no padding); this one is 25 bytes: "=" when padded.
        let padded = "whsec_c2lnbmluZy1rZXktb2YtMjUtYnl0ZXMhIQ==";
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(decode_key(padded), decode_key(unpadded));
        assert_eq!(decode_key(unpadded).unwrap(), b"signing-key-of-25-bytes!!");
        let raw = decode_key(padded).unwrap();
        let h = headers(ID, &TS.to_string(), &sign(&raw, ID, TS, BODY));
        assert!(verify(&h, BODY, &keys(&[unpadded]), at(TS), DEFAULT_TOLERANCE).is_ok());
        assert!(decode_key("whsec_").is_none());
        assert!(decode_key("whsec_not*base64").is_none());
    }

    #[test]
    fn spec_example_verifies() {
        let h = headers(ID, &TS.to_string(), SIG);
        let ok = verify(&h, BODY, &keys(&[KEY]), at(TS), DEFAULT_TOLERANCE).unwrap();
        assert_eq!(ok.id, ID);
        assert_eq!(sign(&decode_key(KEY).unwrap(), ID, TS, BODY), SIG);
    }

    #[test]
    fn any_of_several_keys_and_signatures_may_match() {
        let sigs = format!("v1,AAAA v2,whatever {SIG}");
        let h = headers(ID, &TS.to_string(), &sigs);
        let ring = keys(&[OTHER_KEY, KEY]);
        assert!(verify(&h, BODY, &ring, at(TS), DEFAULT_TOLERANCE).is_ok());
    }

    #[test]
    fn tampered_body_id_or_wrong_key_fails() {
        let h = headers(ID, &TS.to_string(), SIG);
        let tampered = br#"{"test": 2432232315}"#;
        let err = verify(&h, tampered, &keys(&[KEY]), at(TS), DEFAULT_TOLERANCE);
        assert_eq!(err, Err(SignatureError::NoMatch));
        let h2 = headers("msg_other", &TS.to_string(), SIG);
        let err = verify(&h2, BODY, &keys(&[KEY]), at(TS), DEFAULT_TOLERANCE);
        assert_eq!(err, Err(SignatureError::NoMatch));
        let err = verify(&h, BODY, &keys(&[OTHER_KEY]), at(TS), DEFAULT_TOLERANCE);
        assert_eq!(err, Err(SignatureError::NoMatch));
    }

    #[test]
    fn timestamp_tolerance_is_five_minutes_either_way() {
        let h = headers(ID, &TS.to_string(), SIG);
        let k = keys(&[KEY]);
        assert!(verify(&h, BODY, &k, at(TS + 300), DEFAULT_TOLERANCE).is_ok());
        assert!(verify(&h, BODY, &k, at(TS - 300), DEFAULT_TOLERANCE).is_ok());
        assert_eq!(
            verify(&h, BODY, &k, at(TS + 301), DEFAULT_TOLERANCE),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            verify(&h, BODY, &k, at(TS - 301), DEFAULT_TOLERANCE),
            Err(SignatureError::Stale(300))
        );
    }

    #[test]
    fn missing_or_malformed_headers_are_named() {
        let k = keys(&[KEY]);
        let mut h = headers(ID, &TS.to_string(), SIG);
        h.remove("webhook-signature");
        assert_eq!(
            verify(&h, BODY, &k, at(TS), DEFAULT_TOLERANCE),
            Err(SignatureError::MissingHeader("webhook-signature"))
        );
        let h = headers(ID, "yesterday", SIG);
        assert_eq!(
            verify(&h, BODY, &k, at(TS), DEFAULT_TOLERANCE),
            Err(SignatureError::BadTimestamp)
        );
        let h = headers(ID, &TS.to_string(), SIG);
        assert_eq!(
            verify(&h, BODY, &[], at(TS), DEFAULT_TOLERANCE),
            Err(SignatureError::NoKeys)
        );
    }

    #[tokio::test]
    async fn replay_guard_refuses_a_second_delivery() {
        let guard = MemoryReplayGuard::default();
        assert!(
            guard
                .first_seen("a", Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert!(
            !guard
                .first_seen("a", Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert!(
            guard
                .first_seen("b", Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert!(guard.first_seen("c", Duration::ZERO).await.unwrap());
        assert!(guard.first_seen("c", Duration::ZERO).await.unwrap());
    }
}
