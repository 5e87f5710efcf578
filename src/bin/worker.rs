//! Lambda entry point for the worker: SQS batches of work items, with partial batch failures.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use risk_responder::app;
use risk_responder::config::Config;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    risk_responder::support::telemetry::init();
    let config = Config::from_env()?;
    let store = app::graph_secret_store(&config).await?;
    let secrets = store.load().await?;
    // The ingress part only for the clientState of subscriptions it recreates.
    let ingress = app::ingress_secret_store(&config).await?.load().await?;
    let (ledger, _) = app::ledger(&config).await?;
    let graph =
        app::shared_graph_client(&config, &secrets, store, reqwest::Client::new(), &ledger)?;
    let subscriptions = app::subscriptions(&config, &ingress, graph.clone(), Some(ledger.clone()));
    let mut worker = app::worker(&config, graph, &secrets, ledger, subscriptions, None).await?;
    // Each leased case sends a Resume of itself, delivered after its lease: a case whose
    // worker dies (timeout, out of memory, a deploy) is resumed then.
    worker.watchdog = app::watchdog_queue(&config).await;
    let worker = &worker;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(worker.handle_sqs(event.payload).await)
    }))
    .await
}
