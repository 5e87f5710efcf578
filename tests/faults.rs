//! Fault tests: outages and storms on every dependency. Each asserts no panic, the right
//! status, no event lost, no remediation twice, and no secret in the captured logs.

mod common;
mod graph_standin;

use std::sync::Arc;
use std::time::Duration;

use graph_standin::*;
use risk_responder::cases::CaseStatus;
use risk_responder::config::Config;
use risk_responder::http::{AppState, Intake};
use risk_responder::ingress::secrets::IngressSecrets;
use risk_responder::ledger::Ledger;
use risk_responder::queue::{MemoryQueue, WorkItem};
use risk_responder::respond::{Disposition, Worker};
use risk_responder::vault::SecretsManagerStore;

fn worker(s: &StandIn, ledger: Ledger) -> Worker {
    enforcing_worker(s, ledger, 3)
}

fn item(id: &str) -> WorkItem {
    adele_item(id)
}

fn password(s: &StandIn) -> Option<String> {
    s.with(|d| {
        d.users
            .iter()
            .find(|u| u["id"] == ADELE)
            .and_then(|u| u["passwordProfile"]["password"].as_str().map(str::to_owned))
    })
}

fn assert_no_secret(logs: &str, s: &StandIn) {
    assert!(!logs.contains(CLIENT_SECRET), "client secret logged");
    assert!(!logs.contains(common::CLIENT_STATE), "clientState logged");
    assert!(!logs.contains("standin-token-"), "access token logged");
    if let Some(password) = password(s) {
        assert!(!logs.contains(&password), "password logged");
    }
}

/// Runs `storm`, checks the item is kept for retry, calms the stand-in, retries to completion.
async fn survive(storm: impl FnOnce(&mut Directory), calm: impl FnOnce(&mut Directory)) {
    let (logs, _guard) = common::Logs::capture();
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let ledger = memory_ledger();
    let worker = worker(&s, ledger.clone());
    s.with(storm);
    // As the intake does before queueing.
    let WorkItem::Risk(signal) = item("storm-1") else {
        unreachable!()
    };
    ledger.keep_signals(&[signal]).await.unwrap();
    let first = worker.handle(&item("storm-1")).await;
    assert!(first.is_retry(), "{first:?}");
    let signal = ledger
        .signal("storm-1")
        .await
        .unwrap()
        .expect("the signal is kept");
    // Graph fails from its first request (the user's record, the risk view): nothing is
    // settled and no case is opened on what could not be read.
    assert!(
        signal.disposition.is_none() && signal.case_id.is_none(),
        "not settled: {signal:?}"
    );
    assert!(
        ledger.cases(1).await.unwrap().is_empty(),
        "no case opened during the storm"
    );
    s.with(calm);
    let second = worker.handle(&item("storm-1")).await;
    assert!(matches!(second, Disposition::Done(_)), "{second:?}");
    let third = worker.handle(&item("storm-1")).await;
    assert!(matches!(third, Disposition::Done(_)), "{third:?}");
    assert_eq!(
        ledger.cases(5).await.unwrap()[0].status,
        CaseStatus::Completed
    );
    assert_eq!(revokes(&s), 1, "remediated exactly once");
    assert_eq!(resets(&s), 1, "one password reset");
    assert_no_secret(&logs.text(), &s);
}

#[tokio::test]
async fn graph_429_storm() {
    survive(
        |d| {
            d.faults.throttle_next = 1000;
            d.faults.retry_after = 0;
        },
        |d| d.faults.throttle_next = 0,
    )
    .await;
}

#[tokio::test]
async fn graph_503_storm() {
    survive(
        |d| d.faults.unavailable_next = 1000,
        |d| d.faults.unavailable_next = 0,
    )
    .await;
}

#[tokio::test]
async fn token_endpoint_down() {
    survive(
        |d| d.faults.token_down = true,
        |d| d.faults.token_down = false,
    )
    .await;
}

#[tokio::test]
async fn secrets_manager_unreachable_is_503_but_the_handshake_still_answers() {
    let (logs, _guard) = common::Logs::capture();
    let sdk = common::moto::unreachable_sdk_config().await;
    let store = Arc::new(SecretsManagerStore::<IngressSecrets>::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        "app",
        Duration::from_secs(60),
    ));
    // Start-up tolerates it being down only if the secrets were not needed; build state directly.
    let queue = Arc::new(MemoryQueue::default());
    let state = AppState {
        config: Arc::new(Config::default()),
        secrets: store,
        tokens: None,
        entra: None,
        intake: Intake::in_process(queue.clone()).unwrap(),
        activity: Default::default(),
        recorded_subscriptions: Default::default(),
    };
    let (status, _, _) = common::call(
        state.clone(),
        common::lambda_event("graph/users-updated.function-url.json"),
    )
    .await;
    assert_eq!(status, 503, "not kept: Graph must retry");
    let body = common::event_body("sentinel/alert-identity-protection.json");
    let headers = common::signed_headers(common::WEBHOOK_KEY, "msg_sm_down", &body);
    let (status, _, _) = common::call(state.clone(), common::post_sentinel(&body, &headers)).await;
    assert_eq!(status, 503);
    let (status, _, _) = common::call(
        state,
        common::lambda_event("graph/handshake.function-url.json"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(queue.drain().is_empty());
    assert!(logs.text().contains("secrets unavailable"));
}

#[tokio::test]
async fn six_megabyte_body_is_413() {
    let (state, queue) = common::app("http://127.0.0.1:9/keys").await;
    let mut event: serde_json::Value =
        serde_json::from_str(&common::event_body("graph/users-updated.function-url.json")).unwrap();
    let big = format!(r#"{{"value":[],"pad":"{}"}}"#, "x".repeat(6 * 1024 * 1024));
    event["body"] = big.into();
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let (status, _, body) = common::call(state, request).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than 1048576 bytes"));
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn concurrent_and_repeated_deliveries_remediate_once() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let ledger = memory_ledger();
    let workers: Vec<Worker> = (0..4).map(|_| worker(&s, ledger.clone())).collect();
    let it = item("dup-1");
    let results = futures_all(&workers, &it).await;
    assert!(results.iter().all(|d| !d.is_retry()), "{results:?}");
    for _ in 0..3 {
        assert!(matches!(workers[0].handle(&it).await, Disposition::Done(_)));
    }
    assert_eq!(revokes(&s), 1);
    assert_eq!(resets(&s), 1);
}

async fn futures_all(workers: &[Worker], it: &WorkItem) -> Vec<Disposition> {
    let (a, b, c, d) = tokio::join!(
        workers[0].handle(it),
        workers[1].handle(it),
        workers[2].handle(it),
        workers[3].handle(it)
    );
    vec![a, b, c, d]
}
