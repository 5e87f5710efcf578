//! Lambda entry point for the scheduled sweep (EventBridge, every 5 minutes): for every allowed
//! tenant (four at once), Identity Protection's changed risky users and the sign-ins that
//! failed with 53011 become signals, kept through the same intake (ledger, then SQS) as webhook
//! signals.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use risk_responder::app;
use risk_responder::config::Config;
use risk_responder::respond::sweep::Sweeper;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    risk_responder::support::telemetry::init();
    let config = Config::from_env()?;
    let store = app::graph_secret_store(&config).await?;
    let secrets = store.load().await?;
    let (intake, _) = app::intake(&config).await?;
    let graph = app::shared_graph_client(
        &config,
        &secrets,
        store,
        reqwest::Client::new(),
        &intake.ledger,
    )?;
    let policy = app::load_policy(&config)?;
    let sweeper = Sweeper {
        graph: &graph,
        ledger: &intake.ledger,
        intake: &intake,
        first_lookback: time::Duration::hours(i64::from(policy.lookback_hours)),
    };
    let (config, sweeper) = (&config, &sweeper);
    run(service_fn(move |_: LambdaEvent<Value>| async move {
        let mut signals = 0;
        let mut failures = Vec::new();
        // Tenants at once: a slow one does not use up the others' time.
        for (tenant, outcome) in sweeper.run_all(&config.allowed_tenants, None).await {
            match outcome {
                Ok(report) => signals += report.signals.len(),
                Err(e) => {
                    tracing::error!(tenant_id = %tenant, error = %e, "tenant sweep failed");
                    failures.push(format!("{tenant}: {e}"));
                }
            }
        }
        if !failures.is_empty() {
            // Fail the invocation so the errors alarm fires; the failed tenants' watermarks
            // did not move, the others' did.
            return Err(Error::from(failures.join("; ")));
        }
        Ok::<Value, Error>(json!({ "tenants": config.allowed_tenants.len(), "signals": signals }))
    }))
    .await
}
