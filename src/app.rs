//! Composition root: builds adapters from configuration, once per cold start.

use std::sync::Arc;

use crate::cases::policy::{Mode, Policy, PolicyError};
use crate::config::{Config, ConfigError, SecretsSource};
use crate::graph::credential::GraphSecrets;
use crate::graph::{GraphClient, RetryPolicy, TokenProvider};
use crate::http::{Intake, IntakeActivity};
use crate::ingress::secrets::IngressSecrets;
use crate::ingress::signature::{MemoryReplayGuard, ReplayGuard};
use crate::ledger::Ledger;
use crate::ledger::dynamodb::DynamoStore;
use crate::ledger::sqlite::SqliteStore;
use crate::queue::{MemoryQueue, SqsQueue, WorkQueue};
use crate::respond::Worker;
use crate::respond::subscriptions::{ResourceSpec, SubscriptionManager};
use crate::support::secret::{SecretDocument, SecretsError};
use crate::vault::{PasswordVault, SecretsManagerPasswordVault};
use crate::vault::{SecretStore, SecretsManagerStore, StaticSecretStore};

/// Any start-up failure.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// AWS SDK configuration from the environment (honours `AWS_ENDPOINT_URL`, region, role).
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

async fn store<T: SecretDocument>(
    config: &Config,
    source: &SecretsSource,
    variable: &'static str,
) -> Result<Arc<dyn SecretStore<T>>, SecretsError> {
    Ok(match source {
        SecretsSource::EmbeddedDev if config.in_lambda => {
            return Err(SecretsError::NotConfigured {
                part: T::PART,
                variable,
            });
        }
        SecretsSource::EmbeddedDev => Arc::new(StaticSecretStore::<T>::embedded_dev()?),
        SecretsSource::File(path) => Arc::new(StaticSecretStore::<T>::from_file(path)?),
        SecretsSource::SecretsManager(id) => {
            let client = aws_sdk_secretsmanager::Client::new(&aws_config().await);
            Arc::new(SecretsManagerStore::<T>::with_grace(
                client,
                id.clone(),
                config.secrets_ttl,
                config.secrets_grace,
            ))
        }
    })
}

/// The ingress secrets (clientStates, HMAC keys, decryption keys): all the webhook reads.
pub async fn ingress_secret_store(
    config: &Config,
) -> Result<Arc<dyn SecretStore<IngressSecrets>>, SecretsError> {
    store(config, &config.ingress_secrets, "RR_INGRESS_SECRET_ID").await
}

/// The Graph credential: read only by the worker, the renewer and CLI commands that call Graph.
pub async fn graph_secret_store(
    config: &Config,
) -> Result<Arc<dyn SecretStore<GraphSecrets>>, SecretsError> {
    store(config, &config.graph_secrets, "RR_GRAPH_SECRET_ID").await
}

/// Errors loading the policy file.
#[derive(Debug, thiserror::Error)]
pub enum LoadPolicyError {
    #[error("cannot read policy file {0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The policy stores temporary passwords under another prefix than the deployment grants.
    #[error(
        "the policy stores temporary passwords as Secrets Manager secrets named {policy}..., but the deployment grants access to {granted}... (RR_TEMPORARY_PASSWORD_PREFIX, the stack's TemporaryPasswordPrefix): make them equal"
    )]
    VaultPrefix { policy: String, granted: String },
    /// The policy stores temporary passwords in Secrets Manager, the deployment grants none.
    #[error(
        "the policy stores temporary passwords in Secrets Manager, but the deployment grants no access to it (RR_TEMPORARY_PASSWORD_PREFIX is unset: deploy with PasswordDelivery=secrets-manager)"
    )]
    NoVault,
}

/// The policy file the configuration names, or the embedded default. When the deployment
/// says which temporary-password secrets it grants (`RR_TEMPORARY_PASSWORD_PREFIX`), a policy
/// storing them under another prefix is refused: every reset would fail on access.
pub fn load_policy(config: &Config) -> Result<Policy, LoadPolicyError> {
    let policy = match &config.policy_file {
        None => Policy::default_policy(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LoadPolicyError::Io(path.display().to_string(), e))?;
            Policy::from_toml(&text)?
        }
    };
    if let (
        Some(crate::cases::policy::PasswordDelivery::SecretsManager { name_prefix, .. }),
        Some(granted),
    ) = (&policy.password_delivery, &config.temporary_password_prefix)
        && name_prefix != granted
    {
        return Err(LoadPolicyError::VaultPrefix {
            policy: name_prefix.clone(),
            granted: granted.clone(),
        });
    }
    Ok(policy)
}

/// The password vault the policy needs (Secrets Manager delivery), if any. Inside Lambda the
/// deployment must grant it (`RR_TEMPORARY_PASSWORD_PREFIX`, checked against the policy by
/// [`load_policy`]); the worker refuses to start otherwise.
pub async fn password_vault(
    config: &Config,
    policy: &Policy,
) -> Result<Option<Arc<dyn PasswordVault>>, LoadPolicyError> {
    match policy.password_delivery {
        Some(crate::cases::policy::PasswordDelivery::SecretsManager { .. }) => {
            if config.in_lambda && config.temporary_password_prefix.is_none() {
                return Err(LoadPolicyError::NoVault);
            }
            let client = aws_sdk_secretsmanager::Client::new(&aws_config().await);
            Ok(Some(Arc::new(SecretsManagerPasswordVault::new(client))))
        }
        _ => Ok(None),
    }
}

/// The ledger: DynamoDB when `RR_LEDGER_TABLE` is set, else the SQLite file (not in Lambda).
/// Each call opens its own connection (the local intake and worker never share one).
pub async fn ledger(config: &Config) -> Result<(Ledger, Arc<dyn ReplayGuard>), StartError> {
    match &config.ledger_table {
        Some(table) => {
            let client = aws_sdk_dynamodb::Client::new(&aws_config().await);
            let store = Arc::new(DynamoStore::new(client, table.clone()));
            let ledger = Ledger::new(store.clone());
            // Off Lambda (SQS redelivers there), the work index feeds the local retries.
            let ledger = if config.in_lambda {
                ledger
            } else {
                ledger.with_work_index()
            };
            Ok((ledger, store))
        }
        None if config.in_lambda => Err(ConfigError::RequiredInLambda("RR_LEDGER_TABLE").into()),
        None => Ok((
            Ledger::new(Arc::new(SqliteStore::open(&config.ledger_path)?)).with_work_index(),
            Arc::new(MemoryReplayGuard::default()),
        )),
    }
}

/// The connection of the local ledger's upkeep (SQLite only: DynamoDB expires items by TTL
/// and has no log to checkpoint): see [`SqliteStore::spawn_maintenance`], which the local
/// worker runs on its own thread, never on the write path.
/// Like the worker's connection (see [`local_worker_ledger`]), it yields to intake.
pub fn ledger_maintenance(
    config: &Config,
    activity: &IntakeActivity,
) -> Result<Option<SqliteStore>, StartError> {
    if config.ledger_table.is_none() && !config.in_lambda {
        return Ok(Some(
            SqliteStore::open(&config.ledger_path)?.yielding_while(activity.probe()),
        ));
    }
    Ok(None)
}

/// The local server's worker ledger: its own connection, which yields to intake's requests
/// (see [`SqliteStore::yielding_while`]); with DynamoDB, the same as [`ledger`].
pub async fn local_worker_ledger(
    config: &Config,
    activity: &IntakeActivity,
) -> Result<Ledger, StartError> {
    match &config.ledger_table {
        None if !config.in_lambda => Ok(Ledger::new(Arc::new(
            SqliteStore::open(&config.ledger_path)?.yielding_while(activity.probe()),
        ))
        .with_work_index()),
        _ => Ok(ledger(config).await?.0),
    }
}

/// The queue the worker sends each leased case's watchdog to (`RR_QUEUE_URL`, SQS), if set.
pub async fn watchdog_queue(config: &Config) -> Option<Arc<dyn WorkQueue>> {
    let url = config.queue_url.as_ref()?;
    let client = aws_sdk_sqs::Client::new(&aws_config().await);
    Some(Arc::new(SqsQueue::new(client, url.clone())))
}

/// The webhook's intake: ledger, then SQS (or an in-process queue, returned for draining).
pub async fn intake(config: &Config) -> Result<(Intake, Option<Arc<MemoryQueue>>), StartError> {
    let (ledger, replay_guard) = match &config.ledger_table {
        // Locally, intake's connection never checkpoints: the maintenance connection does.
        None if !config.in_lambda => (
            Ledger::new(Arc::new(
                SqliteStore::open(&config.ledger_path)?
                    .without_auto_checkpoint()
                    .await?,
            ))
            .with_work_index(),
            Arc::new(MemoryReplayGuard::default()) as Arc<dyn ReplayGuard>,
        ),
        _ => ledger(config).await?,
    };
    let (queue, memory): (Arc<dyn WorkQueue>, _) = match &config.queue_url {
        Some(url) => {
            let client = aws_sdk_sqs::Client::new(&aws_config().await);
            (Arc::new(SqsQueue::new(client, url.clone())), None)
        }
        None if config.in_lambda => {
            return Err(ConfigError::RequiredInLambda("RR_QUEUE_URL").into());
        }
        None => {
            let memory = Arc::new(
                MemoryQueue::with_capacity(config.local_queue_capacity)
                    .with_consumers(crate::respond::local::CONSUMERS),
            );
            (memory.clone(), Some(memory))
        }
    };
    Ok((
        Intake {
            ledger,
            queue,
            replay_guard,
        },
        memory,
    ))
}

/// A Graph client for the application in the Graph secrets; the credential is read from
/// `store` at each token request, so rotation needs no restart.
pub fn graph_client(
    config: &Config,
    secrets: &GraphSecrets,
    store: Arc<dyn SecretStore<GraphSecrets>>,
    http: reqwest::Client,
) -> Result<Arc<GraphClient>, StartError> {
    // The application id is configuration (RR_GRAPH_CLIENT_ID, the stack's GraphClientId); the
    // Graph secret may hold it too, and then its value is used.
    let client_id = secrets
        .client_id
        .clone()
        .or_else(|| config.graph_client_id.clone())
        .ok_or("the Graph secrets have no client_id, and RR_GRAPH_CLIENT_ID is not set")?;
    if secrets.credential().is_none() {
        return Err("the Graph secrets have neither a client secret nor a certificate".into());
    }
    let tokens = Arc::new(TokenProvider::from_store(
        http.clone(),
        &config.login_authority,
        client_id,
        store,
        "https://graph.microsoft.com/.default",
    ));
    Ok(Arc::new(
        GraphClient::new(http, &config.graph_base_url, tokens, RetryPolicy::default())
            .with_concurrent_workers(config.worker_concurrency),
    ))
}

/// As [`graph_client`], with every budget but directory reads (Identity Protection, reports,
/// directory writes, mail, security) and each mailbox's four concurrent requests shared through
/// `ledger` with every other process of this
/// deployment.
pub fn shared_graph_client(
    config: &Config,
    secrets: &GraphSecrets,
    store: Arc<dyn SecretStore<GraphSecrets>>,
    http: reqwest::Client,
    ledger: &Ledger,
) -> Result<Arc<GraphClient>, StartError> {
    let client = graph_client(config, secrets, store, http)?;
    let client = Arc::try_unwrap(client).map_err(|_| "Graph client is shared already")?;
    let limits = crate::graph::limiter::Limits::published(config.identity_protection_share);
    let limiter = Arc::new(
        crate::graph::limiter::SharedLimiter::new(ledger.clone(), limits)
            .with_clock(client.clock().clone()),
    );
    Ok(Arc::new(
        client
            .with_limiter(limiter)
            .with_shared_mail_slots(ledger.clone()),
    ))
}

/// The worker over `ledger` with the configured policy (its mode replaced by `mode` if given),
/// sealing temporary passwords with the Graph secrets' `intent_sealing_key`.
pub async fn worker(
    config: &Config,
    graph: Arc<GraphClient>,
    graph_secrets: &GraphSecrets,
    ledger: Ledger,
    subscriptions: Option<Arc<SubscriptionManager>>,
    mode: Option<Mode>,
) -> Result<Worker, StartError> {
    let mut policy = load_policy(config)?;
    if let Some(mode) = mode {
        policy.mode = mode;
    }
    let vault = password_vault(config, &policy).await?;
    let mut worker = Worker::new(
        ledger,
        graph,
        Arc::new(policy),
        vault,
        subscriptions,
        config.allowed_tenants.clone(),
    );
    worker.sealer = graph_secrets.intent_sealer.clone();
    worker.view_max_age = time::Duration::try_from(config.view_max_age)
        .unwrap_or(crate::respond::worker::VIEW_MAX_AGE);
    if let Some(dir) = &config.templates_dir {
        worker.templates = crate::actions::notify_user::templates::Templates::from_dir(dir)?;
    }
    // A run forced to report-only (replay without --enforce, benches) writes nothing anywhere,
    // incident comments included.
    if mode != Some(Mode::ReportOnly) {
        worker.incident_comments =
            crate::respond::writeback::IncidentCommenter::from_config(config, &worker.graph)
                .map(Arc::new);
    }
    Ok(worker)
}

/// The subscription manager, when `RR_NOTIFICATION_URL` is set; new subscriptions carry the
/// first `clientState` of the ingress secrets, and each is recorded in `ledger` with its tenant
/// (the webhook accepts a notification only for a subscription recorded in its tenant).
pub fn subscriptions(
    config: &Config,
    secrets: &IngressSecrets,
    graph: Arc<GraphClient>,
    ledger: Option<Ledger>,
) -> Option<Arc<SubscriptionManager>> {
    let notification_url = config.notification_url.clone()?;
    let base = notification_url
        .strip_suffix("/graph/notifications")
        .unwrap_or(&notification_url)
        .to_owned();
    let client_state = secrets.client_states.first()?.clone();
    let resources = vec![ResourceSpec::users()];
    Some(Arc::new(SubscriptionManager {
        graph,
        notification_url,
        lifecycle_url: format!("{base}/graph/lifecycle"),
        client_state,
        resources,
        ledger,
    }))
}
