//! Who may post to `/sentinel/alerts`: any one configured method is enough.
//!
//! - Entra ID bearer token (`Authorization: Bearer`), what a Logic App playbook sends with
//!   Managed Identity authentication; on when `RR_SENTINEL_AUDIENCE` is set.
//! - Standard Webhooks HMAC signature, for SOARs that sign; on when `webhook_hmac_keys` holds a
//!   key.
//! - Static API key (`x-api-key`), compared in constant time against every configured key
//!   (rotation); off unless `sentinel_api_keys` holds a key.
//!
//! A refusal names the methods that are accepted and why the presented credentials failed,
//! never a credential.

use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use http::HeaderMap;
use serde::Serialize;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::entra::{EntraError, EntraVerifier};
use super::jwks::TokenError;
use super::signature;
use crate::config::Config;
use crate::event::{Origin, OriginKind};
use crate::ingress::secrets::IngressSecrets;
use crate::support::secret::SecretString;

/// Header carrying a static API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Longest bearer token looked at (Entra access tokens are a few kilobytes).
const MAX_BEARER_LEN: usize = 16 * 1024;
/// Longest a delivery is remembered against replay: beyond the longest-lived Entra access
/// tokens (managed identity tokens are used for up to 24 hours, tokens of clients capable of
/// continuous access evaluation live up to 28 hours).
pub const MAX_REPLAY_MEMORY: Duration = Duration::from_secs(30 * 3600);
/// How long an API-key delivery is remembered: an API key does not expire, so the same
/// request could be replayed at any time; a day covers a Logic Apps retry series many times.
pub const API_KEY_REPLAY_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// An authentication method of the Sentinel endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    EntraId,
    StandardWebhooks,
    ApiKey,
}

impl Method {
    /// How a sender uses the method (for 401 answers).
    pub fn describe(self) -> &'static str {
        match self {
            Method::EntraId => {
                "an Entra ID access token (Authorization: Bearer) for this API, of a caller on the allow-list (e.g. the playbook's managed identity)"
            }
            Method::StandardWebhooks => {
                "a Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature)"
            }
            Method::ApiKey => "an API key in the x-api-key header",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Method::EntraId => "Entra ID bearer tokens",
            Method::StandardWebhooks => "Standard Webhooks signatures",
            Method::ApiKey => "API keys",
        }
    }
}

/// An authenticated delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub method: Method,
    /// Identifies the delivery for replay and duplicate detection, prefixed by its method so
    /// that one method's ids can never pre-empt another's: `swh:<webhook-id>` for a signed
    /// delivery; otherwise `entra:`/`apikey:`, the caller and a hash of the body (a playbook's
    /// retry sends the same body again).
    pub delivery_id: String,
    /// How long the delivery must be remembered to refuse its replay: as long as its
    /// credential would be accepted again (the signature's timestamp window; the bearer
    /// token's remaining lifetime), within [`MAX_REPLAY_MEMORY`].
    pub remember_for: Duration,
    /// Who sent it, for logs (ids only, never a credential).
    pub caller: String,
    /// Who vouches for its signals, and the tenants it may name: an Entra caller its token's
    /// tenant and those listed for it; a key the tenants listed with it (or, with one allowed
    /// tenant, that one).
    pub origin: Origin,
}

/// Why a delivery is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// 401: no presented credential is good.
    Unauthenticated {
        accepted: Vec<Method>,
        reasons: Vec<String>,
    },
    /// 503: a presented token could not be checked (signing keys unavailable); retry.
    Unavailable(String),
}

impl AuthError {
    /// The message of a 401: the reasons, then what is accepted.
    pub fn message(&self) -> String {
        match self {
            AuthError::Unauthenticated { accepted, reasons } => {
                let accepted: Vec<&str> = accepted.iter().map(|m| m.describe()).collect();
                let accepted = if accepted.is_empty() {
                    "no authentication method is configured".to_owned()
                } else {
                    format!("send {}", accepted.join(", or "))
                };
                format!("not authenticated: {}; {accepted}", reasons.join("; "))
            }
            AuthError::Unavailable(reason) => {
                format!("the bearer token could not be checked now ({reason}); retry")
            }
        }
    }
}

/// The context the Sentinel endpoint authenticates against.
pub struct SentinelAuth<'a> {
    pub config: &'a Config,
    pub secrets: &'a IngressSecrets,
    /// Present when `RR_SENTINEL_AUDIENCE` is configured.
    pub entra: Option<&'a EntraVerifier>,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn body_hash(body: &[u8]) -> String {
    digest(&SHA256, body).as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time comparison of a presented API key against every configured key; returns the
/// position of the match. Both sides are hashed first so neither content nor length leaks.
fn api_key_position(presented: &str, keys: &[SecretString]) -> Option<usize> {
    let presented = digest(&SHA256, presented.as_bytes());
    let mut found = None;
    for (position, key) in keys.iter().enumerate() {
        let candidate = digest(&SHA256, key.expose().as_bytes());
        let equal = bool::from(presented.as_ref().ct_eq(candidate.as_ref()));
        if equal && found.is_none() {
            found = Some(position);
        }
    }
    found
}

impl SentinelAuth<'_> {
    /// The allowed tenants a key may name: those listed with it; a key that lists none may
    /// name the one allowed tenant, and no tenant when several are allowed (each key must then
    /// say which).
    fn key_scope(&self, listed: Option<&Option<Vec<String>>>) -> Vec<String> {
        match listed.and_then(Option::as_ref) {
            Some(tenants) => tenants
                .iter()
                .filter(|t| self.config.tenant_allowed(t))
                .cloned()
                .collect(),
            None => match self.config.allowed_tenants.as_slice() {
                [only] => vec![only.clone()],
                _ => Vec::new(),
            },
        }
    }

    /// The methods configured.
    pub fn accepted(&self) -> Vec<Method> {
        let mut methods = Vec::new();
        if self.entra.is_some() {
            methods.push(Method::EntraId);
        }
        if !self.secrets.webhook_hmac_keys.is_empty() {
            methods.push(Method::StandardWebhooks);
        }
        if !self.secrets.sentinel_api_keys.is_empty() {
            methods.push(Method::ApiKey);
        }
        methods
    }

    /// Authenticates a delivery with whichever credentials it presents; the first good one
    /// wins. Signing keys are awaited until `deadline` at most.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: OffsetDateTime,
        tolerance: Duration,
        deadline: Instant,
    ) -> Result<Authenticated, AuthError> {
        let accepted = self.accepted();
        let mut reasons = Vec::new();
        let mut unavailable = None;

        let bearer = header(headers, "authorization").and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let signed = ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .any(|name| headers.contains_key(*name));
        let api_key = header(headers, API_KEY_HEADER);

        if let Some(token) = bearer {
            match (self.entra, token.len() > MAX_BEARER_LEN) {
                (None, _) => {
                    reasons.push(format!("{} are not accepted here", Method::EntraId.name()))
                }
                (Some(_), true) => reasons.push("bearer token is too long".into()),
                (Some(verifier), false) => {
                    let tenant_allowed = |tid: &str| self.config.tenant_allowed(tid);
                    match verifier
                        .verify(
                            token,
                            tenant_allowed,
                            &self.secrets.sentinel_callers,
                            deadline,
                        )
                        .await
                    {
                        Ok(caller) => {
                            let who = caller
                                .object_id
                                .clone()
                                .or(caller.app_id.clone())
                                .unwrap_or_default();
                            let left = caller.valid_until.saturating_sub(now.unix_timestamp());
                            let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
                            let tenants = self
                                .secrets
                                .sentinel_callers
                                .tenants_of(&caller)
                                .into_iter()
                                .filter(|t| self.config.tenant_allowed(t))
                                .collect();
                            return Ok(Authenticated {
                                method: Method::EntraId,
                                delivery_id: format!("entra:{who}:{}", body_hash(body)),
                                remember_for: left.min(MAX_REPLAY_MEMORY).max(tolerance * 2),
                                caller: caller.to_string(),
                                origin: Origin {
                                    via: OriginKind::EntraId,
                                    by: who,
                                    tenants,
                                },
                            });
                        }
                        Err(EntraError::Token(TokenError::KeysUnavailable(reason))) => {
                            unavailable = Some(reason);
                        }
                        Err(e) => reasons.push(e.to_string()),
                    }
                }
            }
        }
        if signed {
            if accepted.contains(&Method::StandardWebhooks) {
                match signature::verify(
                    headers,
                    body,
                    &self.secrets.webhook_hmac_keys,
                    now,
                    tolerance,
                ) {
                    Ok(webhook) => {
                        let key = format!("webhook_hmac_keys[{}]", webhook.key);
                        return Ok(Authenticated {
                            method: Method::StandardWebhooks,
                            caller: format!("{key} (webhook-id {})", webhook.id),
                            delivery_id: format!("swh:{}", webhook.id),
                            // The whole window in which its timestamp would still be accepted.
                            remember_for: tolerance * 2,
                            origin: Origin {
                                via: OriginKind::StandardWebhooks,
                                tenants: self
                                    .key_scope(self.secrets.webhook_key_tenants.get(webhook.key)),
                                by: key,
                            },
                        });
                    }
                    Err(e) => reasons.push(e.to_string()),
                }
            } else {
                reasons.push(format!(
                    "{} are not accepted here",
                    Method::StandardWebhooks.name()
                ));
            }
        }
        if let Some(key) = api_key {
            if accepted.contains(&Method::ApiKey) {
                match api_key_position(key, &self.secrets.sentinel_api_keys) {
                    Some(position) => {
                        let key = format!("sentinel_api_keys[{position}]");
                        return Ok(Authenticated {
                            method: Method::ApiKey,
                            delivery_id: format!("apikey:{position}:{}", body_hash(body)),
                            remember_for: API_KEY_REPLAY_MEMORY.max(tolerance * 2),
                            caller: key.clone(),
                            origin: Origin {
                                via: OriginKind::ApiKey,
                                tenants: self
                                    .key_scope(self.secrets.sentinel_api_key_tenants.get(position)),
                                by: key,
                            },
                        });
                    }
                    None => reasons.push(format!(
                        "{API_KEY_HEADER} does not match any configured key"
                    )),
                }
            } else {
                reasons.push(format!("{} are not accepted here", Method::ApiKey.name()));
            }
        }
        if let Some(reason) = unavailable {
            return Err(AuthError::Unavailable(reason));
        }
        if bearer.is_none() && !signed && api_key.is_none() {
            reasons.push("no credential presented".into());
        }
        Err(AuthError::Unauthenticated { accepted, reasons })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_match_any_configured_key_by_position() {
        let keys = [
            SecretString::new("k".repeat(40)),
            SecretString::new("z".repeat(40)),
        ];
        assert_eq!(api_key_position(&"z".repeat(40), &keys), Some(1));
        assert_eq!(api_key_position(&"k".repeat(40), &keys), Some(0));
        assert_eq!(api_key_position(&"k".repeat(39), &keys), None);
        assert_eq!(api_key_position("", &keys), None);
        assert_eq!(api_key_position("anything", &[]), None);
    }

    #[test]
    fn the_refusal_names_the_accepted_methods() {
        let err = AuthError::Unauthenticated {
            accepted: vec![Method::EntraId, Method::StandardWebhooks],
            reasons: vec!["no credential presented".into()],
        };
        let message = err.message();
        assert!(
            message.starts_with(
                "not authenticated: no credential presented; send an Entra ID access token"
            ),
            "{message}"
        );
        assert!(
            message.contains("or a Standard Webhooks signature"),
            "{message}"
        );
        assert!(!message.contains("API key"), "{message}");
    }
}
