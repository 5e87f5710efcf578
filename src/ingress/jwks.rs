//! The Microsoft identity platform's signing keys (JWKS) and RS256 verification of the tokens
//! they sign: Graph `validationTokens` and Entra ID access tokens (Sentinel playbooks' managed
//! identities) share one key set and one cache.
//!
//! The cache follows Microsoft's guidance for key metadata ("Signing key rollover in the
//! Microsoft identity platform"): keys are refreshed in the background once they are an hour
//! old while the known ones stay in use, never used more than 24 hours after the last
//! successful fetch, and refetched on the hot path for an unknown key id no more than once per
//! five minutes. On top of that: one fetch at a time shared by every waiting request; a failed
//! fetch remembered for a while (no fetch per request while the endpoint is down, whatever the
//! key ids presented); and a request waits at most [`JwksPolicy::wait`] for keys, so a batch
//! that cannot be checked is answered 503 well inside Graph's 3-second budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

pub use crate::config::JwksPolicy;
use crate::support::cache::{CacheError, CachePolicy, Fetch, Refresh, RefreshCache};

/// Why a token was refused, or could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token header is malformed or has no kid")]
    Header,
    #[error("token algorithm {0} is not RS256")]
    Algorithm(String),
    #[error("signing key {0:?} is not in the key set")]
    UnknownKey(String),
    /// The key set could not be had in time: the token is neither good nor bad (retry).
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error("token audience (aud) is not one accepted here")]
    Audience,
    #[error("token issuer {0:?} is not a Microsoft issuer for its tenant")]
    Issuer(String),
    #[error("token appid/azp is not the Graph notification publisher")]
    Publisher,
    #[error("token tenant {0} is not allowed")]
    Tenant(String),
}

/// A fetched key set: RSA signing keys by key id.
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

impl KeySet {
    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

struct JwksFetch {
    url: String,
    http: reqwest::Client,
    timeout: Duration,
}

#[async_trait]
impl Fetch<KeySet> for JwksFetch {
    async fn fetch(&self) -> Result<Arc<KeySet>, String> {
        let set: JwkSet = self
            .http
            .get(&self.url)
            .timeout(self.timeout)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.without_url().to_string())?
            .json()
            .await
            .map_err(|e| format!("not a JWKS: {}", e.without_url()))?;
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect();
        if keys.is_empty() {
            return Err("the key set holds no usable key".into());
        }
        Ok(Arc::new(KeySet { keys }))
    }
}

/// The signing key set of one JWKS URL, cached; cheap to clone (clones share the cache).
#[derive(Clone)]
pub struct JwksCache {
    cache: RefreshCache<KeySet>,
    policy: JwksPolicy,
}

impl JwksCache {
    /// A cache over `url`; nothing is fetched until a token needs a key.
    pub fn new(url: impl Into<String>, http: reqwest::Client, policy: JwksPolicy) -> Self {
        let fetch = JwksFetch {
            url: url.into(),
            http,
            timeout: policy.fetch_timeout,
        };
        let cache_policy = CachePolicy {
            fresh_for: policy.refresh_after,
            usable_for: policy.max_age,
            retry_after_failure: policy.retry_after_failure,
            stale_wait: Duration::ZERO,
            fetch_timeout: policy.fetch_timeout + Duration::from_secs(1),
        };
        Self {
            cache: RefreshCache::new("jwks", fetch, cache_policy),
            policy,
        }
    }

    /// The policy the cache follows.
    pub fn policy(&self) -> JwksPolicy {
        self.policy
    }

    /// The key set holding `kid`, for a request that may wait until `deadline` (it arrived at
    /// `deadline - wait`). An unknown id triggers a refetch at most once per
    /// [`JwksPolicy::unknown_kid_interval`], and never during the failure back-off.
    ///
    /// A token is refused for its key id ([`TokenError::UnknownKey`]) only when the set it was
    /// looked up in was fetched after the request arrived: a genuine token signed with a key
    /// published since our last fetch is never dropped, it gets
    /// [`TokenError::KeysUnavailable`] (503, the sender retries) until a refetch is allowed.
    pub async fn key_set(&self, kid: &str, deadline: Instant) -> Result<Arc<KeySet>, TokenError> {
        let arrived = deadline.checked_sub(self.policy.wait).unwrap_or(deadline);
        let keys = self.cache.get(deadline).await.map_err(|e| match e {
            CacheError::Failed(message) => TokenError::KeysUnavailable(message),
            CacheError::TimedOut => TokenError::KeysUnavailable(format!(
                "no key set within {} ms",
                self.policy.wait.as_millis()
            )),
        })?;
        if keys.get(kid).is_some() {
            return Ok(keys);
        }
        let current =
            |cache: &RefreshCache<KeySet>| cache.fetched_at().is_some_and(|t| t >= arrived);
        if current(&self.cache) {
            return Err(TokenError::UnknownKey(kid.to_owned()));
        }
        match self
            .cache
            .refresh(self.policy.unknown_kid_interval, deadline)
            .await
        {
            Refresh::Fetched(keys) if keys.get(kid).is_some() => Ok(keys),
            Refresh::Fetched(_) => Err(TokenError::UnknownKey(kid.to_owned())),
            Refresh::Throttled { last_ok: true } => match self.cache.current() {
                // A concurrent fetch may just have brought the key.
                Some(keys) if keys.get(kid).is_some() => Ok(keys),
                _ if current(&self.cache) => Err(TokenError::UnknownKey(kid.to_owned())),
                _ => Err(TokenError::KeysUnavailable(format!(
                    "key id {kid:?} is not in the key set, which is refetched for unknown key ids at most every {} s",
                    self.policy.unknown_kid_interval.as_secs()
                ))),
            },
            // The set may be out of date and could not be refreshed: neither good nor bad.
            Refresh::Throttled { last_ok: false } => Err(TokenError::KeysUnavailable(
                "the last key set fetch failed".into(),
            )),
            Refresh::Failed(message) => Err(TokenError::KeysUnavailable(message)),
            Refresh::TimedOut => Err(TokenError::KeysUnavailable(format!(
                "no key set within {} ms",
                self.policy.wait.as_millis()
            ))),
        }
    }
}

/// Claims every Microsoft identity platform token carries, checked by [`verify`].
#[derive(Debug, Clone, serde::Deserialize)]
pub struct IssuerClaims {
    /// Issuer: `https://sts.windows.net/{tid}/` (v1) or
    /// `https://login.microsoftonline.com/{tid}/v2.0` (v2).
    pub iss: String,
    /// Tenant the token was issued in (lower-cased by [`verify`]).
    pub tid: String,
}

/// The claims of a token whose header announces RS256 and a key id, read **without checking
/// the signature**: only for refusing, before any key is looked up, a token that could never
/// pass [`verify`]. Nothing read here may be trusted.
pub fn unverified_claims<C: DeserializeOwned>(token: &str) -> Result<C, TokenError> {
    let header = decode_header(token).map_err(|_| TokenError::Header)?;
    if header.alg != Algorithm::RS256 {
        return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
    }
    if header.kid.is_none() {
        return Err(TokenError::Header);
    }
    jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|e| TokenError::Invalid(format!("claims: {e}")))
}

/// Whether an `aud` claim (a string, or an array of them) names one of `audiences`, as
/// [`verify`] requires.
pub fn addressed_to(aud: &serde_json::Value, audiences: &[String]) -> bool {
    let accepted = |value: &serde_json::Value| {
        value
            .as_str()
            .is_some_and(|aud| audiences.iter().any(|a| a == aud))
    };
    match aud {
        serde_json::Value::Array(values) => values.iter().any(accepted),
        value => accepted(value),
    }
}

/// Verifies an RS256 JWT signed by a key of `jwks`: the signature, `exp` and `nbf` (with
/// `leeway`), `aud` among `audiences`, and `iss` the v1 or v2 issuer of the token's own `tid`.
/// Returns the issuer claims and the claims of type `C`.
pub async fn verify<C: DeserializeOwned>(
    jwks: &JwksCache,
    token: &str,
    audiences: &[String],
    leeway: Duration,
    deadline: Instant,
) -> Result<(IssuerClaims, C), TokenError> {
    let header = decode_header(token).map_err(|_| TokenError::Header)?;
    if header.alg != Algorithm::RS256 {
        return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = header.kid.ok_or(TokenError::Header)?;
    let keys = jwks.key_set(&kid, deadline).await?;
    let key = keys
        .get(&kid)
        .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;

    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(audiences);
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    validation.leeway = leeway.as_secs();
    validation.validate_nbf = true;
    let claims = decode::<serde_json::Value>(token, key, &validation)
        .map_err(|e| TokenError::Invalid(e.to_string()))?
        .claims;
    let mut issuer: IssuerClaims = serde_json::from_value(claims.clone())
        .map_err(|_| TokenError::Invalid("missing iss or tid".into()))?;
    issuer.tid = issuer.tid.to_ascii_lowercase();
    let v1 = format!("https://sts.windows.net/{}/", issuer.tid);
    let v2 = format!("https://login.microsoftonline.com/{}/v2.0", issuer.tid);
    if !(issuer.iss.eq_ignore_ascii_case(&v1) || issuer.iss.eq_ignore_ascii_case(&v2)) {
        return Err(TokenError::Issuer(issuer.iss));
    }
    let rest =
        serde_json::from_value(claims).map_err(|e| TokenError::Invalid(format!("claims: {e}")))?;
    Ok((issuer, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audience_is_accepted_as_a_string_or_in_an_array() {
        let accepted = ["api://x".to_owned(), "client".to_owned()];
        assert!(addressed_to(&serde_json::json!("client"), &accepted));
        assert!(addressed_to(
            &serde_json::json!(["other", "api://x"]),
            &accepted
        ));
        assert!(!addressed_to(&serde_json::json!("api://X"), &accepted));
        assert!(!addressed_to(&serde_json::json!(["other"]), &accepted));
        assert!(!addressed_to(&serde_json::json!(7), &accepted));
        assert!(!addressed_to(&serde_json::json!("client"), &[]));
    }

    #[test]
    fn unverified_claims_need_an_rs256_header_with_a_key_id() {
        let claims = serde_json::json!({ "aud": "client" });
        let key = jsonwebtoken::EncodingKey::from_secret(b"k");
        let hs256 = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        assert!(matches!(
            unverified_claims::<serde_json::Value>(&hs256),
            Err(TokenError::Algorithm(_))
        ));
        assert_eq!(
            unverified_claims::<serde_json::Value>("not a token").unwrap_err(),
            TokenError::Header
        );
    }
}
