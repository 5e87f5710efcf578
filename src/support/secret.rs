//! Secret values and the secrets document they come in: [`SecretString`] (never printed,
//! zeroed on drop), the errors of loading a document (naming the field, never the value), and
//! the document's layout, split in two parts by who needs them (see [`INGRESS_FIELDS`] and
//! [`GRAPH_FIELDS`]). Each part refuses unknown fields (typos) but ignores the other part's.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

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
    "intent_sealing_key",
    "tenant_id",
    "client_id",
    "client_secret",
    "certificate_private_key",
    "certificate",
    "certificate_thumbprint_sha256",
];

/// The JSON object's fields that belong to `own`; a field of neither part is refused by name.
pub fn own_fields(
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
pub fn take<T: DeserializeOwned>(
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

/// Bytes of a hex string (`None` if it is not one).
pub fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
