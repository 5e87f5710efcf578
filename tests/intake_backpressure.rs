//! Intake never waits for the work path: a full local queue and a ledger that cannot write in
//! time are both answered 503 (with Retry-After) before Graph's 3 s budget runs out, so Graph
//! delivers again, and what was refused is not half-kept.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{CLIENT_STATE, TENANT, app_with, call, post_json};
use risk_responder::config::Config;
use risk_responder::http::{AppState, Intake};
use risk_responder::ingress::secrets::IngressSecrets;
use risk_responder::ingress::signature::MemoryReplayGuard;
use risk_responder::ledger::Ledger;
use risk_responder::ledger::sqlite::SqliteStore;
use risk_responder::queue::MemoryQueue;
use risk_responder::vault::StaticSecretStore;

/// A batch of `n` basic `users` notifications with ids starting at `first`.
fn batch(first: usize, n: usize) -> String {
    let value: Vec<_> = (first..first + n)
        .map(|i| {
            serde_json::json!({
                "id": format!("bp-{i}"),
                "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
                "clientState": CLIENT_STATE, "changeType": "updated",
                "resource": format!("Users/6e7b768e-07e2-4810-8459-{i:012}"),
                "tenantId": TENANT,
                "resourceData": {"@odata.type": "#Microsoft.Graph.User", "id": format!("6e7b768e-07e2-4810-8459-{i:012}")}
            })
        })
        .collect();
    serde_json::json!({ "value": value }).to_string()
}

#[tokio::test]
async fn a_full_local_queue_is_503_at_once_and_nothing_of_the_refused_batch_is_kept() {
    let queue = Arc::new(MemoryQueue::with_capacity(10));
    let state = app_with(Config::default(), queue.clone()).await;
    let ledger = state.intake.ledger.clone();

    let (status, _, _) = call(
        state.clone(),
        post_json("/graph/notifications", batch(0, 8)),
    )
    .await;
    assert_eq!(status, 202);
    // 8 waiting, room for 2: a batch of 3 is refused whole.
    let started = Instant::now();
    let request = post_json("/graph/notifications", batch(100, 3));
    let response = tower::ServiceExt::oneshot(risk_responder::http::router(state.clone()), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("5")
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(queue.len(), 8);
    let kept = ledger.signals(100).await.unwrap();
    assert_eq!(
        kept.len(),
        8,
        "the refused batch left nothing in the ledger"
    );

    // The worker takes some: the same delivery, sent again, is now kept.
    assert_eq!(queue.next_batch(5).await.len(), 5);
    let (status, _, _) = call(state, post_json("/graph/notifications", batch(100, 3))).await;
    assert_eq!(status, 202);
    assert_eq!(queue.len(), 6);
    assert_eq!(ledger.signals(100).await.unwrap().len(), 11);
}

/// Batch writes that take far longer than Graph waits.
struct SlowBatchWrites;

#[async_trait]
impl common::hooked_store::StoreHooks for SlowBatchWrites {
    async fn before_create_all(&self, _items: &[risk_responder::ledger::NewItem]) {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

#[tokio::test]
async fn a_ledger_that_cannot_keep_in_time_is_503_within_the_answer_budget() {
    let mut config = Config::default();
    // The budget a batch has from its arrival (2.5 s by default; shortened for the test).
    config.jwks.wait = Duration::from_millis(300);
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake {
        ledger: Ledger::new(Arc::new(common::hooked_store::HookedStore::new(
            Arc::new(SqliteStore::in_memory().unwrap()),
            SlowBatchWrites,
        ))),
        queue: queue.clone(),
        replay_guard: Arc::new(MemoryReplayGuard::default()),
    };
    let secrets = Arc::new(StaticSecretStore::<IngressSecrets>::embedded_dev().unwrap());
    let state = common::with_fixture_subscriptions(AppState::new(
        config,
        secrets,
        intake,
        reqwest::Client::new(),
    ));
    let started = Instant::now();
    let (status, _, body) = call(state, post_json("/graph/notifications", batch(0, 5))).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        queue.is_empty(),
        "nothing queued that the ledger did not keep"
    );
}

/// A secrets store as slow as Secrets Manager on a bad cold start.
struct SlowSecrets;

#[async_trait]
impl risk_responder::vault::SecretStore<IngressSecrets> for SlowSecrets {
    async fn load(
        &self,
    ) -> Result<Arc<IngressSecrets>, risk_responder::support::secret::SecretsError> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Err(risk_responder::support::secret::SecretsError::Invalid(
            "never".into(),
        ))
    }
}

#[tokio::test]
async fn secrets_that_cannot_be_read_in_time_are_503_within_the_answer_budget() {
    let mut config = Config::default();
    config.jwks.wait = Duration::from_millis(300);
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    let state = AppState::new(
        config,
        Arc::new(SlowSecrets),
        intake,
        reqwest::Client::new(),
    );
    let started = Instant::now();
    let (status, _, _) = call(state, post_json("/graph/notifications", batch(0, 1))).await;
    assert_eq!(status, 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(queue.is_empty());
}

/// Records whether the server counted itself busy while intake wrote its batch.
struct SeesActivity {
    activity: risk_responder::http::IntakeActivity,
    busy_during_write: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl common::hooked_store::StoreHooks for SeesActivity {
    async fn before_create_all(&self, _items: &[risk_responder::ledger::NewItem]) {
        self.busy_during_write
            .store(self.activity.busy(), std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_request_in_flight_makes_the_server_busy_for_the_work_that_yields_to_it() {
    let activity = risk_responder::http::IntakeActivity::default();
    let busy_during_write = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake {
        ledger: Ledger::new(Arc::new(common::hooked_store::HookedStore::new(
            Arc::new(SqliteStore::in_memory().unwrap()),
            SeesActivity {
                activity: activity.clone(),
                busy_during_write: busy_during_write.clone(),
            },
        ))),
        queue: queue.clone(),
        replay_guard: Arc::new(MemoryReplayGuard::default()),
    };
    let secrets = Arc::new(StaticSecretStore::<IngressSecrets>::embedded_dev().unwrap());
    let mut state = common::with_fixture_subscriptions(AppState::new(
        Config::default(),
        secrets,
        intake,
        reqwest::Client::new(),
    ));
    state.activity = activity.clone();
    assert!(!activity.busy());
    let (status, _, body) = call(state, post_json("/graph/notifications", batch(0, 3))).await;
    assert_eq!(status, 202, "{body}");
    assert!(
        busy_during_write.load(std::sync::atomic::Ordering::SeqCst),
        "the request counted while it was answered"
    );
    assert!(!activity.busy(), "and no longer once answered");
    assert_eq!(queue.len(), 3);
}
