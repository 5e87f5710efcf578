//! Secrets held in memory: a local JSON file (both parts may share one document), or the
//! development document compiled into the binary (local server, replay and tests only; never
//! accepted inside Lambda).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use super::SecretStore;
use crate::config::{Config, SecretsSource};
use crate::support::secret::{SecretDocument, SecretsError};

/// Development secrets embedded in the binary, used only by the local server and replay when no
/// secrets file or Secrets Manager secret is configured. Never accepted inside Lambda.
pub const EMBEDDED_DEV_SECRETS: &str = include_str!("../../config/local-secrets.json");
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
        Ok(Self::new(T::from_json(EMBEDDED_DEV_SECRETS)?))
    }
}

#[async_trait]
impl<T: SecretDocument> SecretStore<T> for StaticSecretStore<T> {
    async fn load(&self) -> Result<Arc<T>, SecretsError> {
        Ok(self.secrets.clone())
    }
}

/// Part `T` of the development document compiled into the binary.
pub fn embedded_dev<T: SecretDocument>() -> Result<T, SecretsError> {
    T::from_json(EMBEDDED_DEV_SECRETS)
}

/// The Graph application id in a local secrets document (file or embedded development
/// document), for configurations that do not set `RR_GRAPH_CLIENT_ID`.
pub fn local_graph_client_id(json: &str) -> Option<String> {
    let document: serde_json::Value = serde_json::from_str(json).ok()?;
    document.get("client_id")?.as_str().map(str::to_owned)
}

/// The audience of Graph validation tokens: `RR_GRAPH_CLIENT_ID`, else the `client_id` of the
/// local secrets file (or, outside Lambda, of the embedded development document).
pub fn validation_token_audience(config: &Config) -> Option<String> {
    if let Some(id) = &config.graph_client_id {
        return Some(id.clone());
    }
    let json = match &config.graph_secrets {
        SecretsSource::File(path) => std::fs::read_to_string(path).ok()?,
        SecretsSource::EmbeddedDev if !config.in_lambda => EMBEDDED_DEV_SECRETS.to_owned(),
        _ => return None,
    };
    local_graph_client_id(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_graph_client_id_is_read_from_the_document() {
        assert_eq!(
            local_graph_client_id(EMBEDDED_DEV_SECRETS).as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(local_graph_client_id(r#"{"client_states":["s"]}"#), None);
        assert_eq!(local_graph_client_id("not json"), None);
    }

    #[test]
    fn the_audience_is_the_configured_client_id_else_the_local_document() {
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let webhook = Config::from_lookup(lookup(&[
            ("AWS_LAMBDA_FUNCTION_NAME", "webhook"),
            ("RR_INGRESS_SECRET_ID", "risk-responder/ingress"),
            ("RR_GRAPH_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ]))
        .unwrap();
        assert_eq!(
            validation_token_audience(&webhook).as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        // Inside Lambda the embedded development document is never an audience source.
        let worker = Config::from_lookup(lookup(&[
            ("AWS_LAMBDA_FUNCTION_NAME", "worker"),
            ("RR_INGRESS_SECRET_ID", "risk-responder/ingress"),
            ("RR_GRAPH_SECRET_ID", "risk-responder/graph"),
        ]))
        .unwrap();
        assert_eq!(validation_token_audience(&worker), None);
        // Locally, the development document's client id.
        let local = Config::from_lookup(lookup(&[])).unwrap();
        assert_eq!(
            validation_token_audience(&local).as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
    }
}
