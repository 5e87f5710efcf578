//! Secrets: Graph app credentials, clientState values, webhook HMAC keys and notification
//! decryption keys. Loaded from a [`SecretStore`]; values never appear in `Debug` output or logs.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

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
}

/// The raw JSON secret document, as stored in Secrets Manager or the local file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsDocument {
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<SecretString>,
    #[serde(default)]
    certificate_private_key: Option<SecretString>,
    #[serde(default)]
    certificate_thumbprint: Option<String>,
    #[serde(default)]
    client_states: Vec<SecretString>,
    #[serde(default)]
    webhook_hmac_keys: Vec<SecretString>,
    /// encryptionCertificateId -> PEM PKCS#8 RSA private key.
    #[serde(default)]
    decryption_keys: HashMap<String, SecretString>,
}

/// Parsed secrets, ready to use. Decryption keys are parsed once, when loaded.
pub struct Secrets {
    /// Home tenant of the Graph application.
    pub tenant_id: Option<String>,
    /// Graph application (client) id: the audience of Graph validation tokens.
    pub client_id: Option<String>,
    /// Graph application client secret.
    pub client_secret: Option<SecretString>,
    /// PEM private key of the application's certificate (preferred over the secret).
    pub certificate_private_key: Option<SecretString>,
    /// SHA-1 thumbprint (hex) of that certificate.
    pub certificate_thumbprint: Option<String>,
    /// Accepted `clientState` values (several during rotation).
    pub client_states: Vec<SecretString>,
    /// Standard Webhooks keys (`whsec_...`) accepted on the Sentinel endpoint.
    pub webhook_hmac_keys: Vec<SecretString>,
    decryption_keys: HashMap<String, Arc<OaepPrivateDecryptingKey>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_states", &self.client_states.len())
            .field("webhook_hmac_keys", &self.webhook_hmac_keys.len())
            .field("decryption_keys", &self.decryption_keys.keys())
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// Parses a JSON secrets document.
    pub fn from_json(json: &str) -> Result<Self, SecretsError> {
        // serde_json errors quote no input values for type errors, but may for unknown
        // fields (names only), which is safe to show.
        let doc: SecretsDocument =
            serde_json::from_str(json).map_err(|e| SecretsError::Invalid(e.to_string()))?;
        let mut decryption_keys = HashMap::new();
        for (id, pem) in doc.decryption_keys {
            let key = parse_decryption_key(pem.expose())
                .ok_or_else(|| SecretsError::BadDecryptionKey { id: id.clone() })?;
            decryption_keys.insert(id, Arc::new(key));
        }
        Ok(Self {
            tenant_id: doc.tenant_id,
            client_id: doc.client_id,
            client_secret: doc.client_secret,
            certificate_private_key: doc.certificate_private_key,
            certificate_thumbprint: doc.certificate_thumbprint,
            client_states: doc.client_states,
            webhook_hmac_keys: doc.webhook_hmac_keys,
            decryption_keys,
        })
    }

    /// The development secrets compiled into the binary.
    pub fn embedded_dev() -> Result<Self, SecretsError> {
        Self::from_json(EMBEDDED_DEV_SECRETS)
    }

    /// The Graph credential: the certificate if one is configured, else the client secret.
    pub fn credential(&self) -> Option<crate::graph::ClientCredential> {
        use crate::graph::ClientCredential;
        match (&self.certificate_private_key, &self.certificate_thumbprint) {
            (Some(key), Some(thumbprint)) => Some(ClientCredential::Certificate {
                private_key_pem: key.clone(),
                thumbprint_sha1_hex: thumbprint.clone(),
            }),
            _ => self.client_secret.clone().map(ClientCredential::Secret),
        }
    }

    /// The RSA-OAEP key for a subscription's `encryptionCertificateId`.
    pub fn decryption_key(&self, certificate_id: &str) -> Option<&OaepPrivateDecryptingKey> {
        self.decryption_keys.get(certificate_id).map(Arc::as_ref)
    }
}

fn parse_decryption_key(pem: &str) -> Option<OaepPrivateDecryptingKey> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    let key = PrivateDecryptingKey::from_pkcs8(der.secret_pkcs8_der()).ok()?;
    OaepPrivateDecryptingKey::new(key).ok()
}

/// Port: where secrets come from. Implementations cache; `load` is called per request.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The current secrets.
    async fn load(&self) -> Result<Arc<Secrets>, SecretsError>;
}

/// Secrets held in memory: parsed once from a local file or the embedded development document.
pub struct StaticSecretStore {
    secrets: Arc<Secrets>,
}

impl StaticSecretStore {
    /// Wraps already-parsed secrets.
    pub fn new(secrets: Secrets) -> Self {
        Self {
            secrets: Arc::new(secrets),
        }
    }

    /// Reads and parses a local JSON secrets file.
    pub fn from_file(path: &Path) -> Result<Self, SecretsError> {
        let json = std::fs::read_to_string(path).map_err(|source| SecretsError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(Secrets::from_json(&json)?))
    }
}

#[async_trait]
impl SecretStore for StaticSecretStore {
    async fn load(&self) -> Result<Arc<Secrets>, SecretsError> {
        Ok(self.secrets.clone())
    }
}

/// Secrets from one AWS Secrets Manager secret (JSON), cached in-process by
/// `aws_secretsmanager_caching`; the parsed form is kept per secret version.
pub struct SecretsManagerStore {
    client: aws_secretsmanager_caching::SecretsManagerCachingClient,
    secret_id: String,
    parsed: tokio::sync::Mutex<Option<(String, Arc<Secrets>)>>,
}

impl SecretsManagerStore {
    /// A store over `secret_id`, refreshed from Secrets Manager after `ttl`.
    pub fn new(
        client: aws_sdk_secretsmanager::Client,
        secret_id: impl Into<String>,
        ttl: std::time::Duration,
    ) -> Result<Self, SecretsError> {
        let size = std::num::NonZeroUsize::new(4).expect("non-zero");
        let client =
            aws_secretsmanager_caching::SecretsManagerCachingClient::new(client, size, ttl, false)
                .map_err(|e| SecretsError::Unavailable(e.to_string()))?;
        Ok(Self {
            client,
            secret_id: secret_id.into(),
            parsed: tokio::sync::Mutex::new(None),
        })
    }
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    async fn load(&self) -> Result<Arc<Secrets>, SecretsError> {
        let value = self
            .client
            .get_secret_value(&self.secret_id, None, None, false)
            .await
            .map_err(|e| SecretsError::Unavailable(e.to_string()))?;
        let version = value.version_id.clone().unwrap_or_default();
        let mut parsed = self.parsed.lock().await;
        if let Some((cached_version, secrets)) = parsed.as_ref()
            && *cached_version == version
        {
            return Ok(secrets.clone());
        }
        let json = value
            .secret_string
            .ok_or_else(|| SecretsError::Invalid("secret has no SecretString".into()))?;
        let secrets = Arc::new(Secrets::from_json(&json)?);
        *parsed = Some((version, secrets.clone()));
        Ok(secrets)
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

    #[test]
    fn debug_output_redacts_values() {
        let secrets = Secrets::from_json(
            r#"{"client_secret":"s3cr3t-value","client_states":["state-value-1"]}"#,
        )
        .unwrap();
        let printed = format!("{secrets:?} {:?}", secrets.client_secret);
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
        assert!(!printed.contains("state-value-1"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn bad_decryption_key_is_named_without_its_value() {
        let err = Secrets::from_json(r#"{"decryption_keys":{"cert-1":"not a pem"}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "decryption key \"cert-1\" is not a usable PKCS#8 RSA private key"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Secrets::from_json(r#"{"client_sekret":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("client_sekret"), "{err}");
        assert!(!err.to_string().contains("\"x\""), "{err}");
    }

    #[test]
    fn embedded_dev_secrets_parse() {
        let secrets = Secrets::embedded_dev().unwrap();
        assert!(!secrets.client_states.is_empty());
        assert!(secrets.decryption_key("custom-id-for-testing").is_some());
    }
}
