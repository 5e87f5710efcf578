//! Lambda entry point for the webhook: the axum router behind a Function URL or HTTP API.
//! Accepted work goes to the DynamoDB ledger and SQS (`RR_LEDGER_TABLE`, `RR_QUEUE_URL`).

use lambda_http::{Error, run};
use risk_responder::app;
use risk_responder::config::Config;
use risk_responder::http::{AppState, router};

#[tokio::main]
async fn main() -> Result<(), Error> {
    risk_responder::support::telemetry::init();
    let config = Config::from_env()?;
    // Only the ingress secrets: the webhook never reads the Graph credential.
    let secrets = app::ingress_secret_store(&config).await?;
    let (intake, _) = app::intake(&config).await?;
    let state = AppState::new(config, secrets, intake, reqwest::Client::new());
    run(router(state)).await
}
