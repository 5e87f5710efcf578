//! The durable pipeline on moto (DynamoDB, SQS) and the Graph stand-in: intake, worker with
//! partial batch failures, idempotency under redelivery and concurrency, DLQ, subscriptions.

mod common;
mod graph_standin;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use common::moto;
use graph_standin::*;
use reqwest::Method;
use risk_responder::cases::CaseStatus;
use risk_responder::config::Config;
use risk_responder::graph::GraphClient;
use risk_responder::http::{AppState, Intake, router};
use risk_responder::ingress::graph::{LifecycleKind, LifecycleNotice};
use risk_responder::ingress::secrets::IngressSecrets;
use risk_responder::ingress::signature::ReplayGuard;
use risk_responder::ledger::Ledger;
use risk_responder::ledger::dynamodb::DynamoStore;
use risk_responder::queue::{SqsQueue, WorkItem};
use risk_responder::respond::subscriptions::{ResourceSpec, SubscriptionManager};
use risk_responder::respond::{Disposition, Worker};
use risk_responder::support::secret::SecretString;
use risk_responder::vault::StaticSecretStore;

fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn table() -> DynamoStore {
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config().await);
    let store = DynamoStore::new(client, unique("ledger"));
    store.create_table().await.unwrap();
    store
}

async fn ddb_ledger() -> Ledger {
    Ledger::new(Arc::new(table().await))
}

async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&moto::sdk_config().await)
}

async fn queue(client: &aws_sdk_sqs::Client) -> String {
    client
        .create_queue()
        .queue_name(unique("work"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

fn graph(s: &StandIn) -> Arc<GraphClient> {
    s.secret_client(2)
}

fn worker(s: &StandIn, ledger: Ledger) -> Worker {
    enforcing_worker(s, ledger, 2)
}

async fn webhook(intake: Intake) -> AppState {
    let secrets = Arc::new(StaticSecretStore::<IngressSecrets>::embedded_dev().unwrap());
    common::with_fixture_subscriptions(AppState::new(
        Config::default(),
        secrets,
        intake,
        reqwest::Client::new(),
    ))
}

/// Receives everything on the queue as a Lambda SqsEvent (messages stay until deleted).
async fn receive(client: &aws_sdk_sqs::Client, url: &str) -> SqsEvent {
    let out = client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let mut event = SqsEvent::default();
    for m in out.messages() {
        let mut message = SqsMessage::default();
        message.message_id = m.message_id().map(str::to_owned);
        message.receipt_handle = m.receipt_handle().map(str::to_owned);
        message.body = m.body().map(str::to_owned);
        event.records.push(message);
    }
    event
}

fn sqs_event(bodies: &[(&str, String)]) -> SqsEvent {
    let mut event = SqsEvent::default();
    for (id, body) in bodies {
        let mut message = SqsMessage::default();
        message.message_id = Some((*id).to_owned());
        message.body = Some(body.clone());
        event.records.push(message);
    }
    event
}

fn risk_item(event_id: &str) -> WorkItem {
    adele_item(event_id)
}

#[tokio::test]
async fn dynamodb_store_meets_the_contract() {
    let store = table().await;
    risk_responder::ledger::contract::run(&store, "contract#").await;
}

#[tokio::test]
async fn dynamodb_replay_guard_refuses_a_second_delivery_until_forgotten() {
    let ledger = table().await;
    assert!(
        ledger
            .first_seen("msg_1", Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert!(
        !ledger
            .first_seen("msg_1", Duration::from_secs(600))
            .await
            .unwrap()
    );
    ledger.forget("msg_1").await;
    assert!(
        ledger
            .first_seen("msg_1", Duration::from_secs(600))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn webhook_to_sqs_to_worker_remediates_once_however_often_delivered() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let store = Arc::new(table().await);
    let ledger = Ledger::new(store.clone());
    let client = sqs().await;
    let url = queue(&client).await;
    let intake = Intake {
        ledger: ledger.clone(),
        queue: Arc::new(SqsQueue::new(client.clone(), url.clone())),
        replay_guard: store.clone(),
    };
    let state = webhook(intake).await;

    // Graph delivers the same notification twice (at-least-once).
    for _ in 0..2 {
        let (status, _, body) = common::call(
            state.clone(),
            common::lambda_event("graph/users-updated.function-url.json"),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    let listed = ledger.signals(10).await.unwrap();
    assert_eq!(listed.len(), 1, "one signal recorded");
    assert!(listed[0].case_id.is_none(), "not processed yet");

    let batch = receive(&client, &url).await;
    assert_eq!(batch.records.len(), 2, "both deliveries were queued");
    let worker = worker(&s, ledger.clone());
    let response = worker.handle_sqs(batch.clone()).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(revokes(&s), 1, "remediated once");

    // SQS redelivers the whole batch: nothing happens again.
    let response = worker.handle_sqs(batch).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(revokes(&s), 1);
    let cases = ledger.cases(10).await.unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].status, CaseStatus::Completed);
    assert!(cases[0].findings.is_some());
    let signal = &ledger.signals(10).await.unwrap()[0];
    assert_eq!(signal.case_id.as_deref(), Some(cases[0].case_id.as_str()));
}

#[tokio::test]
async fn concurrent_workers_remediate_once() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let ledger = ddb_ledger().await;
    let a = worker(&s, ledger.clone());
    let b = worker(&s, ledger.clone());
    let item = risk_item("concurrent-1");
    let other = risk_item("concurrent-2");
    let (x, y) = tokio::join!(a.handle(&item), b.handle(&other));
    let outcomes = [x, y];
    assert!(outcomes.iter().all(|d| !d.is_retry()), "{outcomes:?}");
    assert_eq!(revokes(&s), 1, "{outcomes:?}");
    assert_eq!(resets(&s), 1, "{outcomes:?}");
    assert_eq!(ledger.cases(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn partial_batch_failure_reports_only_the_failed_messages() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let ledger = ddb_ledger().await;
    let worker = worker(&s, ledger.clone());
    let good = serde_json::to_string(&risk_item("batch-good")).unwrap();
    let event = sqs_event(&[("m-good", good), ("m-garbage", "{not json".into())]);
    let response = worker.handle_sqs(event).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["m-garbage"]);
    assert_eq!(revokes(&s), 1);
}

/// The worker re-checks the tenant allow-list on every message (the queue may hold work of
/// another configuration, or a message put there by hand): work for a tenant not allowed is
/// settled, not retried, without a Graph call or a case.
#[tokio::test]
async fn work_for_a_tenant_not_allowed_is_settled_without_graph_or_a_case() {
    let (logs, _guard) = common::Logs::capture();
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let ledger = ddb_ledger().await;
    let worker = worker(&s, ledger.clone());
    let other = "f00dfeed-0000-4000-8000-000000000bad";
    let mut signal = risk_item("foreign-1");
    if let WorkItem::Risk(event) = &mut signal {
        event.tenant_id = other.into();
    }
    let lifecycle = WorkItem::Lifecycle(LifecycleNotice {
        tenant_id: other.into(),
        subscription_id: "sub-foreign".into(),
        kind: LifecycleKind::ReauthorizationRequired,
    });
    let resume = WorkItem::Resume {
        tenant_id: other.to_ascii_uppercase(),
        case_id: "c-foreign".into(),
    };
    let event = sqs_event(&[
        ("m-signal", serde_json::to_string(&signal).unwrap()),
        ("m-lifecycle", serde_json::to_string(&lifecycle).unwrap()),
        ("m-resume", serde_json::to_string(&resume).unwrap()),
    ]);
    let response = worker.handle_sqs(event).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "settled, not retried: {response:?}"
    );
    let (calls, tokens) = s.with(|d| (d.calls.clone(), d.token_requests));
    assert!(calls.is_empty(), "no Graph call: {calls:?}");
    assert_eq!(tokens, 0, "no token requested for the tenant");
    assert!(ledger.cases(10).await.unwrap().is_empty(), "no case");
    assert!(ledger.signals(10).await.unwrap().is_empty(), "nothing kept");
    let text = logs.text();
    assert_eq!(
        text.matches("work item for a tenant that is not allowed: dropped")
            .count(),
        3,
        "{text}"
    );

    // The same worker still works its own tenant's signal.
    let own = serde_json::to_string(&risk_item("own-1")).unwrap();
    let response = worker.handle_sqs(sqs_event(&[("m-own", own)])).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(revokes(&s), 1);
}

#[tokio::test]
async fn transient_failure_is_retried_without_repeating_completed_actions() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let ledger = ddb_ledger().await;
    let worker = worker(&s, ledger.clone());
    // Graph is down for the password delivery step only.
    s.with(|d| {
        d.faults
            .unavailable_paths
            .push((Method::POST, "/users/risk-responder".into()))
    });
    let body = serde_json::to_string(&risk_item("flaky-1")).unwrap();
    let response = worker.handle_sqs(sqs_event(&[("m-1", body.clone())])).await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "left for SQS to retry"
    );
    assert_eq!(ledger.cases(10).await.unwrap()[0].status, CaseStatus::Retry);
    assert_eq!(revokes(&s), 1);

    s.with(|d| d.faults.unavailable_paths.clear());
    let response = worker.handle_sqs(sqs_event(&[("m-1", body)])).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        revokes(&s),
        1,
        "revoke was done in the first attempt and not repeated"
    );
    let patches = s.writes().iter().filter(|c| c.starts_with("PATCH")).count();
    // Block and the password in one PATCH; the password is set before its mail and kept
    // sealed, so the failed mail's retry mails that same password: no second PATCH.
    assert_eq!(patches, 1, "block with the password, once");
    let bodies: Vec<Vec<String>> = s.with(|d| {
        d.user_patches
            .iter()
            .map(|(_, properties)| properties.clone())
            .collect()
    });
    assert_eq!(
        bodies,
        [vec![
            "accountEnabled".to_owned(),
            "passwordProfile".to_owned()
        ]]
    );
    assert_eq!(
        s.with(|d| d
            .mails
            .iter()
            .filter(|(_, m)| m.to_string().contains("Temporary password"))
            .count()),
        1,
        "one password mail, after the retry"
    );
    let case = &ledger.cases(10).await.unwrap()[0];
    assert_eq!(case.status, CaseStatus::Completed);
    assert_eq!(
        case.attempts, 0,
        "only failed runs in a row count, and the last one succeeded"
    );
}

#[tokio::test]
async fn messages_that_keep_failing_reach_the_dlq() {
    let client = sqs().await;
    let dlq = queue(&client).await;
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let main = client
        .create_queue()
        .queue_name(unique("work"))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"3"}}"#),
        )
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    client
        .send_message()
        .queue_url(&main)
        .message_body("{not json")
        .send()
        .await
        .unwrap();

    let s = start().await;
    let worker = worker(&s, ddb_ledger().await);
    for _ in 0..3 {
        let batch = receive(&client, &main).await;
        let response = worker.handle_sqs(batch).await;
        assert_eq!(response.batch_item_failures.len(), 1);
    }
    assert!(receive(&client, &main).await.records.is_empty());
    let dead = receive(&client, &dlq).await;
    assert_eq!(
        dead.records.len(),
        1,
        "poison message kept in the DLQ, not lost"
    );
    assert_eq!(dead.records[0].body.as_deref(), Some("{not json"));
}

#[tokio::test]
async fn sqs_failure_is_503_and_the_sentinel_retry_is_let_through() {
    let store = Arc::new(table().await);
    let client = sqs().await;
    let intake = Intake {
        ledger: Ledger::new(store.clone()),
        queue: Arc::new(SqsQueue::new(
            client,
            format!("{}/123456789012/absent", moto::endpoint()),
        )),
        replay_guard: store,
    };
    let state = webhook(intake).await;
    let (status, _, _) = common::call(
        state.clone(),
        common::lambda_event("graph/users-updated.function-url.json"),
    )
    .await;
    assert_eq!(status, 503);

    let body = common::event_body("sentinel/alert-identity-protection.json");
    let headers = common::signed_headers(common::WEBHOOK_KEY, "msg_sqs_down", &body);
    let (first, _, _) = common::call(state.clone(), common::post_sentinel(&body, &headers)).await;
    let (second, _, _) = common::call(state, common::post_sentinel(&body, &headers)).await;
    assert_eq!((first, second), (503, 503), "not refused as a replay");
}

#[tokio::test]
async fn ledger_unavailable_is_503() {
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config().await);
    let store = Arc::new(DynamoStore::new(client, "no-such-table"));
    let intake = Intake {
        ledger: Ledger::new(store.clone()),
        queue: Arc::new(risk_responder::queue::MemoryQueue::default()),
        replay_guard: store,
    };
    let (status, _, _) = common::call(
        webhook(intake).await,
        common::lambda_event("graph/users-updated.function-url.json"),
    )
    .await;
    assert_eq!(status, 503);
}

async fn serve_webhook() -> String {
    let state = webhook(
        Intake::in_process(Arc::new(risk_responder::queue::MemoryQueue::default())).unwrap(),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    format!("http://{addr}")
}

fn manager(s: &StandIn, base: &str) -> SubscriptionManager {
    SubscriptionManager {
        graph: graph(s),
        notification_url: format!("{base}/graph/notifications"),
        lifecycle_url: format!("{base}/graph/lifecycle"),
        client_state: SecretString::new(common::CLIENT_STATE),
        resources: vec![ResourceSpec::users()],
        ledger: None,
    }
}

#[tokio::test]
async fn subscriptions_are_created_through_the_handshake_listed_and_renewed() {
    let s = start().await;
    let base = serve_webhook().await;
    let manager = manager(&s, &base);
    let created = manager.ensure(TENANT).await.unwrap();
    assert_eq!(created.len(), 1, "users only: security/alerts is retired");
    assert_eq!(created[0].resource, "users");
    assert!(
        manager.ensure(TENANT).await.unwrap().is_empty(),
        "idempotent"
    );
    assert_eq!(manager.list(TENANT).await.unwrap().len(), 1);

    // Nothing expires within a day; everything expires within 40 days.
    assert_eq!(
        manager
            .renew(TENANT, Duration::from_secs(24 * 3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        manager
            .renew(TENANT, Duration::from_secs(40 * 24 * 3600))
            .await
            .unwrap(),
        1
    );

    // An endpoint that fails the handshake cannot be subscribed.
    let bad = SubscriptionManager {
        notification_url: "http://127.0.0.1:9/graph/notifications".into(),
        ..manager
    };
    let err = bad.ensure(TENANT).await.unwrap_err();
    assert!(err.to_string().contains("ValidationError"), "{err}");
}

#[tokio::test]
async fn reauthorization_required_is_handled_by_reauthorizing() {
    let s = start().await;
    let base = serve_webhook().await;
    let manager = Arc::new(manager(&s, &base));
    let id = manager.ensure(TENANT).await.unwrap()[0].id.clone();
    let mut worker = worker(&s, memory_ledger());
    let item = WorkItem::Lifecycle(LifecycleNotice {
        tenant_id: TENANT.into(),
        subscription_id: id.clone(),
        kind: LifecycleKind::ReauthorizationRequired,
    });
    // Without a subscription manager the notice is kept (it needs an operator), not dropped.
    assert!(worker.handle(&item).await.is_retry());
    worker.subscriptions = Some(manager);
    assert!(matches!(worker.handle(&item).await, Disposition::Done(_)));
    assert_eq!(s.with(|d| d.reauthorized.clone()), [id]);
}

#[tokio::test]
async fn audit_lists_signals_and_case_steps_from_the_ledger_file() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let path = std::env::temp_dir().join(format!("{}.sqlite", unique("audit")));
    let ledger = Ledger::new(Arc::new(
        risk_responder::ledger::sqlite::SqliteStore::open(&path).unwrap(),
    ));
    worker(&s, ledger).handle(&risk_item("audited-1")).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .arg("audit")
        .env("RR_LEDGER_PATH", &path)
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("signal audited-1"), "{out}");
    assert!(out.contains("opened case"), "{out}");
    assert!(
        out.contains("planned by rule \"high risk, sign-ins already blocked: contain\""),
        "{out}"
    );
    assert!(out.contains("revoke_sessions done"), "{out}");
    assert!(out.contains("status completed"), "{out}");
    std::fs::remove_file(path).ok();
}

#[tokio::test]
async fn every_worker_log_line_names_the_event_and_tenant() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let (logs, _guard) = common::Logs::capture();
    worker(&s, memory_ledger())
        .handle(&risk_item("logged-1"))
        .await;
    let text = logs.text();
    // Our lines (the stand-in's server and the HTTP client log under their own targets).
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| {
            v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("risk_responder"))
        })
        .collect();
    assert!(lines.len() >= 5, "{text}");
    for value in lines {
        let line = value.to_string();
        let tenant = value["span"]["tenant_id"]
            .as_str()
            .or_else(|| value["fields"]["tenant_id"].as_str())
            .or_else(|| {
                value["spans"]
                    .as_array()
                    .and_then(|spans| spans.iter().find_map(|sp| sp["tenant_id"].as_str()))
            });
        assert_eq!(tenant, Some(TENANT), "{line}");
        // Lines about one signal or case name it; tenant-wide ones (the risk view) need not.
        let about_work =
            line.contains("signal") || line.contains("case") || line.contains("remediation");
        if about_work {
            let names_work = line.contains("logged-1") || line.contains("\"case_id\"");
            assert!(names_work, "names neither the signal nor the case: {line}");
        }
    }
    let password = s.with(|d| {
        d.users.iter().find(|u| u["id"] == ADELE).unwrap()["passwordProfile"]["password"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    assert!(!text.contains(&password));
}

#[tokio::test]
async fn missing_permission_keeps_the_event_for_retry_and_then_finishes_the_plan() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let ledger = ddb_ledger().await;
    let worker = worker(&s, ledger.clone());
    s.with(|d| {
        d.faults.forbidden.push((
            Method::POST,
            "/identityProtection/riskyUsers/confirmCompromised".into(),
        ))
    });
    let body = serde_json::to_string(&risk_item("forbidden-1")).unwrap();
    let response = worker.handle_sqs(sqs_event(&[("m-1", body.clone())])).await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "kept on the queue (then the DLQ), not closed"
    );
    assert_eq!(
        ledger.cases(10).await.unwrap()[0].status,
        CaseStatus::NeedsOperator
    );

    // The operator grants the permission; the redelivery finishes without repeating actions.
    s.with(|d| d.faults.forbidden.clear());
    let response = worker.handle_sqs(sqs_event(&[("m-1", body)])).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(revokes(&s), 1);
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "confirmedCompromised"
    );
    assert_eq!(
        ledger.cases(10).await.unwrap()[0].status,
        CaseStatus::Completed
    );
}

/// The write-ahead claims on DynamoDB: the reset cooldown, a sealed password beside its case
/// and the subscriptions' tenants are conditional writes there too.
#[tokio::test]
async fn dynamodb_keeps_the_new_claims_conditional() {
    use risk_responder::ledger::ResetClaim;
    const USER: &str = "6e7b768e-07e2-4810-8459-485f84f8f204";
    let ledger = ddb_ledger().await;
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::hours(24);
    // Two cases of one user claim the reset at once: exactly one is granted.
    let (a, b) = tokio::join!(
        ledger.claim_reset(TENANT, USER, "c-a", day, false, now),
        ledger.claim_reset(TENANT, USER, "c-b", day, false, now),
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let granted: Vec<usize> = (0..2)
        .filter(|&i| outcomes[i] == ResetClaim::Granted)
        .collect();
    assert_eq!(granted.len(), 1, "{outcomes:?}");
    let (winner, loser) = if granted[0] == 0 {
        ("c-a", &outcomes[1])
    } else {
        ("c-b", &outcomes[0])
    };
    assert!(
        matches!(loser, ResetClaim::Held { by_case, .. } if by_case == winner),
        "{loser:?}"
    );
    // The winner's own retry is not held by its own reset; a person's approval overrides.
    assert_eq!(
        ledger
            .claim_reset(TENANT, USER, winner, day, false, now)
            .await
            .unwrap(),
        ResetClaim::Granted
    );
    assert_eq!(
        ledger
            .claim_reset(TENANT, USER, "c-later", day, true, now)
            .await
            .unwrap(),
        ResetClaim::Granted
    );

    // A sealed password beside its case: kept, replaced by a retry, forgotten once delivered.
    assert_eq!(ledger.sealed_intent("c-a", 2).await.unwrap(), None);
    ledger
        .keep_sealed_intent("c-a", 2, "sealed-1")
        .await
        .unwrap();
    ledger
        .keep_sealed_intent("c-a", 2, "sealed-2")
        .await
        .unwrap();
    assert_eq!(
        ledger.sealed_intent("c-a", 2).await.unwrap().as_deref(),
        Some("sealed-2")
    );
    ledger.forget_sealed_intent("c-a", 2).await.unwrap();
    assert_eq!(ledger.sealed_intent("c-a", 2).await.unwrap(), None);

    // A subscription is recorded in the tenant it was created in, and only there.
    const OTHER: &str = "2c1d8d6e-5a4b-4c3d-9e8f-7a6b5c4d3e2f";
    let sub = "7f105c7d-2dc5-4e8a-9c2b-1f7a0e8f4b11";
    ledger.record_subscriptions(TENANT, &[sub]).await.unwrap();
    ledger.record_subscriptions(TENANT, &[sub]).await.unwrap();
    let asked = [
        (TENANT.to_owned(), sub.to_owned()),
        (OTHER.to_owned(), sub.to_owned()),
    ];
    let recorded = ledger.recorded_subscriptions(&asked).await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert!(recorded.contains(&asked[0]));
}

/// Fair queues: every message names its group (the tenant, or the tenant's `/directory`
/// group for `users` notifications), and a watchdog is delivered only after its delay.
#[tokio::test]
async fn sqs_messages_carry_their_group_and_a_watchdog_waits_its_delay() {
    use risk_responder::event::EventSource;
    use risk_responder::queue::WorkQueue;
    let client = sqs().await;
    let url = queue(&client).await;
    let queue = SqsQueue::new(client.clone(), url.clone());
    let alert = risk_item("grouped-alert");
    let WorkItem::Risk(mut event) = risk_item("grouped-user") else {
        unreachable!()
    };
    event.source = EventSource::GraphUser;
    let directory = WorkItem::Risk(event);
    queue.send(&[alert, directory]).await.unwrap();
    let resume = WorkItem::Resume {
        tenant_id: TENANT.into(),
        case_id: "c-watched".into(),
    };
    queue
        .send_later(&[resume], Duration::from_secs(660))
        .await
        .unwrap();
    let out = client
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId,
        )
        .send()
        .await
        .unwrap();
    let mut groups: Vec<(String, String)> = out
        .messages()
        .iter()
        .map(|m| {
            let item: WorkItem = serde_json::from_str(m.body().unwrap()).unwrap();
            let id = match item {
                WorkItem::Risk(e) => e.event_id,
                other => panic!("the watchdog came before its delay: {other:?}"),
            };
            let group = m
                .attributes()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
                })
                .cloned()
                .unwrap_or_default();
            (id, group)
        })
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            ("grouped-alert".to_owned(), TENANT.to_owned()),
            ("grouped-user".to_owned(), format!("{TENANT}/directory")),
        ]
    );
    let delayed = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .unwrap();
    assert_eq!(
        delayed
            .attributes()
            .and_then(|a| a
                .get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed))
            .map(String::as_str),
        Some("1")
    );
}
