//! Runtime configuration from environment variables, with local-development defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::is_guid;

/// Microsoft identity platform JWKS used to verify Graph `validationTokens`.
pub const MICROSOFT_JWKS_URL: &str = "https://login.microsoftonline.com/common/discovery/v2.0/keys";

/// Tenant used by the embedded development defaults and the sample events.
pub const DEV_TENANT_ID: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";

/// Default cap on request bodies (Lambda's own synchronous payload limit is 6 MB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default cap on `/sentinel/alerts` bodies: an incident trigger body carries the incident with
/// all its alerts and entities and can be large, and Logic Apps does not retry a 413. A
/// Function URL accepts request payloads of at most 6 MB, so this is that limit.
pub const DEFAULT_SENTINEL_MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Default cap on notifications in one Graph batch. Graph documents no maximum (a request may
/// carry "multiple notifications"); every kept notification costs a ledger write and a tenth of
/// an SQS batch before the answer, which must come within Graph's 3 s.
pub const DEFAULT_MAX_NOTIFICATIONS_PER_BATCH: usize = 1000;

/// Items a local queue holds by default before intake answers 503 (about 10 MB of signals).
pub const DEFAULT_LOCAL_QUEUE_CAPACITY: usize = 20_000;

/// How long the last good secret value is still served, after its TTL ran out, while Secrets
/// Manager cannot be read (hard limit: TTL + grace after the last successful read).
pub const DEFAULT_SECRETS_GRACE: Duration = Duration::from_secs(3600);

/// How the key set is cached and fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksPolicy {
    /// Keys older than this are refetched in the background while still in use (Microsoft: 1 h).
    pub refresh_after: Duration,
    /// Hard limit: keys are not used longer than this after the last successful fetch
    /// (Microsoft: 24 h).
    pub max_age: Duration,
    /// Least time between fetches caused by a key id the set does not hold (Microsoft: 5 min).
    pub unknown_kid_interval: Duration,
    /// After a failed fetch, no fetch for this long.
    pub retry_after_failure: Duration,
    /// Longest a request waits for keys; then the keys count as unavailable (503).
    pub wait: Duration,
    /// One fetch of the key set; longer counts as a failure.
    pub fetch_timeout: Duration,
}

impl Default for JwksPolicy {
    fn default() -> Self {
        Self {
            refresh_after: Duration::from_secs(3600),
            max_age: Duration::from_secs(24 * 3600),
            unknown_kid_interval: Duration::from_secs(300),
            retry_after_failure: Duration::from_secs(30),
            wait: Duration::from_millis(2500),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// Errors in configuration values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error(
        "no secrets configured: set RR_INGRESS_SECRET_ID and/or RR_GRAPH_SECRET_ID (or RR_SECRETS_FILE); embedded development secrets are refused inside Lambda"
    )]
    NoSecretsInLambda,
    #[error(
        "RR_SECRET_ID is no longer read: the secrets are split into RR_INGRESS_SECRET_ID (webhook) and RR_GRAPH_SECRET_ID (worker, renewer, CLI)"
    )]
    SplitSecret,
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
    /// Largest accepted `/sentinel/alerts` body (`RR_SENTINEL_MAX_BODY_BYTES`); larger gets 413.
    pub sentinel_max_body_bytes: usize,
    /// Most notifications in one Graph batch; more gets 413 and none is looked at.
    pub max_notifications_per_batch: usize,
    /// Work items the local server's in-process queue holds before intake answers 503.
    pub local_queue_capacity: usize,
    /// Workers that may run at once (`RR_WORKER_CONCURRENCY`, the stack's
    /// `WorkerMaxConcurrency`): each keeps to its share of a mailbox's concurrent requests.
    pub worker_concurrency: usize,
    /// Address of the local server.
    pub bind: SocketAddr,
    /// Where the ingress secrets (clientStates, HMAC keys, decryption keys) come from.
    pub ingress_secrets: SecretsSource,
    /// Where the Graph credential comes from (worker, renewer, CLI commands that call Graph).
    pub graph_secrets: SecretsSource,
    /// Audiences accepted in Entra ID tokens on `/sentinel/alerts` (application ID URI and/or
    /// client id); empty turns Entra ID authentication off.
    pub sentinel_audiences: Vec<String>,
    /// Graph application id: the audience of Graph validation tokens (not a secret). When
    /// unset, the `client_id` of a local secrets file (or the embedded development document).
    pub graph_client_id: Option<String>,
    /// Clock skew allowed on token expiry.
    pub token_leeway: Duration,
    /// How the signing-key set is cached and fetched (refresh, hard limit, unknown-kid and
    /// failure back-off, how long a request waits for keys).
    pub jwks: JwksPolicy,
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
    /// Whether this process runs inside AWS Lambda.
    pub in_lambda: bool,
    /// Fraction of the tenant's Identity Protection budget (1 request/s for all apps) this
    /// product may use; the rest is left to other apps.
    pub identity_protection_share: f64,
    /// How old a view of Identity Protection a `users` notification accepts.
    pub view_max_age: Duration,
    /// Directory of the operator's user-mail templates (`RR_TEMPLATES_DIR`).
    pub templates_dir: Option<PathBuf>,
    /// How case outcomes reach the Sentinel incidents they came from (`RR_INCIDENT_COMMENTS`:
    /// `arm`, the default; `graph` for workspaces in the Defender portal; `off`: `None`).
    pub incident_comments: Option<crate::cases::incident::CommentPath>,
    /// Azure Resource Manager base URL (`RR_ARM_BASE_URL`).
    pub arm_base_url: String,
    /// Name prefix of the temporary-password secrets the deployment grants access to
    /// (`RR_TEMPORARY_PASSWORD_PREFIX`, the stack's `TemporaryPasswordPrefix` when its
    /// `PasswordDelivery` is `secrets-manager`); unset: no Secrets Manager vault is granted.
    pub temporary_password_prefix: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            allowed_tenants: vec![DEV_TENANT_ID.to_owned()],
            jwks_url: MICROSOFT_JWKS_URL.to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            sentinel_max_body_bytes: DEFAULT_SENTINEL_MAX_BODY_BYTES,
            max_notifications_per_batch: DEFAULT_MAX_NOTIFICATIONS_PER_BATCH,
            local_queue_capacity: DEFAULT_LOCAL_QUEUE_CAPACITY,
            worker_concurrency: 1,
            bind: SocketAddr::from(([127, 0, 0, 1], 3000)),
            ingress_secrets: SecretsSource::EmbeddedDev,
            graph_secrets: SecretsSource::EmbeddedDev,
            graph_client_id: None,
            sentinel_audiences: Vec::new(),
            token_leeway: Duration::from_secs(60),
            jwks: JwksPolicy::default(),
            webhook_tolerance: Duration::from_secs(5 * 60),
            graph_base_url: "https://graph.microsoft.com/v1.0".to_owned(),
            login_authority: "https://login.microsoftonline.com".to_owned(),
            policy_file: None,
            secrets_ttl: Duration::from_secs(300),
            secrets_grace: DEFAULT_SECRETS_GRACE,
            queue_url: None,
            ledger_table: None,
            ledger_path: PathBuf::from("risk-responder.sqlite"),
            notification_url: None,
            in_lambda: false,
            identity_protection_share: 0.5,
            view_max_age: Duration::from_secs(600),
            templates_dir: None,
            incident_comments: Some(crate::cases::incident::CommentPath::Arm),
            arm_base_url: "https://management.azure.com".to_owned(),
            temporary_password_prefix: None,
        }
    }
}

impl Config {
    /// Reads `RR_*` variables over the defaults. Inside Lambda, secrets must be configured.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Config::from_env`], from any variable lookup (for tests). Every value is checked
    /// when loaded: numbers within their range, tenant and application ids as GUIDs, URLs as
    /// https (http only for loopback); an error names the variable and what it must be.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(tenants) = get("RR_ALLOWED_TENANTS") {
            config.allowed_tenants = tenants
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect();
            if let Some(bad) = config.allowed_tenants.iter().find(|t| !is_guid(t)) {
                return Err(ConfigError::Invalid {
                    name: "RR_ALLOWED_TENANTS",
                    reason: format!(
                        "{bad:?} is not a tenant id: list tenant ids (GUIDs such as {DEV_TENANT_ID}), separated by commas"
                    ),
                });
            }
            if config.allowed_tenants.is_empty() {
                return Err(ConfigError::Invalid {
                    name: "RR_ALLOWED_TENANTS",
                    reason: "lists no tenant: name at least one tenant id".into(),
                });
            }
        }
        if let Some(url) = get("RR_JWKS_URL") {
            config.jwks_url = checked_url("RR_JWKS_URL", &url)?;
        }
        let max_body = 1024..=DEFAULT_SENTINEL_MAX_BODY_BYTES;
        if let Some(n) = bounded(&get, "RR_MAX_BODY_BYTES", max_body.clone(), "bytes")? {
            config.max_body_bytes = n;
        }
        if let Some(n) = bounded(&get, "RR_SENTINEL_MAX_BODY_BYTES", max_body, "bytes")? {
            config.sentinel_max_body_bytes = n;
        }
        if let Some(n) = bounded(
            &get,
            "RR_MAX_NOTIFICATIONS_PER_BATCH",
            1..=10_000,
            "notifications",
        )? {
            config.max_notifications_per_batch = n;
        }
        if let Some(n) = bounded(&get, "RR_LOCAL_QUEUE_CAPACITY", 1..=1_000_000, "work items")? {
            config.local_queue_capacity = n;
        }
        // Lambda's maximum concurrency for an SQS event source is 1,000.
        if let Some(n) = bounded(&get, "RR_WORKER_CONCURRENCY", 1..=1_000, "workers")? {
            config.worker_concurrency = n;
        }
        if let Some(bind) = get("RR_BIND") {
            config.bind = bind.parse().map_err(|e| ConfigError::Invalid {
                name: "RR_BIND",
                reason: format!("{bind:?} is not an address and port such as 127.0.0.1:3000 ({e})"),
            })?;
        }
        if let Some(url) = get("RR_GRAPH_BASE_URL") {
            config.graph_base_url = checked_url("RR_GRAPH_BASE_URL", &url)?;
        }
        if let Some(url) = get("RR_LOGIN_AUTHORITY") {
            config.login_authority = checked_url("RR_LOGIN_AUTHORITY", &url)?;
        }
        if let Some(path) = get("RR_POLICY_FILE") {
            config.policy_file = Some(PathBuf::from(path));
        }
        if let Some(secs) = bounded(&get, "RR_SECRETS_TTL_SECONDS", 1..=86_400, "seconds")? {
            config.secrets_ttl = Duration::from_secs(secs);
        }
        if let Some(secs) = bounded(&get, "RR_SECRETS_GRACE_SECONDS", 0..=7 * 86_400, "seconds")? {
            config.secrets_grace = Duration::from_secs(secs);
        }
        config.queue_url = get("RR_QUEUE_URL").filter(|v| !v.is_empty());
        config.ledger_table = get("RR_LEDGER_TABLE").filter(|v| !v.is_empty());
        if let Some(path) = get("RR_LEDGER_PATH") {
            config.ledger_path = PathBuf::from(path);
        }
        config.notification_url = match get("RR_NOTIFICATION_URL").filter(|v| !v.is_empty()) {
            Some(url) => Some(checked_url("RR_NOTIFICATION_URL", &url)?),
            None => None,
        };
        config.in_lambda = get("AWS_LAMBDA_FUNCTION_NAME").is_some();
        if let Some(share) = get("RR_IDENTITY_PROTECTION_SHARE") {
            // Below 5% one Identity Protection request would wait 22 s: longer than a worker
            // waits for a slot.
            config.identity_protection_share = share
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|share| (0.05..=1.0).contains(share))
                .ok_or_else(|| ConfigError::Invalid {
                    name: "RR_IDENTITY_PROTECTION_SHARE",
                    reason: format!("{share:?} is not a fraction from 0.05 to 1"),
                })?;
        }
        config.templates_dir = get("RR_TEMPLATES_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if let Some(secs) = bounded(&get, "RR_VIEW_MAX_AGE_SECONDS", 0..=86_400, "seconds")? {
            config.view_max_age = Duration::from_secs(secs);
        }
        if let Some(path) = get("RR_INCIDENT_COMMENTS") {
            use crate::cases::incident::CommentPath;
            config.incident_comments = match path.trim().to_ascii_lowercase().as_str() {
                "arm" => Some(CommentPath::Arm),
                "graph" => Some(CommentPath::Graph),
                "off" => None,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "RR_INCIDENT_COMMENTS",
                        reason: format!("{path:?} is not one of arm, graph, off"),
                    });
                }
            };
        }
        if let Some(url) = get("RR_ARM_BASE_URL").filter(|v| !v.trim().is_empty()) {
            config.arm_base_url = checked_url("RR_ARM_BASE_URL", &url)?;
        }
        config.temporary_password_prefix =
            get("RR_TEMPORARY_PASSWORD_PREFIX").filter(|v| !v.trim().is_empty());
        if get("RR_SECRET_ID").is_some() {
            return Err(ConfigError::SplitSecret);
        }
        let nonempty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let file = nonempty("RR_SECRETS_FILE").map(|p| SecretsSource::File(PathBuf::from(p)));
        let part = |variable: &str| {
            nonempty(variable)
                .map(SecretsSource::SecretsManager)
                .or_else(|| file.clone())
        };
        let (ingress, graph) = (part("RR_INGRESS_SECRET_ID"), part("RR_GRAPH_SECRET_ID"));
        if config.in_lambda && ingress.is_none() && graph.is_none() {
            return Err(ConfigError::NoSecretsInLambda);
        }
        config.ingress_secrets = ingress.unwrap_or(SecretsSource::EmbeddedDev);
        config.graph_secrets = graph.unwrap_or(SecretsSource::EmbeddedDev);
        config.graph_client_id = nonempty("RR_GRAPH_CLIENT_ID").map(|v| v.trim().to_owned());
        if let Some(bad) = config.graph_client_id.as_ref().filter(|id| !is_guid(id)) {
            return Err(ConfigError::Invalid {
                name: "RR_GRAPH_CLIENT_ID",
                reason: format!(
                    "{bad:?} is not an application (client) id: copy the GUID from the app registration's overview"
                ),
            });
        }
        if let Some(audiences) = get("RR_SENTINEL_AUDIENCE") {
            config.sentinel_audiences = audiences
                .split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect();
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

/// A whole number from the environment variable `name`, within `range`.
fn bounded<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
) -> Result<Option<T>, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(text) = get(name) else {
        return Ok(None);
    };
    match text.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(ConfigError::Invalid {
            name,
            reason: format!(
                "{text:?} is not a whole number of {unit} from {} to {}",
                range.start(),
                range.end()
            ),
        }),
    }
}

/// `value` if it parses as an https URL (http only for a loopback host, as a local stand-in
/// is), without its trailing slash.
fn checked_url(name: &'static str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    let invalid = |reason: String| ConfigError::Invalid { name, reason };
    let url = reqwest::Url::parse(value).map_err(|e| {
        invalid(format!(
            "{value:?} is not a URL ({e}): give an https:// URL"
        ))
    })?;
    let loopback = url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match url.scheme() {
        "https" if url.host_str().is_some() => Ok(value.trim_end_matches('/').to_owned()),
        "http" if loopback => Ok(value.trim_end_matches('/').to_owned()),
        _ => Err(invalid(format!(
            "{value:?} must be an https:// URL (http:// only for a loopback address such as http://127.0.0.1:3000)"
        ))),
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
            (
                "RR_ALLOWED_TENANTS",
                " AAAAAAAA-0000-4000-8000-000000000001 , bbbbbbbb-0000-4000-8000-000000000002,",
            ),
            ("RR_MAX_BODY_BYTES", "2048"),
            ("RR_SENTINEL_MAX_BODY_BYTES", "4096"),
            ("RR_MAX_NOTIFICATIONS_PER_BATCH", "50"),
            ("RR_SECRETS_FILE", "/tmp/s.json"),
        ]))
        .unwrap();
        assert_eq!(config.max_notifications_per_batch, 50);
        assert_eq!(
            config.allowed_tenants,
            vec![
                "aaaaaaaa-0000-4000-8000-000000000001",
                "bbbbbbbb-0000-4000-8000-000000000002"
            ]
        );
        assert_eq!(config.max_body_bytes, 2048);
        assert_eq!(config.sentinel_max_body_bytes, 4096);
        let default = Config::from_lookup(lookup(&[])).unwrap();
        assert_eq!(default.sentinel_max_body_bytes, 6 * 1024 * 1024);
        assert!(config.tenant_allowed("BBBBBBBB-0000-4000-8000-000000000002"));
        assert!(!config.tenant_allowed("cccccccc-0000-4000-8000-000000000003"));
        assert_eq!(
            config.ingress_secrets,
            SecretsSource::File("/tmp/s.json".into())
        );
        assert_eq!(
            config.graph_secrets,
            SecretsSource::File("/tmp/s.json".into())
        );
    }

    #[test]
    fn incident_comments_take_arm_by_default_and_refuse_unknown_paths() {
        use crate::cases::incident::CommentPath;
        let default = Config::from_lookup(lookup(&[])).unwrap();
        assert_eq!(default.incident_comments, Some(CommentPath::Arm));
        assert_eq!(default.arm_base_url, "https://management.azure.com");
        let graph = Config::from_lookup(lookup(&[
            ("RR_INCIDENT_COMMENTS", "Graph"),
            ("RR_ARM_BASE_URL", "http://127.0.0.1:9"),
        ]))
        .unwrap();
        assert_eq!(graph.incident_comments, Some(CommentPath::Graph));
        assert_eq!(graph.arm_base_url, "http://127.0.0.1:9");
        let off = Config::from_lookup(lookup(&[("RR_INCIDENT_COMMENTS", "off")])).unwrap();
        assert_eq!(off.incident_comments, None);
        let bad = Config::from_lookup(lookup(&[("RR_INCIDENT_COMMENTS", "teams")]))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("RR_INCIDENT_COMMENTS"), "{bad}");
    }

    #[test]
    fn each_part_has_its_own_secret() {
        let config = Config::from_lookup(lookup(&[
            ("AWS_LAMBDA_FUNCTION_NAME", "webhook"),
            ("RR_INGRESS_SECRET_ID", "risk-responder/ingress"),
            ("RR_GRAPH_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ]))
        .unwrap();
        assert_eq!(
            config.ingress_secrets,
            SecretsSource::SecretsManager("risk-responder/ingress".into())
        );
        // The webhook has no Graph credential source, and does not need one.
        assert_eq!(config.graph_secrets, SecretsSource::EmbeddedDev);
        let worker = Config::from_lookup(lookup(&[
            ("AWS_LAMBDA_FUNCTION_NAME", "worker"),
            ("RR_INGRESS_SECRET_ID", "risk-responder/ingress"),
            ("RR_GRAPH_SECRET_ID", "risk-responder/graph"),
        ]))
        .unwrap();
        assert_eq!(
            worker.graph_secrets,
            SecretsSource::SecretsManager("risk-responder/graph".into())
        );
    }

    #[test]
    fn the_old_single_secret_is_refused_with_a_pointer_to_the_split() {
        let err = Config::from_lookup(lookup(&[("RR_SECRET_ID", "app")])).unwrap_err();
        assert!(err.to_string().contains("RR_INGRESS_SECRET_ID"), "{err}");
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

    #[test]
    fn every_value_is_checked_and_the_error_names_the_variable_and_the_range() {
        let err =
            |vars: &[(&str, &str)]| Config::from_lookup(lookup(vars)).unwrap_err().to_string();
        assert_eq!(
            err(&[("RR_WORKER_CONCURRENCY", "4294967296")]),
            "environment variable RR_WORKER_CONCURRENCY is not valid: \"4294967296\" is not a whole number of workers from 1 to 1000"
        );
        assert!(err(&[("RR_MAX_BODY_BYTES", "10")]).contains("from 1024 to 6291456"));
        assert!(err(&[("RR_SECRETS_TTL_SECONDS", "-1")]).contains("RR_SECRETS_TTL_SECONDS"));
        assert!(err(&[("RR_VIEW_MAX_AGE_SECONDS", "99999999999")]).contains("0 to 86400"));
        assert!(err(&[("RR_IDENTITY_PROTECTION_SHARE", "NaN")]).contains("0.05 to 1"));
        assert!(err(&[("RR_ALLOWED_TENANTS", "contoso.com")]).contains("is not a tenant id"));
        assert!(err(&[("RR_ALLOWED_TENANTS", " , ")]).contains("lists no tenant"));
        assert!(err(&[("RR_GRAPH_CLIENT_ID", "my-app")]).contains("RR_GRAPH_CLIENT_ID"));
        for name in [
            "RR_GRAPH_BASE_URL",
            "RR_LOGIN_AUTHORITY",
            "RR_JWKS_URL",
            "RR_ARM_BASE_URL",
            "RR_NOTIFICATION_URL",
        ] {
            let text = err(&[(name, "http://graph.example.com/v1.0")]);
            assert!(text.contains(name) && text.contains("https://"), "{text}");
            assert!(err(&[(name, "graph.microsoft.com")]).contains("not a URL"));
        }
        // http is for a local stand-in only.
        let local = Config::from_lookup(lookup(&[
            ("RR_GRAPH_BASE_URL", "http://127.0.0.1:9/v1.0/"),
            ("RR_LOGIN_AUTHORITY", "http://localhost:9"),
            (
                "RR_NOTIFICATION_URL",
                "http://[::1]:3000/graph/notifications",
            ),
        ]))
        .unwrap();
        assert_eq!(local.graph_base_url, "http://127.0.0.1:9/v1.0");
    }
}
