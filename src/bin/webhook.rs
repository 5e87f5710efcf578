//! Lambda entry point for the webhook: the axum router behind a Function URL or HTTP API.

use std::sync::Arc;

use lambda_http::{Error, run};
use risk_responder::app::secret_store;
use risk_responder::config::Config;
use risk_responder::http::{AppState, router};
use risk_responder::queue::MemoryQueue;

#[tokio::main]
async fn main() -> Result<(), Error> {
    risk_responder::telemetry::init();
    let config = Config::from_env()?;
    let secrets = secret_store(&config).await?;
    let queue = Arc::new(MemoryQueue::default());
    let state = AppState::new(config, secrets, queue, reqwest::Client::new()).await?;
    run(router(state)).await
}
