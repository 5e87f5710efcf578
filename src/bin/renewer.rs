//! Lambda entry point for the daily schedule: renew (and recreate) Graph subscriptions in every
//! allowed tenant, and delete expired temporary-password secrets.

use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use risk_responder::app;
use risk_responder::config::Config;
use serde_json::{Value, json};

/// Subscriptions expiring within this window are renewed (the schedule runs daily).
const RENEW_WITHIN: Duration = Duration::from_secs(3 * 24 * 3600);

#[tokio::main]
async fn main() -> Result<(), Error> {
    risk_responder::support::telemetry::init();
    let config = Config::from_env()?;
    let store = app::graph_secret_store(&config).await?;
    let secrets = store.load().await?;
    // The ingress part only for the clientState of the subscriptions it creates.
    let ingress = app::ingress_secret_store(&config).await?.load().await?;
    let graph = app::graph_client(&config, &secrets, store, reqwest::Client::new())?;
    // Each subscription is recorded with its tenant, for the webhook to check notifications.
    let (ledger, _) = app::ledger(&config).await?;
    let manager = app::subscriptions(&config, &ingress, graph, Some(ledger))
        .ok_or("RR_NOTIFICATION_URL must be set")?;
    let policy = app::load_policy(&config)?;
    let vault_prefix = match &policy.password_delivery {
        Some(risk_responder::cases::policy::PasswordDelivery::SecretsManager {
            name_prefix,
            ..
        }) => Some(name_prefix.clone()),
        _ => None,
    };
    let sweeper = match vault_prefix {
        Some(_) => Some(risk_responder::vault::SecretsManagerPasswordVault::new(
            aws_sdk_secretsmanager::Client::new(&app::aws_config().await),
        )),
        None => None,
    };
    let (config, manager, sweeper, vault_prefix) = (&config, &manager, &sweeper, &vault_prefix);
    run(service_fn(move |_: LambdaEvent<Value>| async move {
        let mut failures = Vec::new();
        let mut renewed = 0;
        for tenant in &config.allowed_tenants {
            match manager.ensure(tenant).await {
                Ok(_) => {}
                Err(e) => failures.push(format!("{tenant}: ensure: {e}")),
            }
            match manager.renew(tenant, RENEW_WITHIN).await {
                Ok(n) => renewed += n,
                Err(e) => failures.push(format!("{tenant}: renew: {e}")),
            }
        }
        let swept = match (sweeper, vault_prefix) {
            (Some(vault), Some(prefix)) => {
                vault.sweep_expired(prefix).await.map_err(Error::from)?
            }
            _ => 0,
        };
        if !failures.is_empty() {
            // Fail the invocation so the error alarm fires; what succeeded stays done.
            return Err(Error::from(failures.join("; ")));
        }
        Ok::<Value, Error>(json!({ "renewed": renewed, "swept": swept }))
    }))
    .await
}
