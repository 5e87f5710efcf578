//! Lambda entry point for the worker: SQS batches of work items, with partial batch failures.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use risk_responder::app;
use risk_responder::config::Config;
use risk_responder::worker::Worker;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    risk_responder::telemetry::init();
    let config = Config::from_env()?;
    let store = app::graph_secret_store(&config).await?;
    let secrets = store.load().await?;
    // The ingress part only for the clientState of subscriptions it recreates.
    let ingress = app::ingress_secret_store(&config).await?.load().await?;
    let http = reqwest::Client::new();
    let graph = app::graph_client(&config, &secrets, store, http)?;
    let (ledger, _) = app::ledger(&config).await?;
    let worker = Worker {
        ledger,
        pipeline: app::pipeline(graph.clone(), &config, None).await?,
        subscriptions: app::subscriptions(&config, &ingress, graph),
    };
    let worker = &worker;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(worker.handle_sqs(event.payload).await)
    }))
    .await
}
