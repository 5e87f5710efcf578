//! The vault: where secrets come from and where temporary passwords go. The ports are here;
//! their adapters beside them: [`local`] (a JSON file, or the development document compiled
//! into the binary) and [`secrets_manager`] (AWS Secrets Manager, for the deployed functions).

pub mod local;
pub mod secrets_manager;

use std::sync::Arc;

use async_trait::async_trait;

use crate::support::secret::{SecretString, SecretsError};

pub use local::{EMBEDDED_DEV_SECRETS, StaticSecretStore, local_graph_client_id};
pub use secrets_manager::{SecretsManagerPasswordVault, SecretsManagerStore};

/// Port: where one part of the secrets comes from. Implementations cache; `load` is called per
/// request.
#[async_trait]
pub trait SecretStore<T>: Send + Sync {
    /// The current secrets.
    async fn load(&self) -> Result<Arc<T>, SecretsError>;
}

/// Port: a short-lived secret store for temporary passwords.
#[async_trait]
pub trait PasswordVault: Send + Sync {
    /// Stores `password` under `name` (creating it, or replacing the value of the case's
    /// existing secret on a retry), to be deleted after `ttl_hours`; returns its id.
    async fn store(
        &self,
        name: &str,
        password: &SecretString,
        ttl_hours: u32,
    ) -> Result<String, String>;
}
