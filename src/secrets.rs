//! Secrets, in two parts split by who needs them:
//!
//! - [`IngressSecrets`], read by the internet-facing webhook: Graph `clientState` values,
//!   Standard Webhooks HMAC keys, notification decryption keys;
//! - [`GraphSecrets`], read only by the worker, the renewer and CLI commands that call Graph:
//!   the application's client id and its client secret or certificate.
//!
//! In AWS each part is its own Secrets Manager secret (`RR_INGRESS_SECRET_ID`,
//! `RR_GRAPH_SECRET_ID`); a local JSON file may hold both parts in one document. Each part
//! refuses unknown fields (typos) but ignores the other part's fields. Values never appear in
//! `Debug` output, errors or logs.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Development secrets embedded in the binary, used only by the local server and replay when no
/// secrets file or Secrets Manager secret is configured. Never accepted inside Lambda.
pub const EMBEDDED_DEV_SECRETS: &str = include_str!("../config/local-secrets.json");

/// A string that must not be logged: `Debug` prints `[redacted]`, and the memory is zeroed on drop.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; call only where the value is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Errors while loading or parsing secrets. Messages name the field, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secrets document is not valid: {0}")]
    Invalid(String),
    #[error("decryption key {id:?} is not a usable PKCS#8 RSA private key")]
    BadDecryptionKey { id: String },
    #[error("secret store unavailable: {0}")]
    Unavailable(String),
    #[error(
        "no {part} configured: set {variable} (or RR_SECRETS_FILE); the embedded development secrets are refused inside Lambda"
    )]
    NotConfigured {
        part: &'static str,
        variable: &'static str,
    },
}

/// One part of the secrets document, parsed from JSON.
pub trait SecretDocument: Sized + Send + Sync + 'static {
    /// What this part is called in messages ("ingress secrets", "Graph credential").
    const PART: &'static str;
    /// Parses the part from a document that may also hold the other part's fields.
    fn from_json(json: &str) -> Result<Self, SecretsError>;

    /// The development document compiled into the binary.
    fn embedded_dev() -> Result<Self, SecretsError> {
        Self::from_json(EMBEDDED_DEV_SECRETS)
    }
}

/// Fields of the ingress part.
pub const INGRESS_FIELDS: &[&str] = &[
    "client_states",
    "webhook_hmac_keys",
    "decryption_keys",
    "sentinel_callers",
    "sentinel_api_keys",
];
/// Fields of the Graph part.
pub const GRAPH_FIELDS: &[&str] = &[
    "tenant_id",
    "client_id",
    "client_secret",
    "certificate_private_key",
    "certificate",
    "certificate_thumbprint_sha256",
];

/// The JSON object's fields that belong to `own`; a field of neither part is refused by name.
fn own_fields(
    json: &str,
    own: &[&str],
    other: &[&str],
) -> Result<Map<String, Value>, SecretsError> {
    // Syntax errors name a position, never the text around it.
    let value: Value = serde_json::from_str(json).map_err(|e| {
        SecretsError::Invalid(format!(
            "not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(map) = value else {
        return Err(SecretsError::Invalid("not a JSON object".into()));
    };
    if let Some(unknown) = map
        .keys()
        .find(|k| !own.contains(&k.as_str()) && !other.contains(&k.as_str()))
    {
        let mut known: Vec<&str> = own.iter().chain(other).copied().collect();
        known.sort_unstable();
        return Err(SecretsError::Invalid(format!(
            "unknown field `{unknown}`, expected one of {}",
            known.join(", ")
        )));
    }
    Ok(map
        .into_iter()
        .filter(|(k, _)| own.contains(&k.as_str()))
        .collect())
}

/// Takes field `name` (absent or null: `None`). A wrong type is named with what was expected;
/// serde's message is not used, since it quotes the value it found.
fn take<T: DeserializeOwned>(
    fields: &mut Map<String, Value>,
    name: &str,
    expected: &str,
) -> Result<Option<T>, SecretsError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|_| SecretsError::Invalid(format!("field `{name}` must be {expected}"))),
    }
}

/// The ingress part: what the webhook needs to authenticate and open deliveries.
pub struct IngressSecrets {
    /// Accepted `clientState` values (several during rotation); the first is used for new
    /// subscriptions.
    pub client_states: Vec<SecretString>,
    /// Standard Webhooks keys (`whsec_...`) accepted on the Sentinel endpoint, decoded when
    /// the secrets load.
    pub webhook_hmac_keys: Vec<crate::ingress::signature::WebhookKey>,
    /// Callers whose Entra ID tokens are accepted on the Sentinel endpoint (managed identities
    /// by object id, applications by application id).
    pub sentinel_callers: crate::ingress::entra::CallerAllowList,
    /// Static API keys accepted in `x-api-key` on the Sentinel endpoint (several for
    /// rotation); none by default, which turns the method off.
    pub sentinel_api_keys: Vec<SecretString>,
    decryption_keys: HashMap<String, Arc<OaepPrivateDecryptingKey>>,
}

impl fmt::Debug for IngressSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressSecrets")
            .field("client_states", &self.client_states.len())
            .field("webhook_hmac_keys", &self.webhook_hmac_keys.len())
            .field("sentinel_callers", &self.sentinel_callers)
            .field("sentinel_api_keys", &self.sentinel_api_keys.len())
            .field("decryption_keys", &self.decryption_keys.keys())
            .finish()
    }
}

impl SecretDocument for IngressSecrets {
    const PART: &'static str = "ingress secrets";

    fn from_json(json: &str) -> Result<Self, SecretsError> {
        let mut fields = own_fields(json, INGRESS_FIELDS, GRAPH_FIELDS)?;
        let client_states = take(&mut fields, "client_states", "a list of strings")?;
        let hmac_keys: Vec<SecretString> =
            take(&mut fields, "webhook_hmac_keys", "a list of strings")?.unwrap_or_default();
        let webhook_hmac_keys = hmac_keys
            .iter()
            .enumerate()
            .map(|(position, key)| {
                crate::ingress::signature::WebhookKey::parse(key.expose()).map_err(|e| {
                    SecretsError::Invalid(format!("webhook_hmac_keys[{position}] {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sentinel_callers: crate::ingress::entra::CallerAllowList = take(
            &mut fields,
            "sentinel_callers",
            "an object with the lists object_ids and app_ids",
        )?
        .unwrap_or_default();
        let sentinel_callers = sentinel_callers
            .normalised()
            .map_err(SecretsError::Invalid)?;
        let sentinel_api_keys: Vec<SecretString> =
            take(&mut fields, "sentinel_api_keys", "a list of strings")?.unwrap_or_default();
        let min = crate::ingress::sentinel_auth::MIN_API_KEY_LEN;
        if let Some(position) = sentinel_api_keys
            .iter()
            .position(|k| k.expose().trim().len() < min)
        {
            return Err(SecretsError::Invalid(format!(
                "sentinel_api_keys[{position}] is shorter than {min} characters"
            )));
        }
        let pems: HashMap<String, SecretString> = take(
            &mut fields,
            "decryption_keys",
            "an object of encryptionCertificateId to PEM private key",
        )?
        .unwrap_or_default();
        let mut decryption_keys = HashMap::new();
        for (id, pem) in pems {
            let key = parse_decryption_key(pem.expose())
                .ok_or_else(|| SecretsError::BadDecryptionKey { id: id.clone() })?;
            decryption_keys.insert(id, Arc::new(key));
        }
        Ok(Self {
            client_states: client_states.unwrap_or_default(),
            webhook_hmac_keys,
            sentinel_callers,
            sentinel_api_keys,
            decryption_keys,
        })
    }
}

impl IngressSecrets {
    /// The RSA-OAEP key for a subscription's `encryptionCertificateId`.
    pub fn decryption_key(&self, certificate_id: &str) -> Option<&OaepPrivateDecryptingKey> {
        self.decryption_keys.get(certificate_id).map(Arc::as_ref)
    }

    /// The same key, shared, for decryption on another thread.
    pub fn shared_decryption_key(
        &self,
        certificate_id: &str,
    ) -> Option<Arc<OaepPrivateDecryptingKey>> {
        self.decryption_keys.get(certificate_id).cloned()
    }
}

/// The Graph part: the application's identity and credential. Only the worker, the renewer and
/// CLI commands that call Graph read it.
pub struct GraphSecrets {
    /// Home tenant of the Graph application.
    pub tenant_id: Option<String>,
    /// Graph application (client) id.
    pub client_id: Option<String>,
    /// Graph application client secret.
    pub client_secret: Option<SecretString>,
    /// PEM private key of the application's certificate (preferred over the secret).
    pub certificate_private_key: Option<SecretString>,
    /// SHA-256 thumbprint of that certificate's DER encoding (`x5t#S256` of the assertion),
    /// from `certificate` (the PEM certificate) or `certificate_thumbprint_sha256` (hex).
    pub certificate_thumbprint_sha256: Option<Vec<u8>>,
}

impl fmt::Debug for GraphSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphSecrets")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("certificate_private_key", &self.certificate_private_key)
            .field(
                "certificate_thumbprint_sha256",
                &self.certificate_thumbprint_sha256.as_ref().map(|t| t.len()),
            )
            .finish()
    }
}

impl SecretDocument for GraphSecrets {
    const PART: &'static str = "Graph credential";

    fn from_json(json: &str) -> Result<Self, SecretsError> {
        let mut fields = own_fields(json, GRAPH_FIELDS, INGRESS_FIELDS)?;
        let tenant_id = take(&mut fields, "tenant_id", "a string")?;
        let client_id = take(&mut fields, "client_id", "a string")?;
        let client_secret = take(&mut fields, "client_secret", "a string")?;
        let certificate_private_key: Option<SecretString> =
            take(&mut fields, "certificate_private_key", "a PEM string")?;
        let certificate: Option<String> = take(&mut fields, "certificate", "a PEM string")?;
        let hex: Option<String> =
            take(&mut fields, "certificate_thumbprint_sha256", "a hex string")?;
        let from_certificate = match certificate {
            Some(pem) => Some(certificate_sha256(&pem).ok_or_else(|| {
                SecretsError::Invalid("`certificate` is not a PEM X.509 certificate".into())
            })?),
            None => None,
        };
        let from_hex = match hex {
            Some(hex) => Some(hex_decode(&hex).filter(|t| t.len() == 32).ok_or_else(|| {
                SecretsError::Invalid("`certificate_thumbprint_sha256` is not 64 hex digits".into())
            })?),
            None => None,
        };
        let certificate_thumbprint_sha256 = from_certificate.or(from_hex);
        if certificate_private_key.is_some() && certificate_thumbprint_sha256.is_none() {
            return Err(SecretsError::Invalid(
                "`certificate_private_key` needs `certificate` (the PEM certificate) or \
                 `certificate_thumbprint_sha256`: client assertions carry the certificate's \
                 SHA-256 thumbprint (x5t#S256)"
                    .into(),
            ));
        }
        Ok(Self {
            tenant_id,
            client_id,
            client_secret,
            certificate_private_key,
            certificate_thumbprint_sha256,
        })
    }
}

/// SHA-256 over the DER encoding of a PEM certificate.
fn certificate_sha256(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref())
            .as_ref()
            .to_vec(),
    )
}

fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

impl GraphSecrets {
    /// The Graph credential: the certificate if one is configured, else the client secret.
    pub fn credential(&self) -> Option<crate::graph::ClientCredential> {
        use crate::graph::ClientCredential;
        match (
            &self.certificate_private_key,
            &self.certificate_thumbprint_sha256,
        ) {
            (Some(key), Some(thumbprint)) => Some(ClientCredential::Certificate {
                private_key_pem: key.clone(),
                thumbprint_sha256: thumbprint.clone(),
            }),
            _ => self.client_secret.clone().map(ClientCredential::Secret),
        }
    }
}

fn parse_decryption_key(pem: &str) -> Option<OaepPrivateDecryptingKey> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    let key = PrivateDecryptingKey::from_pkcs8(der.secret_pkcs8_der()).ok()?;
    OaepPrivateDecryptingKey::new(key).ok()
}

/// Port: where one part of the secrets comes from. Implementations cache; `load` is called per
/// request.
#[async_trait]
pub trait SecretStore<T>: Send + Sync {
    /// The current secrets.
    async fn load(&self) -> Result<Arc<T>, SecretsError>;
}

/// Secrets held in memory: parsed once from a local file or the embedded development document.
pub struct StaticSecretStore<T> {
    secrets: Arc<T>,
}

impl<T: SecretDocument> StaticSecretStore<T> {
    /// Wraps already-parsed secrets.
    pub fn new(secrets: T) -> Self {
        Self {
            secrets: Arc::new(secrets),
        }
    }

    /// Reads and parses this part from a local JSON secrets file.
    pub fn from_file(path: &Path) -> Result<Self, SecretsError> {
        let json = std::fs::read_to_string(path).map_err(|source| SecretsError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(T::from_json(&json)?))
    }

    /// This part of the development document compiled into the binary.
    pub fn embedded_dev() -> Result<Self, SecretsError> {
        Ok(Self::new(T::embedded_dev()?))
    }
}

#[async_trait]
impl<T: SecretDocument> SecretStore<T> for StaticSecretStore<T> {
    async fn load(&self) -> Result<Arc<T>, SecretsError> {
        Ok(self.secrets.clone())
    }
}

/// How long the last good secret value is still served, after its TTL ran out, while Secrets
/// Manager cannot be read (hard limit: TTL + grace after the last successful read).
pub const DEFAULT_SECRETS_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// One part of the secrets from its own AWS Secrets Manager secret (JSON), cached in-process.
/// Only `secretsmanager:GetSecretValue` is called: once per TTL, one call at a time whatever
/// the number of concurrent requests. If a refresh fails, the last good value is served for
/// the grace period and the AWS error code and message are logged. The parsed form is kept per
/// `VersionId`, so an unchanged secret is not parsed again.
pub struct SecretsManagerStore<T> {
    cache: crate::cache::RefreshCache<T>,
    secret_id: String,
}

/// How long a caller holding a usable stale value waits for the refresh before it is served
/// the stale value.
const SECRETS_STALE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// After a failed read, Secrets Manager is not asked again for this long (or the TTL, if
/// shorter).
const SECRETS_RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(10);
/// One read of the secret; longer counts as a failure.
const SECRETS_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a request without any usable value waits for the read.
const SECRETS_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

struct SecretsManagerFetch<T> {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    /// The last parsed value and its `VersionId`.
    parsed: std::sync::Mutex<Option<(String, Arc<T>)>>,
}

#[async_trait]
impl<T: SecretDocument> crate::cache::Fetch<T> for SecretsManagerFetch<T> {
    async fn fetch(&self) -> Result<Arc<T>, String> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| format!("GetSecretValue {}: {}", self.secret_id, sdk_error(&e)))?;
        let version = output.version_id().unwrap_or_default().to_owned();
        {
            let parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((known, secrets)) = parsed.as_ref()
                && *known == version
                && !version.is_empty()
            {
                return Ok(secrets.clone());
            }
        }
        let json = output.secret_string().ok_or_else(|| {
            format!(
                "secret {} has no SecretString (binary secrets are not supported)",
                self.secret_id
            )
        })?;
        let secrets = Arc::new(
            T::from_json(json)
                .map_err(|e| format!("secret {} ({}): {e}", self.secret_id, T::PART))?,
        );
        *self.parsed.lock().unwrap_or_else(|e| e.into_inner()) = Some((version, secrets.clone()));
        Ok(secrets)
    }
}

impl<T: SecretDocument> SecretsManagerStore<T> {
    /// A store over `secret_id`, read again after `ttl`; the last good value is served for
    /// [`DEFAULT_SECRETS_GRACE`] beyond the TTL when Secrets Manager cannot be read.
    pub fn new(
        client: aws_sdk_secretsmanager::Client,
        secret_id: impl Into<String>,
        ttl: std::time::Duration,
    ) -> Self {
        Self::with_grace(client, secret_id, ttl, DEFAULT_SECRETS_GRACE)
    }

    /// As [`SecretsManagerStore::new`] with another grace period.
    pub fn with_grace(
        client: aws_sdk_secretsmanager::Client,
        secret_id: impl Into<String>,
        ttl: std::time::Duration,
        grace: std::time::Duration,
    ) -> Self {
        let secret_id = secret_id.into();
        let fetch = SecretsManagerFetch {
            client,
            secret_id: secret_id.clone(),
            parsed: std::sync::Mutex::new(None),
        };
        let policy = crate::cache::CachePolicy {
            fresh_for: ttl,
            usable_for: ttl + grace,
            retry_after_failure: SECRETS_RETRY_AFTER_FAILURE.min(ttl),
            stale_wait: SECRETS_STALE_WAIT,
            fetch_timeout: SECRETS_FETCH_TIMEOUT,
        };
        Self {
            cache: crate::cache::RefreshCache::new(T::PART, fetch, policy),
            secret_id,
        }
    }
}

#[async_trait]
impl<T: SecretDocument> SecretStore<T> for SecretsManagerStore<T> {
    async fn load(&self) -> Result<Arc<T>, SecretsError> {
        let deadline = tokio::time::Instant::now() + SECRETS_LOAD_WAIT;
        self.cache.get(deadline).await.map_err(|e| match e {
            crate::cache::CacheError::Failed(message) => SecretsError::Unavailable(message),
            crate::cache::CacheError::TimedOut => SecretsError::Unavailable(format!(
                "GetSecretValue {} did not answer within {} s",
                self.secret_id,
                SECRETS_LOAD_WAIT.as_secs()
            )),
        })
    }
}

/// The Graph application id in a local secrets document (file or embedded development
/// document), for configurations that do not set `RR_GRAPH_CLIENT_ID`.
pub fn local_graph_client_id(json: &str) -> Option<String> {
    GraphSecrets::from_json(json).ok()?.client_id
}

/// An AWS SDK error as `Code: message` for service errors (e.g. `AccessDeniedException: User
/// ... is not authorized to perform: secretsmanager:GetSecretValue ...`); an error answer
/// whose code cannot be read is given with its HTTP status; anything else as its error chain
/// (connection refused, timeout). AWS error messages never carry secret values.
pub fn sdk_error<E>(
    error: &aws_sdk_secretsmanager::error::SdkError<
        E,
        aws_sdk_secretsmanager::config::http::HttpResponse,
    >,
) -> String
where
    E: std::error::Error + aws_sdk_secretsmanager::error::ProvideErrorMetadata + 'static,
{
    if let Some(service) = error.as_service_error()
        && let Some(code) = service.code()
    {
        return format!("{code}: {}", service.message().unwrap_or("(no message)"));
    }
    match error.raw_response() {
        Some(raw) => format!(
            "HTTP {} with an unreadable error body: {}",
            raw.status().as_u16(),
            aws_error(error)
        ),
        None => aws_error(error),
    }
}

/// A readable AWS SDK error (service code and message), without request contents.
pub fn aws_error<E: std::error::Error>(error: &E) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"client_id":"app-1","client_secret":"s3cr3t-value",
        "client_states":["state-value-1"],"webhook_hmac_keys":["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}"#;

    #[test]
    fn debug_output_redacts_values() {
        let graph = GraphSecrets::from_json(FULL).unwrap();
        let ingress = IngressSecrets::from_json(FULL).unwrap();
        let printed = format!("{graph:?} {ingress:?}");
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
        assert!(!printed.contains("state-value-1"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn each_part_reads_its_own_fields_of_a_combined_document() {
        let graph = GraphSecrets::from_json(FULL).unwrap();
        assert_eq!(graph.client_id.as_deref(), Some("app-1"));
        assert!(graph.credential().is_some());
        let ingress = IngressSecrets::from_json(FULL).unwrap();
        assert_eq!(ingress.client_states[0].expose(), "state-value-1");
        // A part alone is enough for its reader.
        let only_ingress = IngressSecrets::from_json(r#"{"client_states":["s"]}"#).unwrap();
        assert_eq!(only_ingress.client_states.len(), 1);
        let only_graph = GraphSecrets::from_json(r#"{"client_id":"a","client_secret":"b"}"#);
        assert!(only_graph.unwrap().credential().is_some());
        // The ingress part of a Graph-only document is empty, and the other way round.
        let empty = IngressSecrets::from_json(r#"{"client_id":"a","client_secret":"b"}"#);
        assert!(empty.unwrap().client_states.is_empty());
        let none = GraphSecrets::from_json(r#"{"client_states":["s"]}"#).unwrap();
        assert!(none.credential().is_none());
    }

    #[test]
    fn bad_decryption_key_is_named_without_its_value() {
        let err =
            IngressSecrets::from_json(r#"{"decryption_keys":{"cert-1":"not a pem"}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "decryption key \"cert-1\" is not a usable PKCS#8 RSA private key"
        );
    }

    #[test]
    fn unknown_fields_are_refused_by_both_parts() {
        for err in [
            IngressSecrets::from_json(r#"{"client_sekret":"x"}"#).unwrap_err(),
            GraphSecrets::from_json(r#"{"client_sekret":"x"}"#).unwrap_err(),
        ] {
            assert!(err.to_string().contains("`client_sekret`"), "{err}");
            assert!(!err.to_string().contains("\"x\""), "{err}");
        }
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named_without_its_value() {
        let err = IngressSecrets::from_json(r#"{"client_states":"hunter2-state"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secrets document is not valid: field `client_states` must be a list of strings"
        );
        let err = GraphSecrets::from_json(r#"{"client_secret":["hunter2"]}"#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = GraphSecrets::from_json(r#"{"client_secret":"hunter2""#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn sentinel_callers_and_api_keys_are_checked_when_they_load() {
        let ok = IngressSecrets::from_json(
            r#"{"sentinel_callers":{"object_ids":["6E7B768E-07E2-4810-8459-485F84F8F204"]},
                "sentinel_api_keys":["0123456789abcdef0123456789abcdef"]}"#,
        )
        .unwrap();
        assert_eq!(
            ok.sentinel_callers.object_ids,
            ["6e7b768e-07e2-4810-8459-485f84f8f204"]
        );
        assert_eq!(ok.sentinel_api_keys.len(), 1);
        let short = IngressSecrets::from_json(r#"{"sentinel_api_keys":["hunter2"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("sentinel_api_keys[0] is shorter than 32"),
            "{short}"
        );
        assert!(!short.contains("hunter2"), "{short}");
        let typo = IngressSecrets::from_json(r#"{"sentinel_callers":{"object_id":["x"]}}"#)
            .unwrap_err()
            .to_string();
        assert!(typo.contains("sentinel_callers"), "{typo}");
        let bad = IngressSecrets::from_json(r#"{"sentinel_callers":{"app_ids":["nope"]}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("sentinel_callers.app_ids[0] is not a GUID"),
            "{bad}"
        );
    }

    #[test]
    fn an_undecodable_hmac_key_is_named_by_position_not_value() {
        let err = IngressSecrets::from_json(
            r#"{"webhook_hmac_keys":["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","whsec_hunter2!!"]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "secrets document is not valid: webhook_hmac_keys[1] is not a Standard Webhooks key (whsec_ followed by base64)"
        );
        assert!(!err.contains("hunter2"), "{err}");
        // Unpadded keys load.
        let ok = IngressSecrets::from_json(
            r#"{"webhook_hmac_keys":["whsec_c2lnbmluZy1rZXktb2YtMjUtYnl0ZXMhIQ"]}"#,
        );
        assert_eq!(ok.unwrap().webhook_hmac_keys.len(), 1);
        // A key shorter than Standard Webhooks' 24 bytes is refused, by position.
        let short = "whsec_c2lnbmluZy1rZXktb2YtMjMtYnl0ZXM=";
        let err = IngressSecrets::from_json(&format!(
            r#"{{"webhook_hmac_keys":["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","{short}"]}}"#
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "secrets document is not valid: webhook_hmac_keys[1] is 23 bytes long; Standard Webhooks keys are at least 24 random bytes"
        );
        assert!(!err.contains("c2lnbmluZy1rZXktb2YtMjMtYnl0ZXM"), "{err}");
    }

    #[test]
    fn embedded_dev_secrets_parse() {
        let ingress = IngressSecrets::embedded_dev().unwrap();
        assert!(!ingress.client_states.is_empty());
        assert!(ingress.decryption_key("custom-id-for-testing").is_some());
        let graph = GraphSecrets::embedded_dev().unwrap();
        assert!(graph.credential().is_some());
        assert_eq!(
            local_graph_client_id(EMBEDDED_DEV_SECRETS).as_deref(),
            graph.client_id.as_deref()
        );
    }
}
