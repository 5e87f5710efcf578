//! Verification of the `validationTokens` Graph sends with rich notifications: RS256 JWTs
//! signed by the Microsoft identity platform (keys from the shared [`JwksCache`]), addressed to
//! our Graph application, issued to Graph's change-notification publisher.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

pub use super::jwks::{JwksCache, JwksPolicy, TokenError};

/// `appid`/`azp` of Microsoft Graph's change-notification publisher.
pub const GRAPH_NOTIFICATION_PUBLISHER_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// Claims of interest in a Graph validation token, beyond issuer and tenant.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
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

    /// The key set this verifier checks signatures against.
    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// Checks signature, expiry, audience, issuer and publisher, and that the token's tenant is
    /// allowed. Returns the tenant id (`tid`) the token vouches for. Waits for signing keys
    /// until `deadline` at most ([`TokenError::KeysUnavailable`] after that).
    pub async fn verify(
        &self,
        token: &str,
        tenant_allowed: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Result<String, TokenError> {
        let audiences = [self.audience.clone()];
        let (issuer, claims): (_, Claims) =
            super::jwks::verify(&self.jwks, token, &audiences, self.leeway, deadline).await?;
        let publisher = claims.appid.or(claims.azp);
        if publisher.as_deref() != Some(GRAPH_NOTIFICATION_PUBLISHER_APP_ID) {
            return Err(TokenError::Publisher);
        }
        if !tenant_allowed(&issuer.tid) {
            return Err(TokenError::Tenant(issuer.tid));
        }
        Ok(issuer.tid)
    }
}
