//! Composition root: builds adapters from configuration, once per cold start.

use std::sync::Arc;

use crate::config::{Config, SecretsSource};
use crate::policy::{Policy, PolicyError};
use crate::secrets::{SecretStore, Secrets, SecretsError, SecretsManagerStore, StaticSecretStore};

/// AWS SDK configuration from the environment (honours `AWS_ENDPOINT_URL`, region, role).
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// The secret store the configuration names.
pub async fn secret_store(config: &Config) -> Result<Arc<dyn SecretStore>, SecretsError> {
    Ok(match &config.secrets {
        SecretsSource::EmbeddedDev => Arc::new(StaticSecretStore::new(Secrets::embedded_dev()?)),
        SecretsSource::File(path) => Arc::new(StaticSecretStore::from_file(path)?),
        SecretsSource::SecretsManager(id) => {
            let client = aws_sdk_secretsmanager::Client::new(&aws_config().await);
            Arc::new(SecretsManagerStore::new(
                client,
                id.clone(),
                config.secrets_ttl,
            )?)
        }
    })
}

/// Errors loading the policy file.
#[derive(Debug, thiserror::Error)]
pub enum LoadPolicyError {
    #[error("cannot read policy file {0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// The policy file the configuration names, or the embedded default.
pub fn load_policy(config: &Config) -> Result<Policy, LoadPolicyError> {
    match &config.policy_file {
        None => Ok(Policy::default_policy()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LoadPolicyError::Io(path.display().to_string(), e))?;
            Ok(Policy::from_toml(&text)?)
        }
    }
}

/// The password vault the policy needs (Secrets Manager delivery), if any.
pub async fn password_vault(policy: &Policy) -> Option<Arc<dyn crate::remediate::PasswordVault>> {
    match policy.password_delivery {
        Some(crate::policy::PasswordDelivery::SecretsManager { .. }) => {
            let client = aws_sdk_secretsmanager::Client::new(&aws_config().await);
            Some(Arc::new(crate::secrets::SecretsManagerPasswordVault::new(
                client,
            )))
        }
        _ => None,
    }
}
