//! Verification of the `validationTokens` Graph sends with rich notifications: RS256 JWTs
//! signed by the Microsoft identity platform, whose keys come from a cached JWKS.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// `appid`/`azp` of Microsoft Graph's change-notification publisher.
pub const GRAPH_NOTIFICATION_PUBLISHER_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// How long fetched keys are trusted before a refetch.
const JWKS_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a validation token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token header is malformed or has no kid")]
    Header,
    #[error("token algorithm {0} is not RS256")]
    Algorithm(String),
    #[error("signing key {0:?} is not in the JWKS")]
    UnknownKey(String),
    #[error("JWKS could not be fetched: {0}")]
    Jwks(String),
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error("token issuer {0:?} is not a Microsoft issuer for its tenant")]
    Issuer(String),
    #[error("token appid/azp is not the Graph notification publisher")]
    Publisher,
    #[error("token tenant {0} is not allowed")]
    Tenant(String),
}

/// Claims of interest in a Graph validation token.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    tid: String,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
}

struct CachedKeys {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

/// A JWKS fetched over HTTPS and cached; refreshed after its TTL or on an unknown `kid`.
pub struct JwksCache {
    url: String,
    http: reqwest::Client,
    cache: RwLock<CachedKeys>,
    refresh: Mutex<Option<Instant>>,
    min_refresh: Duration,
}

impl JwksCache {
    /// A cache over `url`; nothing is fetched until a token needs a key. An unknown `kid`
    /// triggers a refetch at most once per `min_refresh`, so forged ids cannot flood the IdP.
    pub fn new(url: impl Into<String>, http: reqwest::Client, min_refresh: Duration) -> Self {
        Self {
            url: url.into(),
            http,
            cache: RwLock::new(CachedKeys {
                keys: HashMap::new(),
                fetched_at: None,
            }),
            refresh: Mutex::new(None),
            min_refresh,
        }
    }

    async fn cached(&self, kid: &str) -> Option<DecodingKey> {
        let cache = self.cache.read().await;
        let fresh = cache.fetched_at.is_some_and(|t| t.elapsed() < JWKS_TTL);
        if fresh {
            cache.keys.get(kid).cloned()
        } else {
            None
        }
    }

    /// The key for `kid`, fetching the JWKS if it is stale or does not know `kid`.
    pub async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        if let Some(key) = self.cached(kid).await {
            return Ok(key);
        }
        let mut last_attempt = self.refresh.lock().await;
        // Another task may have refreshed while we waited.
        if let Some(key) = self.cached(kid).await {
            return Ok(key);
        }
        let stale = self
            .cache
            .read()
            .await
            .fetched_at
            .is_none_or(|t| t.elapsed() >= JWKS_TTL);
        let throttled = last_attempt.is_some_and(|t| t.elapsed() < self.min_refresh);
        if stale || !throttled {
            *last_attempt = Some(Instant::now());
            let keys = self.fetch().await?;
            let mut cache = self.cache.write().await;
            cache.keys = keys;
            cache.fetched_at = Some(Instant::now());
        }
        self.cache
            .read()
            .await
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, TokenError> {
        let set: JwkSet = self
            .http
            .get(&self.url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| TokenError::Jwks(e.without_url().to_string()))?
            .json()
            .await
            .map_err(|e| TokenError::Jwks(e.without_url().to_string()))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let (Some(kid), Ok(key)) = (&jwk.common.key_id, DecodingKey::from_jwk(jwk)) {
                keys.insert(kid.clone(), key);
            }
        }
        Ok(keys)
    }
}

/// Verifies validation tokens for one application.
pub struct TokenVerifier {
    jwks: JwksCache,
    audience: String,
    leeway: Duration,
}

impl TokenVerifier {
    /// Tokens must be addressed to `audience` (our Graph application id).
    pub fn new(jwks: JwksCache, audience: impl Into<String>, leeway: Duration) -> Self {
        Self {
            jwks,
            audience: audience.into(),
            leeway,
        }
    }

    /// Checks signature, expiry, audience, issuer and publisher, and that the token's tenant is
    /// allowed. Returns the tenant id (`tid`) the token vouches for.
    pub async fn verify(
        &self,
        token: &str,
        tenant_allowed: impl Fn(&str) -> bool,
    ) -> Result<String, TokenError> {
        let header = decode_header(token).map_err(|_| TokenError::Header)?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(TokenError::Header)?;
        let key = self.jwks.key(&kid).await?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?
            .claims;

        let tid = claims.tid.to_ascii_lowercase();
        let v1 = format!("https://sts.windows.net/{tid}/");
        let v2 = format!("https://login.microsoftonline.com/{tid}/v2.0");
        if !(claims.iss.eq_ignore_ascii_case(&v1) || claims.iss.eq_ignore_ascii_case(&v2)) {
            return Err(TokenError::Issuer(claims.iss));
        }
        let publisher = claims.appid.or(claims.azp);
        if publisher.as_deref() != Some(GRAPH_NOTIFICATION_PUBLISHER_APP_ID) {
            return Err(TokenError::Publisher);
        }
        if !tenant_allowed(&tid) {
            return Err(TokenError::Tenant(tid));
        }
        Ok(tid)
    }
}
