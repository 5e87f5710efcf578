//! Runtime configuration from environment variables, with local-development defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Microsoft identity platform JWKS used to verify Graph `validationTokens`.
pub const MICROSOFT_JWKS_URL: &str = "https://login.microsoftonline.com/common/discovery/v2.0/keys";

/// Tenant used by the embedded development defaults and the sample events.
pub const DEV_TENANT_ID: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";

/// Default cap on request bodies (Lambda's own synchronous payload limit is 6 MB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Errors in configuration values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error(
        "no secrets configured: set RR_SECRETS_FILE (or RR_SECRET_ID); embedded development secrets are refused inside Lambda"
    )]
    NoSecretsInLambda,
    #[error("{0} must be set inside Lambda (in-process adapters would lose events)")]
    RequiredInLambda(&'static str),
}

/// Where secrets are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretsSource {
    /// The development document compiled into the binary.
    EmbeddedDev,
    /// A local JSON file.
    File(PathBuf),
    /// An AWS Secrets Manager secret (name or ARN).
    SecretsManager(String),
}

/// Configuration shared by the webhook, the local server and the CLI.
#[derive(Debug, Clone)]
pub struct Config {
    /// Tenants whose notifications are accepted (lower-case GUIDs).
    pub allowed_tenants: Vec<String>,
    /// JWKS endpoint for validation-token signatures.
    pub jwks_url: String,
    /// Largest accepted request body, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Address of the local server.
    pub bind: SocketAddr,
    /// Where secrets come from.
    pub secrets: SecretsSource,
    /// Clock skew allowed on token expiry.
    pub token_leeway: Duration,
    /// Least time between JWKS refetches caused by an unknown key id.
    pub jwks_min_refresh: Duration,
    /// Accepted age (either way) of a Standard Webhooks `webhook-timestamp`.
    pub webhook_tolerance: Duration,
    /// Microsoft Graph base URL.
    pub graph_base_url: String,
    /// Microsoft identity platform authority (token endpoint host).
    pub login_authority: String,
    /// Remediation policy file; the embedded `config/policy.toml` when unset.
    pub policy_file: Option<PathBuf>,
    /// How long secrets are cached before Secrets Manager is asked again.
    pub secrets_ttl: Duration,
    /// How long, after the TTL, the last good secret value is served while Secrets Manager
    /// cannot be read (hard limit: TTL + grace after the last successful read).
    pub secrets_grace: Duration,
    /// SQS queue URL for accepted work; in-process when unset (local only).
    pub queue_url: Option<String>,
    /// DynamoDB ledger table; the SQLite file `ledger_path` when unset.
    pub ledger_table: Option<String>,
    /// SQLite ledger file (local server, replay, audit).
    pub ledger_path: PathBuf,
    /// Public URL of `/graph/notifications` (subscriptions); unset: subscriptions are not managed.
    pub notification_url: Option<String>,
    /// Also subscribe to legacy IPC security alerts (retired by Microsoft on 2026-10-15).
    pub subscribe_ipc_alerts: bool,
    /// Whether this process runs inside AWS Lambda.
    pub in_lambda: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            allowed_tenants: vec![DEV_TENANT_ID.to_owned()],
            jwks_url: MICROSOFT_JWKS_URL.to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            bind: SocketAddr::from(([127, 0, 0, 1], 3000)),
            secrets: SecretsSource::EmbeddedDev,
            token_leeway: Duration::from_secs(60),
            jwks_min_refresh: Duration::from_secs(60),
            webhook_tolerance: Duration::from_secs(5 * 60),
            graph_base_url: "https://graph.microsoft.com/v1.0".to_owned(),
            login_authority: "https://login.microsoftonline.com".to_owned(),
            policy_file: None,
            secrets_ttl: Duration::from_secs(300),
            secrets_grace: crate::secrets::DEFAULT_SECRETS_GRACE,
            queue_url: None,
            ledger_table: None,
            ledger_path: PathBuf::from("risk-responder.sqlite"),
            notification_url: None,
            subscribe_ipc_alerts: false,
            in_lambda: false,
        }
    }
}

impl Config {
    /// Reads `RR_*` variables over the defaults. Inside Lambda, secrets must be configured.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Config::from_env`], from any variable lookup (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(tenants) = get("RR_ALLOWED_TENANTS") {
            config.allowed_tenants = tenants
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect();
        }
        if let Some(url) = get("RR_JWKS_URL") {
            config.jwks_url = url;
        }
        if let Some(bytes) = get("RR_MAX_BODY_BYTES") {
            config.max_body_bytes = bytes.parse().map_err(|e| ConfigError::Invalid {
                name: "RR_MAX_BODY_BYTES",
                reason: format!("{e}"),
            })?;
        }
        if let Some(bind) = get("RR_BIND") {
            config.bind = bind.parse().map_err(|e| ConfigError::Invalid {
                name: "RR_BIND",
                reason: format!("{e}"),
            })?;
        }
        if let Some(url) = get("RR_GRAPH_BASE_URL") {
            config.graph_base_url = url;
        }
        if let Some(url) = get("RR_LOGIN_AUTHORITY") {
            config.login_authority = url;
        }
        if let Some(path) = get("RR_POLICY_FILE") {
            config.policy_file = Some(PathBuf::from(path));
        }
        if let Some(secs) = get("RR_SECRETS_TTL_SECONDS") {
            let secs: u64 = secs.parse().map_err(|e| ConfigError::Invalid {
                name: "RR_SECRETS_TTL_SECONDS",
                reason: format!("{e}"),
            })?;
            config.secrets_ttl = Duration::from_secs(secs);
        }
        if let Some(secs) = get("RR_SECRETS_GRACE_SECONDS") {
            let secs: u64 = secs.parse().map_err(|e| ConfigError::Invalid {
                name: "RR_SECRETS_GRACE_SECONDS",
                reason: format!("{e}"),
            })?;
            config.secrets_grace = Duration::from_secs(secs);
        }
        config.queue_url = get("RR_QUEUE_URL").filter(|v| !v.is_empty());
        config.ledger_table = get("RR_LEDGER_TABLE").filter(|v| !v.is_empty());
        if let Some(path) = get("RR_LEDGER_PATH") {
            config.ledger_path = PathBuf::from(path);
        }
        config.notification_url = get("RR_NOTIFICATION_URL").filter(|v| !v.is_empty());
        config.subscribe_ipc_alerts = get("RR_SUBSCRIBE_IPC_ALERTS").is_some_and(|v| v == "true");
        config.in_lambda = get("AWS_LAMBDA_FUNCTION_NAME").is_some();
        if let Some(id) = get("RR_SECRET_ID") {
            config.secrets = SecretsSource::SecretsManager(id);
        } else if let Some(path) = get("RR_SECRETS_FILE") {
            config.secrets = SecretsSource::File(PathBuf::from(path));
        } else if get("AWS_LAMBDA_FUNCTION_NAME").is_some() {
            return Err(ConfigError::NoSecretsInLambda);
        }
        Ok(config)
    }

    /// Whether notifications from this tenant are accepted.
    pub fn tenant_allowed(&self, tenant_id: &str) -> bool {
        self.allowed_tenants
            .iter()
            .any(|t| t.eq_ignore_ascii_case(tenant_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn env_overrides_defaults() {
        let config = Config::from_lookup(lookup(&[
            ("RR_ALLOWED_TENANTS", " AAAA-1 , bbbb-2,"),
            ("RR_MAX_BODY_BYTES", "2048"),
            ("RR_SECRETS_FILE", "/tmp/s.json"),
        ]))
        .unwrap();
        assert_eq!(config.allowed_tenants, vec!["aaaa-1", "bbbb-2"]);
        assert_eq!(config.max_body_bytes, 2048);
        assert!(config.tenant_allowed("BBBB-2"));
        assert!(!config.tenant_allowed("cccc-3"));
        assert_eq!(config.secrets, SecretsSource::File("/tmp/s.json".into()));
    }

    #[test]
    fn lambda_without_secrets_is_refused() {
        let err =
            Config::from_lookup(lookup(&[("AWS_LAMBDA_FUNCTION_NAME", "webhook")])).unwrap_err();
        assert!(matches!(err, ConfigError::NoSecretsInLambda));
    }

    #[test]
    fn bad_number_is_named() {
        let err = Config::from_lookup(lookup(&[("RR_MAX_BODY_BYTES", "lots")])).unwrap_err();
        assert!(err.to_string().contains("RR_MAX_BODY_BYTES"), "{err}");
    }
}
