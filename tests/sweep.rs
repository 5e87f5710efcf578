//! Issue 10: the sweep, coalesced investigation from the tenant's risk view, bulk actions, and
//! the rate limiter, against a Graph simulator that enforces the published throttle limits.

mod common;
mod graph_standin;

use std::sync::Arc;
use std::time::Duration;

use graph_standin::*;
use reqwest::Method;
use risk_responder::cases::CaseStatus;
use risk_responder::event::{EventSource, RiskEvent, RiskLevel, Subject};
use risk_responder::http::Intake;
use risk_responder::ledger::Ledger;
use risk_responder::queue::{MemoryQueue, WorkItem};
use risk_responder::respond::sweep::Sweeper;
use serde_json::json;

/// `t` as Graph writes times (RFC 3339).
fn iso(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn user_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// `n` users; the first `at_risk` of them at risk (medium), each with one 53011 sign-in.
fn population(s: &StandIn, n: usize, at_risk: usize) {
    let now = time::OffsetDateTime::now_utc();
    s.with(|d| {
        d.page_size = 1000;
        for i in 0..n {
            let id = user_id(i);
            let upn = format!("user{i}@contoso.onmicrosoft.com");
            d.users.push(json!({"id": id, "userPrincipalName": upn, "accountEnabled": true}));
            if i < at_risk {
                d.risky_users.insert(id.clone(), json!({"id": id, "userPrincipalName": upn,
                    "riskLevel": "medium", "riskState": "atRisk", "riskDetail": "none",
                    "riskLastUpdatedDateTime": iso(now - time::Duration::minutes(2))}));
                d.sign_ins.push(json!({"id": format!("si-{i}"), "createdDateTime": iso(now - time::Duration::minutes(1)),
                    "userId": id, "userPrincipalName": upn, "appDisplayName": "Office 365 Exchange Online",
                    "ipAddress": "203.0.113.77", "clientAppUsed": "Browser",
                    "status": {"errorCode": 53011, "failureReason": "User blocked due to risk on home tenant."}}));
            }
        }
        // Dismissed long ago: listed by a full listing, never a signal.
        d.risky_users.insert(user_id(n + 1), json!({"id": user_id(n + 1), "riskLevel": "none",
            "riskState": "dismissed", "riskLastUpdatedDateTime": "2026-01-01T00:00:00Z"}));
    });
}

fn alert(i: usize) -> WorkItem {
    WorkItem::Risk(RiskEvent {
        event_id: format!("alert-{i}"),
        tenant_id: TENANT.into(),
        source: EventSource::Sentinel,
        subject: Subject::User {
            id: Some(user_id(i)),
            upn: None,
        },
        risk_level: RiskLevel::Medium,
        detected_at: time::OffsetDateTime::now_utc(),
        source_id: format!("alert-{i}"),
        resource_data: None,
        origin: None,
    })
}

fn users_notification(i: usize, n: usize) -> WorkItem {
    WorkItem::Risk(RiskEvent {
        event_id: format!("notification-{i}-{n}"),
        tenant_id: TENANT.into(),
        source: EventSource::GraphUser,
        subject: Subject::User {
            id: Some(user_id(i)),
            upn: None,
        },
        risk_level: RiskLevel::Unknown,
        detected_at: time::OffsetDateTime::now_utc(),
        source_id: "sub:Users".into(),
        resource_data: None,
        origin: None,
    })
}

fn no_manager_policy() -> risk_responder::cases::Policy {
    let mut policy = policy(risk_responder::cases::Mode::Enforce);
    if let Some(risk_responder::cases::policy::PasswordDelivery::Mail { to_manager, .. }) =
        policy.password_delivery.as_mut()
    {
        *to_manager = false;
    }
    policy.safety.max_enforced_cases_per_hour = 1000;
    policy
}

fn ip_requests(s: &StandIn) -> usize {
    s.with(|d| {
        d.admitted
            .get(&Budget::IdentityProtection)
            .copied()
            .unwrap_or(0)
    })
}

fn throttled(s: &StandIn) -> usize {
    s.with(|d| d.throttled.values().sum())
}

fn sweeper<'a>(graph: &'a risk_responder::graph::GraphClient, intake: &'a Intake) -> Sweeper<'a> {
    Sweeper {
        graph,
        ledger: &intake.ledger,
        intake,
        first_lookback: time::Duration::hours(24),
    }
}

#[tokio::test]
async fn the_sweep_turns_risky_users_and_53011_sign_ins_into_kept_signals() {
    let s = start().await;
    population(&s, 30, 12);
    s.with(|d| d.page_size = 5); // pages, followed with @odata.nextLink
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    let graph = s.secret_client(3);
    let report = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert_eq!(report.records_listed, 12, "changed within the look-back");
    assert_eq!(report.users_at_risk, 12);
    assert_eq!(report.blocked_sign_ins, 12);
    assert_eq!(
        report.signals.len(),
        24,
        "a risk signal and a sign-in signal per user"
    );
    let queued = common::risk_events(&queue);
    assert_eq!(queued.len(), 24);
    assert!(queued.iter().all(|e| e.source == EventSource::Sweep));
    assert_eq!(intake.ledger.signals(100).await.unwrap().len(), 24);
    // The filters are the administrator's: error code 53011 and a date window; risk by date.
    let calls: Vec<String> = s.with(|d| d.calls.iter().map(|(c, _)| c.clone()).collect());
    assert!(calls.iter().any(
        |c| c.starts_with("GET /v1.0/identityProtection/riskyUsers?")
            && c.contains("riskLastUpdatedDateTime%20ge%20")
    ));
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("GET /v1.0/auditLogs/signIns?")
                && c.contains("status%2FerrorCode%20eq%2053011%20and%20createdDateTime%20ge%20"))
    );
    assert!(
        calls.iter().filter(|c| c.contains("skiptoken")).count() >= 4,
        "paged"
    );

    // The next run starts from the watermarks, reaching back 5 minutes: the same records are
    // listed again, and the same signals are kept only once.
    let again = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert!(again.risk_since > report.risk_since);
    assert_eq!(again.signals.len(), 24, "overlap: listed again");
    assert_eq!(
        intake.ledger.signals(100).await.unwrap().len(),
        24,
        "kept once"
    );
    assert_eq!(
        throttled(&s),
        0,
        "no 429: {:?}",
        s.with(|d| d.throttled.clone())
    );
}

#[tokio::test]
async fn watermarks_move_only_after_the_signals_are_kept() {
    let s = start().await;
    population(&s, 5, 3);
    let graph = s.secret_client(3);
    let failing = Intake::in_process(Arc::new(common::FailingQueue)).unwrap();
    let err = sweeper(&graph, &failing)
        .run(TENANT, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("could not be kept"), "{err}");
    let (state, _) = sweeper(&graph, &failing).state(TENANT).await.unwrap();
    assert!(state.risk_watermark.is_none() && state.sign_in_watermark.is_none());
}

#[tokio::test]
async fn with_no_webhook_at_all_the_sweep_gets_users_remediated() {
    let s = start().await;
    population(&s, 10, 3);
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    let worker = worker_with(&s, intake.ledger.clone(), no_manager_policy(), 3);
    sweeper(&worker.graph, &intake)
        .run(TENANT, None)
        .await
        .unwrap();
    let items = queue.drain();
    let dispositions = worker.handle_batch(&items).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    let cases = intake.ledger.cases(100).await.unwrap();
    assert_eq!(cases.len(), 3, "one case per user, both signals merged");
    assert!(
        cases
            .iter()
            .all(|c| c.status == CaseStatus::Completed && c.signals.count == 2)
    );
    assert_eq!(resets(&s), 3);
    assert_eq!(throttled(&s), 0);
}

#[tokio::test]
async fn a_burst_is_investigated_and_remediated_in_bulk() {
    let s = start().await;
    population(&s, 70, 70);
    let ledger = memory_ledger();
    let worker = worker_with(&s, ledger.clone(), no_manager_policy(), 3);
    let items: Vec<WorkItem> = (0..70).map(alert).collect();
    let dispositions = worker.handle_batch(&items).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    assert_eq!(resets(&s), 70);
    let calls: Vec<String> = s.with(|d| d.calls.iter().map(|(c, _)| c.clone()).collect());
    let count = |prefix: &str| calls.iter().filter(|c| c.starts_with(prefix)).count();
    // One listing of the tenant's risk, not 70 reads.
    assert_eq!(
        count("GET /v1.0/identityProtection/riskyUsers"),
        1,
        "{calls:#?}"
    );
    // One sign-in query for the group.
    assert_eq!(count("GET /v1.0/auditLogs/signIns"), 1);
    let http = s.with(|d| d.http_requests);
    assert!(http <= 70 * 4 / 3, "{http} HTTP requests for 70 users");
    assert!(count("POST /v1.0/$batch") >= 1);
    assert_eq!(throttled(&s), 0, "{:?}", s.with(|d| d.throttled.clone()));
    // Users are read 15 to a request, protection once for the tenant: no per-user read of
    // either. What is left per user is what the plan does to each (revoke, block, reset, the
    // password mail, the SOC mail), counting every $batch member as Microsoft counts it.
    assert_eq!(count("GET /v1.0/users?"), 5, "70 users at 15 a request");
    assert!(calls.iter().all(|c| !c.contains("transitiveMemberOf")));
    let operations: usize = s.with(|d| d.admitted.values().sum());
    let per_user = operations as f64 / 70.0;
    eprintln!("{operations} Graph operations for 70 users: {per_user:.2} a user");
    // Medium risk: revoke, reset, the password mail and the SOC mail (4 a user), plus the
    // shared reads.
    assert!(per_user <= 4.25, "{per_user:.2} operations a user");
}

#[tokio::test]
async fn risk_actions_take_many_users_per_request() {
    let s = start().await;
    population(&s, 70, 70);
    let ledger = memory_ledger();
    let policy = risk_responder::cases::Policy::from_toml(
        r#"mode = "enforce"
[[rules]]
name = "confirm"
min_risk_level = "low"
actions = ["confirm_compromised"]
[safety]
max_enforced_cases_per_hour = 1000"#,
    )
    .unwrap();
    let worker = worker_with(&s, ledger, policy, 3);
    let items: Vec<WorkItem> = (0..70).map(alert).collect();
    let dispositions = worker.handle_batch(&items).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    let confirms = s.with(|d| {
        d.calls
            .iter()
            .filter(|(c, _)| c.contains("riskyUsers/confirmCompromised"))
            .count()
    });
    assert_eq!(confirms, 2, "70 users at up to 60 per request");
    let confirmed = s.with(|d| {
        d.risky_users
            .values()
            .filter(|r| r["riskState"] == "confirmedCompromised")
            .count()
    });
    assert_eq!(confirmed, 70);
}

#[tokio::test]
async fn users_notifications_are_answered_from_the_view() {
    let s = start().await;
    population(&s, 300, 2);
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    let worker = worker_with(&s, intake.ledger.clone(), no_manager_policy(), 3);
    // A full listing seeds the view (as the first bulk read does).
    risk_responder::respond::view::RiskView {
        graph: &worker.graph,
        ledger: &intake.ledger,
    }
    .refresh(TENANT)
    .await
    .unwrap();
    let before = ip_requests(&s);
    // An HR sync touches 300 users, twice.
    let items: Vec<WorkItem> = (0..300)
        .flat_map(|i| [users_notification(i, 0), users_notification(i, 1)])
        .collect();
    for chunk in items.chunks(100) {
        let dispositions = worker.handle_batch(chunk).await;
        assert!(dispositions.iter().all(|d| !d.is_retry()));
    }
    assert_eq!(
        ip_requests(&s) - before,
        0,
        "600 notifications: no Identity Protection request"
    );
    let cases = intake.ledger.cases(10).await.unwrap();
    assert_eq!(cases.len(), 2, "only the two users at risk have a case");
}

#[tokio::test]
async fn concurrent_workers_share_the_identity_protection_budget() {
    let s = start().await;
    population(&s, 40, 40);
    let path = std::env::temp_dir().join(format!("limits-{}.sqlite", uuid::Uuid::new_v4()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let store = risk_responder::ledger::sqlite::SqliteStore::open(&path).unwrap();
            worker_with(&s, Ledger::new(Arc::new(store)), no_manager_policy(), 3)
        })
        .collect();
    let items: Vec<WorkItem> = (0..40).map(alert).collect();
    let chunks: Vec<Vec<WorkItem>> = items.chunks(10).map(<[WorkItem]>::to_vec).collect();
    let runs = chunks
        .iter()
        .zip(&workers)
        .map(|(chunk, worker)| worker.handle_batch(chunk));
    let results = futures_util::future::join_all(runs).await;
    assert!(
        results.iter().flatten().all(|d| !d.is_retry()),
        "{results:?}"
    );
    assert_eq!(resets(&s), 40);
    let ip_throttled = s.with(|d| {
        d.throttled
            .get(&Budget::IdentityProtection)
            .copied()
            .unwrap_or(0)
    });
    assert_eq!(ip_throttled, 0, "four workers, one tenant budget: no 429");
    std::fs::remove_file(&path).ok();
}

#[tokio::test]
async fn identity_protection_answers_429_without_retry_after_and_the_call_still_succeeds() {
    let s = start().await;
    population(&s, 3, 3);
    // A client whose limiter allows more than the tenant's budget (as another app's load would
    // make us see): Identity Protection throttles with no Retry-After; backoff gets through.
    let unlimited = Arc::new(risk_responder::graph::limiter::LocalLimiter::new(
        risk_responder::graph::limiter::Limits {
            identity_protection: (1000, std::time::Duration::from_secs(1)),
            ..risk_responder::graph::limiter::Limits::published(1.0)
        },
    ));
    let graph = s.client_with(
        risk_responder::graph::ClientCredential::Secret(
            risk_responder::support::secret::SecretString::new(CLIENT_SECRET),
        ),
        8,
        unlimited,
    );
    let (u0, u1, u2) = (user_id(0), user_id(1), user_id(2));
    let (a, b, c) = tokio::join!(
        graph.risk_record(TENANT, &u0),
        graph.risk_record(TENANT, &u1),
        graph.risk_record(TENANT, &u2),
    );
    for r in [a, b, c] {
        assert!(r.unwrap().is_some());
    }
    assert!(
        s.with(|d| d
            .throttled
            .get(&Budget::IdentityProtection)
            .copied()
            .unwrap_or(0))
            >= 2
    );
}

#[tokio::test]
async fn the_simulator_enforces_the_published_limits() {
    let s = start().await;
    population(&s, 1, 1);
    let graph = s.secret_client(1);
    graph.user_facts(TENANT, &user_id(0)).await.unwrap();
    let token = s.with(|d| d.issued.keys().next().unwrap().clone());
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{}/v1.0{path}", s.base))
            .bearer_auth(&token)
            .send()
    };
    // Identity Protection: 1 per second per tenant, 429 without Retry-After.
    assert_eq!(
        get("/identityProtection/riskyUsers?$top=5")
            .await
            .unwrap()
            .status(),
        200
    );
    let second = get("/identityProtection/riskyUsers?$top=5").await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().get("retry-after").is_none());
    // Reports: 5 per 10 seconds per app and tenant, 429 without Retry-After (the reports
    // document none; the client must cope without).
    let since = "status/errorCode eq 53011 and createdDateTime ge 2026-01-01T00:00:00Z";
    let path = format!("/auditLogs/signIns?$filter={}", urlencode(since));
    for _ in 0..5 {
        assert_eq!(get(&path).await.unwrap().status(), 200);
    }
    let sixth = get(&path).await.unwrap();
    assert_eq!(sixth.status(), 429);
    assert!(sixth.headers().get("retry-after").is_none());
    let envelope: serde_json::Value = sixth.json().await.unwrap();
    assert_eq!(envelope["error"]["code"], "TooManyRequests");
    // A batch of more than 20 is refused; 5 mails to one mailbox in one batch are all sent:
    // Graph hands Outlook four of a batch's members at a time and queues the fifth.
    let requests: Vec<_> = (0..21).map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{}", user_id(0))})).collect();
    let refused = http
        .post(format!("{}/v1.0/$batch", s.base))
        .bearer_auth(&token)
        .json(&json!({ "requests": requests }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let mails: Vec<_> = (0..5).map(|i| json!({"id": i.to_string(), "method": "POST", "url": "/users/risk-responder@contoso.onmicrosoft.com/sendMail",
        "headers": {"Content-Type": "application/json"},
        "body": {"message": {"subject": "s", "body": {"contentType": "Text", "content": "x"}, "toRecipients": [{"emailAddress": {"address": "a@b.c"}}]}}})).collect();
    let answer: serde_json::Value = http
        .post(format!("{}/v1.0/$batch", s.base))
        .bearer_auth(&token)
        .json(&json!({ "requests": mails }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<u64> = answer["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![202; 5]);
    let _ = Method::GET;
}

#[tokio::test]
async fn the_simulator_enforces_the_directory_write_quota_per_app_and_tenant() {
    let s = start().await;
    // Microsoft's figures (identity and access service limits).
    let published = Limits::default();
    assert_eq!(published.directory_writes, (3000, Duration::from_secs(150)));
    assert_eq!(
        published.directory_app_writes,
        (35_000, Duration::from_secs(300))
    );
    assert_eq!(
        published.directory_tenant_writes,
        (18_000, Duration::from_secs(300))
    );
    assert_eq!(published.directory, (3500, Duration::from_secs(10)));
    assert_eq!(published.mail, (10_000, Duration::from_secs(600)));
    let write = |app: &str, path: &str| s.other_app_request(TENANT, app, &Method::PATCH, path);
    for i in 0..3000 {
        assert!(
            write(OTHER_APP, &format!("/users/{}", user_id(i))),
            "write {i}"
        );
    }
    assert!(
        !s.other_app_request(
            TENANT,
            OTHER_APP,
            &Method::POST,
            &format!("/users/{}/revokeSignInSessions", user_id(1))
        ),
        "the 3,001st write within 150 s is throttled"
    );
    // Per app and tenant: our application still writes.
    assert!(write(CLIENT_ID, &format!("/users/{}", user_id(0))));
    // A write on no directory object (a subscription) is outside the write quota.
    assert!(s.other_app_request(TENANT, OTHER_APP, &Method::PATCH, "/subscriptions/s1"));
    // The refused write spent none of the app's 3,500 resource units: 3,001 used, 499 left
    // for reads of one user (one unit each).
    let read = format!("/users/{}", user_id(0));
    for i in 0..499 {
        assert!(
            s.other_app_request(TENANT, OTHER_APP, &Method::GET, &read),
            "read {i}"
        );
    }
    assert!(!s.other_app_request(TENANT, OTHER_APP, &Method::GET, &read));
}

#[test]
fn the_simulator_counts_resource_units_as_published() {
    let units = |method: Method, path: &str| {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        resource_units(&method, path, query)
    };
    assert_eq!(units(Method::GET, "/users"), 2);
    assert_eq!(units(Method::GET, "/users?$select=id"), 1);
    assert_eq!(
        units(Method::GET, "/users?$select=id&$expand=manager($select=id)"),
        2
    );
    assert_eq!(units(Method::GET, "/users/x"), 1);
    assert_eq!(
        units(
            Method::GET,
            "/groups/g/transitiveMembers/microsoft.graph.user?$select=id"
        ),
        4
    );
    assert_eq!(units(Method::GET, "/groups/g/members?$top=5"), 2);
    assert_eq!(
        units(
            Method::GET,
            "/users/x/transitiveMemberOf?$select=id&$top=999"
        ),
        1
    );
    assert_eq!(
        units(
            Method::GET,
            "/roleManagement/directory/roleAssignments?$expand=principal"
        ),
        2
    );
    assert_eq!(
        units(
            Method::GET,
            "/roleManagement/directory/roleAssignments?$select=principalId&$expand=principal($select=id)"
        ),
        1
    );
    assert_eq!(units(Method::POST, "/directoryObjects/getByIds"), 5);
    assert_eq!(
        units(Method::POST, "/directoryObjects/getByIds?$select=id"),
        2
    );
    assert_eq!(units(Method::PATCH, "/users/x"), 1);
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn the_sweep_command_works_the_signals_locally() {
    let s = start().await;
    population(&s, 4, 2);
    let path = std::env::temp_dir().join(format!("sweep-{}.sqlite", uuid::Uuid::new_v4()));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .args(["sweep", "--tenant", TENANT])
        .env("RR_LEDGER_PATH", &path)
        .env("RR_GRAPH_BASE_URL", s.graph_url())
        .env("RR_LOGIN_AUTHORITY", s.authority())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("2 at risk"), "{out}");
    assert!(out.contains("4 signal(s) kept"), "{out}");
    assert!(
        out.contains("ReportOnly"),
        "embedded policy: report-only: {out}"
    );
    assert_eq!(out.matches("  case c-").count(), 2, "{out}");
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .args(["sweep", "--since", "yesterday"])
        .env("RR_LEDGER_PATH", &path)
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an RFC 3339 time"));
    std::fs::remove_file(&path).ok();
}

// ---- what a sweep reads, and how far its watermarks move ----

fn view<'a>(
    graph: &'a risk_responder::graph::GraphClient,
    ledger: &'a Ledger,
) -> risk_responder::respond::view::RiskView<'a> {
    risk_responder::respond::view::RiskView { graph, ledger }
}

#[tokio::test]
async fn a_truncated_risk_listing_keeps_what_it_read_and_moves_no_risk_watermark() {
    use risk_responder::graph::GraphError;
    use risk_responder::respond::sweep::SweepError;
    use risk_responder::respond::view::ViewError;
    let s = start().await;
    population(&s, 12, 12);
    s.with(|d| d.page_size = 5);
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    // Two pages of five: 10 of the 12 records and 10 of the 12 sign-ins.
    let graph = paged_client(
        &s,
        2,
        risk_responder::graph::limiter::Limits::published(1.0),
    );
    let err = sweeper(&graph, &intake)
        .run(TENANT, None)
        .await
        .unwrap_err();
    assert!(matches!(err, SweepError::Truncated { .. }), "{err}");
    let (state, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    // The risk listing's watermark stays; the sign-in log, read newest first, moves its own
    // and keeps the two sign-ins it did not read as the tenant's gap.
    assert!(state.risk_watermark.is_none(), "{state:?}");
    assert!(
        state.sign_in_watermark.is_some() && state.sign_in_gap.is_some(),
        "{state:?}"
    );
    let at_risk_signals = |events: Vec<RiskEvent>| -> std::collections::BTreeSet<String> {
        events
            .into_iter()
            .filter(|e| e.source_id.starts_with("riskyUser"))
            .filter_map(|e| match e.subject {
                Subject::User { id, .. } => id,
                _ => None,
            })
            .collect()
    };
    let first_read = at_risk_signals(common::risk_events(&queue));
    assert_eq!(first_read.len(), 10, "what was read is kept");
    let (seen, _) = view(&graph, &intake.ledger).state(TENANT).await.unwrap();
    assert!(
        seen.refreshed_at.is_none() && !seen.complete,
        "a truncated listing does not make the view current: {seen:?}"
    );
    // A seed that does not fit is an error, not a complete view with users missing.
    let err = view(&graph, &intake.ledger)
        .refresh(TENANT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ViewError::Graph(GraphError::Truncated { .. })),
        "{err}"
    );
    assert!(
        !view(&graph, &intake.ledger)
            .state(TENANT)
            .await
            .unwrap()
            .0
            .complete
    );
    // With room for every page, the next sweep continues the listing where the first stopped
    // (the first ten were kept already) and moves both watermarks.
    let whole = paged_client(
        &s,
        10,
        risk_responder::graph::limiter::Limits::published(1.0),
    );
    let report = sweeper(&whole, &intake).run(TENANT, None).await.unwrap();
    assert_eq!((report.users_at_risk, report.users_blocked), (2, 12));
    let mut every = first_read;
    every.extend(at_risk_signals(common::risk_events(&queue)));
    assert_eq!(every.len(), 12, "every user at risk became a signal");
    let (state, _) = sweeper(&whole, &intake).state(TENANT).await.unwrap();
    assert!(state.risk_watermark.is_some() && state.sign_in_watermark.is_some());
    assert_eq!(state.sign_in_gap, None, "the gap was read");
}

#[tokio::test]
async fn sweep_since_later_than_the_watermarks_moves_nothing() {
    let s = start().await;
    population(&s, 4, 2);
    let intake = Intake::in_process(Arc::new(MemoryQueue::default())).unwrap();
    let graph = s.secret_client(3);
    // The workers' view is seeded (as their first bulk read does); the sweep refreshes it.
    view(&graph, &intake.ledger).refresh(TENANT).await.unwrap();
    sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    let (first, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    let (view_first, _) = view(&graph, &intake.ledger).state(TENANT).await.unwrap();
    // `--since` a minute ago: later than where the watermarks would start, so the time
    // between them was skipped.
    let skipped = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let report = sweeper(&graph, &intake)
        .run(TENANT, Some(skipped))
        .await
        .unwrap();
    assert_eq!(report.risk_since, skipped);
    let (after, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    assert_eq!(after.risk_watermark, first.risk_watermark);
    assert_eq!(after.sign_in_watermark, first.sign_in_watermark);
    assert!(after.last_run > first.last_run);
    // Nor does the shared view move: it did not see the minutes before `since`.
    let (view_after, _) = view(&graph, &intake.ledger).state(TENANT).await.unwrap();
    assert_eq!(view_after.watermark, view_first.watermark);
    assert_eq!(view_after.refreshed_at, view_first.refreshed_at);
    // A backfill (since before the watermarks) covers everything after it: they move, and
    // so does the view.
    let backfill = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    sweeper(&graph, &intake)
        .run(TENANT, Some(backfill))
        .await
        .unwrap();
    let (moved, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    assert!(moved.sign_in_watermark > first.sign_in_watermark);
    let (view_moved, _) = view(&graph, &intake.ledger).state(TENANT).await.unwrap();
    assert!(view_moved.refreshed_at > view_first.refreshed_at);
}

#[tokio::test]
async fn a_sweep_that_leaves_a_gap_does_not_make_the_view_current() {
    let s = start().await;
    population(&s, 4, 1);
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    let mut worker = worker_with(&s, intake.ledger.clone(), no_manager_policy(), 3);
    worker.view_max_age = time::Duration::seconds(2);
    view(&worker.graph, &intake.ledger)
        .refresh(TENANT)
        .await
        .unwrap();
    let (seeded, _) = view(&worker.graph, &intake.ledger)
        .state(TENANT)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    // User 2's risk changes after the seed, before the `--since` of an operator's sweep.
    let now = time::OffsetDateTime::now_utc();
    s.with(|d| {
        d.risky_users.insert(
            user_id(2),
            json!({"id": user_id(2),
            "userPrincipalName": "user2@contoso.onmicrosoft.com", "riskLevel": "high",
            "riskState": "atRisk", "riskDetail": "none",
            "riskLastUpdatedDateTime": iso(now - time::Duration::seconds(30))}),
        );
    });
    let report = sweeper(&worker.graph, &intake)
        .run(TENANT, Some(now - time::Duration::seconds(10)))
        .await
        .unwrap();
    assert_eq!(report.records_listed, 0, "user 2 changed before `since`");
    let (after, _) = view(&worker.graph, &intake.ledger)
        .state(TENANT)
        .await
        .unwrap();
    assert_eq!(after.watermark, seeded.watermark);
    assert_eq!(
        after.refreshed_at, seeded.refreshed_at,
        "the view missed user 2: it must not claim to be current"
    );
    // So a `users` notification about user 2 (the view is older than the worker accepts)
    // refreshes the view, finds the risk, and opens a case.
    let dispositions = worker.handle_batch(&[users_notification(2, 0)]).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    let cases = intake.ledger.cases(10).await.unwrap();
    assert_eq!(cases.len(), 1, "{cases:?}");
    assert_eq!(cases[0].user_id, user_id(2));
}

#[tokio::test]
async fn a_scheduled_sweep_keeps_a_quiet_tenants_view_current() {
    let s = start().await;
    population(&s, 4, 2);
    // The last risk change was two hours ago: the view's watermark lags the sweep's.
    let long_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    s.with(|d| {
        for record in d.risky_users.values_mut() {
            if record["riskState"] == "atRisk" {
                record["riskLastUpdatedDateTime"] = long_ago
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
                    .into();
            }
        }
    });
    let intake = Intake::in_process(Arc::new(MemoryQueue::default())).unwrap();
    let graph = s.secret_client(3);
    view(&graph, &intake.ledger).refresh(TENANT).await.unwrap();
    let first = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert_eq!(first.users_at_risk, 2, "within the first run's look-back");
    let (view_first, _) = view(&graph, &intake.ledger).state(TENANT).await.unwrap();
    let kept = intake.ledger.signals(100).await.unwrap().len();
    let second = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert!(second.risk_since > long_ago);
    // Its listing reached back to the view's watermark, so the view moved ...
    let (view_second, _) = view(&graph, &intake.ledger).state(TENANT).await.unwrap();
    assert!(
        view_second.refreshed_at > view_first.refreshed_at,
        "{view_first:?} {view_second:?}"
    );
    // ... but only the sweep's own window became signals.
    assert_eq!((second.records_listed, second.users_at_risk), (0, 0));
    assert_eq!(intake.ledger.signals(100).await.unwrap().len(), kept);
}

#[tokio::test]
async fn tenants_are_swept_at_once_and_a_failing_tenant_stops_none_of_the_others() {
    let s = start().await;
    population(&s, 3, 3);
    // Three pages of risky users a tenant, at Identity Protection's one request a second:
    // each tenant's sweep takes over two seconds.
    s.with(|d| d.page_size = 1);
    let intake = Intake::in_process(Arc::new(MemoryQueue::default())).unwrap();
    let graph = paged_client(
        &s,
        10,
        risk_responder::graph::limiter::Limits::published(1.0),
    );
    let tenants: Vec<String> = std::iter::once("not-a-tenant/x".to_owned())
        .chain((1..=4).map(|i| format!("{TENANT}{i}")))
        .collect();
    let outcomes = sweeper(&graph, &intake).run_all(&tenants, None).await;
    let named: Vec<&String> = outcomes.iter().map(|(t, _)| t).collect();
    assert_eq!(
        named,
        tenants.iter().collect::<Vec<_>>(),
        "in the order given"
    );
    assert!(outcomes[0].1.is_err(), "{:?}", outcomes[0].1);
    for (tenant, outcome) in &outcomes[1..] {
        let report = outcome.as_ref().unwrap_or_else(|e| panic!("{tenant}: {e}"));
        assert_eq!(report.users_at_risk, 3, "{tenant}");
        let (state, _) = sweeper(&graph, &intake).state(tenant).await.unwrap();
        assert!(
            state.risk_watermark.is_some(),
            "{tenant}: its watermarks moved"
        );
    }
    // At once: every tenant's first request came before any tenant's last (one after another,
    // each would start only after the previous one ended). Seen as Graph saw them.
    let spans: Vec<(std::time::Instant, std::time::Instant)> = s.with(|d| {
        tenants[1..]
            .iter()
            .map(|tenant| {
                let times: Vec<std::time::Instant> = d
                    .tenant_calls
                    .iter()
                    .filter(|(t, _)| t == tenant)
                    .map(|(_, at)| *at)
                    .collect();
                assert!(times.len() >= 3, "{tenant}: {} requests", times.len());
                (times[0], *times.last().unwrap())
            })
            .collect()
    });
    let last_first = spans.iter().map(|(first, _)| *first).max().unwrap();
    let first_last = spans.iter().map(|(_, last)| *last).min().unwrap();
    assert!(
        last_first < first_last,
        "the four tenants' sweeps overlapped"
    );
}

#[tokio::test]
async fn a_sign_in_that_reaches_the_log_late_is_still_swept() {
    let s = start().await;
    population(&s, 3, 0);
    let intake = Intake::in_process(Arc::new(MemoryQueue::default())).unwrap();
    let graph = s.secret_client(3);
    let first = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert_eq!(first.blocked_sign_ins, 0);
    let (state, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    let watermark = state.sign_in_watermark.unwrap();
    // A sign-in made 12 minutes before the last sweep reaches the log only now.
    s.with(|d| {
        d.sign_ins.push(json!({"id": "late-1",
            "createdDateTime": (watermark - time::Duration::minutes(12))
                .format(&time::format_description::well_known::Rfc3339).unwrap(),
            "userId": user_id(1), "userPrincipalName": "user1@contoso.onmicrosoft.com",
            "status": {"errorCode": 53011, "failureReason": "User blocked due to risk on home tenant."}}));
    });
    let second = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert_eq!(second.users_blocked, 1, "caught by the sign-in overlap");
    assert_eq!(
        second.sign_ins_since,
        watermark - risk_responder::respond::sweep::SIGN_IN_OVERLAP
    );
    // Listed again by the next run, it is kept once.
    let kept = intake.ledger.signals(100).await.unwrap().len();
    let third = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert_eq!(third.users_blocked, 1);
    assert_eq!(intake.ledger.signals(100).await.unwrap().len(), kept);
}

#[tokio::test]
async fn an_older_listing_never_overwrites_a_newer_view_entry() {
    let s = start().await;
    population(&s, 1, 1);
    let graph = s.secret_client(3);
    let ledger = memory_ledger();
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let before = s.with(|d| d.risky_users[&user_id(0)].clone());
    // A listing of changes into a view no full listing has seeded adds nothing: the seed
    // could not correct what it wrote.
    let unseeded = view(&graph, &ledger)
        .absorb_listing(TENANT, Some(since))
        .await
        .unwrap();
    assert!(unseeded.complete && !unseeded.advanced);
    let entry_key = format!("tenant#{TENANT}#risk#{}", user_id(0));
    assert!(ledger.store().get(&entry_key).await.unwrap().is_none());
    view(&graph, &ledger).refresh(TENANT).await.unwrap();
    // The user is dismissed; a listing writes that into the view.
    s.with(|d| {
        let r = d.risky_users.get_mut(&user_id(0)).unwrap();
        r["riskState"] = "dismissed".into();
        r["riskLevel"] = "none".into();
        r["riskLastUpdatedDateTime"] = risk_responder::demo::simulator::now_iso().into();
    });
    view(&graph, &ledger)
        .absorb_listing(TENANT, Some(since))
        .await
        .unwrap();
    // A listing that read Graph before the dismissal finishes later.
    s.with(|d| {
        d.risky_users.insert(user_id(0), before);
    });
    view(&graph, &ledger)
        .absorb_listing(TENANT, Some(since))
        .await
        .unwrap();
    let held = ledger.store().get(&entry_key).await.unwrap().unwrap();
    let entry: risk_responder::respond::view::ViewEntry = serde_json::from_str(&held.doc).unwrap();
    assert_eq!(
        entry.record.risk_state, "dismissed",
        "the newer record stays"
    );
}

// ---- limits per app, and the tenant's other apps ----

const OTHER_APP: &str = "99999999-8888-7777-6666-555555555555";

#[tokio::test]
async fn limits_are_kept_per_app_where_graph_keeps_them_per_app() {
    let s = start().await;
    population(&s, 1, 1);
    s.with(|d| d.apps.insert(OTHER_APP.into(), "other-secret".into()));
    let ours = raw_token(&s).await;
    let theirs = s
        .app_client(OTHER_APP, "other-secret", 1)
        .tokens()
        .token(TENANT)
        .await
        .unwrap()
        .expose()
        .to_owned();
    let http = reqwest::Client::new();
    let get = |token: &str, path: &str| {
        http.get(format!("{}/v1.0{path}", s.base))
            .bearer_auth(token.to_owned())
            .send()
    };
    // Reports: 5 per 10 s per app and tenant: ours are spent, the other app's are not.
    let since = "status/errorCode eq 53011 and createdDateTime ge 2026-01-01T00:00:00Z";
    let sign_ins = format!("/auditLogs/signIns?$filter={}", urlencode(since));
    for _ in 0..5 {
        assert_eq!(get(&ours, &sign_ins).await.unwrap().status(), 200);
    }
    assert_eq!(get(&ours, &sign_ins).await.unwrap().status(), 429);
    assert_eq!(get(&theirs, &sign_ins).await.unwrap().status(), 200);
    // Identity Protection: 1 per second per tenant for all apps together.
    assert_eq!(
        get(&theirs, "/identityProtection/riskyUsers")
            .await
            .unwrap()
            .status(),
        200
    );
    let ours_after = get(&ours, "/identityProtection/riskyUsers").await.unwrap();
    assert_eq!(
        ours_after.status(),
        429,
        "the other app spent the tenant's second"
    );
    assert!(ours_after.headers().get("retry-after").is_none());
    // The hook: another app's request without a client of its own.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(s.other_app_request(
        TENANT,
        OTHER_APP,
        &Method::GET,
        "/identityProtection/riskyUsers"
    ));
    assert!(!s.other_app_request(
        TENANT,
        "another",
        &Method::GET,
        "/identityProtection/riskyUsers"
    ));
}

#[tokio::test]
async fn the_product_completes_while_another_app_spends_the_tenants_identity_protection_budget() {
    let s = start().await;
    population(&s, 30, 30);
    // Another app of the tenant reads Identity Protection every 1.5 s: two thirds of the
    // tenant's budget, besides our half; its requests come when they come, so ours meet 429s
    // without Retry-After.
    let other = s.spawn_other_app(TENANT, OTHER_APP, std::time::Duration::from_millis(1500));
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    let worker = worker_sharing(&s, intake.ledger.clone(), no_manager_policy(), 5, 0.5);
    // A sweep that still meets 429 after its retries fails and runs again (the schedule).
    let mut swept = false;
    for _ in 0..5 {
        if sweeper(&worker.graph, &intake)
            .run(TENANT, None)
            .await
            .is_ok()
        {
            swept = true;
            break;
        }
    }
    assert!(swept, "the sweep got through");
    let mut items: Vec<WorkItem> = queue.drain();
    items.extend((0..30).map(alert));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    loop {
        let dispositions = worker.handle_batch(&items).await;
        items = items
            .into_iter()
            .zip(dispositions)
            .filter(|(_, d)| d.is_retry())
            .map(|(i, _)| i)
            .collect();
        if items.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still retrying {} signals",
            items.len()
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    other.abort();
    assert_eq!(resets(&s), 30);
    let cases = intake.ledger.cases(100).await.unwrap();
    assert_eq!(cases.len(), 30);
    assert!(cases.iter().all(|c| c.status == CaseStatus::Completed));
    let signals = intake.ledger.signals(200).await.unwrap();
    assert_eq!(signals.len(), 90, "60 from the sweep, 30 alerts: none lost");
    assert!(
        signals.iter().all(|r| r.case_id.is_some()),
        "each merged into its case"
    );
    let (theirs, throttled) = s.with(|d| {
        (
            d.other_apps_admitted,
            d.throttled
                .get(&Budget::IdentityProtection)
                .copied()
                .unwrap_or(0),
        )
    });
    assert!(theirs >= 2, "the other app was served too: {theirs}");
    // The premise: the shared budget was tight enough that Graph refused some of ours.
    assert!(
        throttled > 0,
        "our Identity Protection requests met the shared budget's 429s: {throttled}"
    );
}

// ---- registration and protection, read in bulk ----

fn self_remediation_policy() -> risk_responder::cases::Policy {
    risk_responder::cases::Policy::from_toml(
        r#"mode = "enforce"
[[rules]]
name = "medium"
min_risk_level = "medium"
actions = ["revoke_sessions", "reset_password", "notify"]
[password_delivery]
channel = "mail"
sender = "risk-responder@contoso.onmicrosoft.com"
to = ["helpdesk@contoso.onmicrosoft.com"]
[notify]
sender = "risk-responder@contoso.onmicrosoft.com"
to = ["soc@contoso.onmicrosoft.com"]
[self_remediation]
enabled = true
[notify_user]
sender = "risk-responder@contoso.onmicrosoft.com"
helpdesk = "+1 555 0100"
[safety]
max_enforced_cases_per_hour = 1000"#,
    )
    .unwrap()
}

#[tokio::test]
async fn a_refused_registration_read_leaves_registration_unknown_and_the_case_goes_ahead() {
    use risk_responder::cases::findings::Capable;
    let s = start().await;
    population(&s, 3, 3);
    s.with(|d| {
        // user 0: the registration report is refused (no licence or permission).
        d.faults.forbidden.push((
            Method::GET,
            format!(
                "/reports/authenticationMethods/userRegistrationDetails/{}",
                user_id(0)
            ),
        ));
        // user 1: registered for both, but SSPR is not usable (not capable).
        d.registrations.insert(
            user_id(1),
            json!({"id": user_id(1), "isMfaRegistered": true,
            "isSsprRegistered": true, "isMfaCapable": true, "isSsprCapable": false,
            "methodsRegistered": ["microsoftAuthenticatorPush"]}),
        );
        // user 2: no record of its own: the report says nothing is registered.
    });
    let ledger = memory_ledger();
    let worker = worker_with(&s, ledger.clone(), self_remediation_policy(), 3);
    let items: Vec<WorkItem> = (0..3).map(alert).collect();
    let dispositions = worker.handle_batch(&items).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    let case_of = |i: usize| {
        let ledger = ledger.clone();
        async move {
            ledger
                .find_case(&format!("alert-{i}"))
                .await
                .unwrap()
                .unwrap()
                .0
        }
    };
    let refused = case_of(0).await;
    assert_eq!(
        refused.status,
        CaseStatus::Completed,
        "{:?}",
        refused.last_error
    );
    let findings = refused.findings.clone().unwrap();
    assert!(findings.registration.is_none());
    assert!(
        findings
            .registration_unknown
            .as_deref()
            .is_some_and(|why| why.contains("could not be read")),
        "{:?}",
        findings.registration_unknown
    );
    let reset = |case: &risk_responder::cases::Case| {
        case.actions.iter().any(|a| {
            a.action == risk_responder::cases::Action::ResetPassword
                && matches!(
                    a.state,
                    risk_responder::cases::case::ActionState::Done { .. }
                )
        })
    };
    assert!(
        reset(&refused),
        "registration unknown: no self-remediation, the admin reset"
    );
    // Said where people look: the audit trail and `cases show`.
    assert!(
        refused
            .history
            .iter()
            .any(|h| h.what.contains("registration unknown")
                && h.what.contains("no self-remediation offered")),
        "{:#?}",
        refused.history
    );
    let shown = risk_responder::respond::report::CaseReport(&refused).to_string();
    assert!(shown.contains("account: registration unknown"), "{shown}");
    let capable = case_of(1).await.findings.unwrap().registration.unwrap();
    assert_eq!(
        capable.capable,
        Some(Capable {
            mfa: true,
            sspr: false
        })
    );
    assert!(
        !capable.can_self_remediate(),
        "registered, but SSPR is not usable"
    );
    let nothing = case_of(2).await;
    assert!(reset(&nothing));
    let nothing = nothing.findings.unwrap().registration.unwrap();
    assert!(
        !nothing.is_mfa_registered
            && nothing.capable
                == Some(Capable {
                    mfa: false,
                    sspr: false
                })
    );
    // Graph's report has a record for every enabled user; an unknown id is 404.
    let token = raw_token(&s).await;
    let unknown = reqwest::Client::new()
        .get(format!(
            "{}/v1.0/reports/authenticationMethods/userRegistrationDetails/{}",
            s.base,
            user_id(777)
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

const GLOBAL_ADMIN: &str = "62e90394-69f5-4237-9190-012177145e10";

#[tokio::test]
async fn eligible_and_group_held_administrators_are_protected() {
    let s = start().await;
    population(&s, 3, 3);
    let admins = "7a0e2f5a-3333-4c8d-9000-00000000cccc";
    s.with(|d| {
        // user 0 can activate Global Administrator through PIM at any time.
        d.role_eligibilities.push((user_id(0), GLOBAL_ADMIN.into()));
        // user 1 holds it through a role-assignable group.
        d.role_assignments
            .push((admins.into(), GLOBAL_ADMIN.into()));
        d.member_of.insert(user_id(1), vec![admins.into()]);
    });
    let ledger = memory_ledger();
    let worker = worker_with(&s, ledger.clone(), no_manager_policy(), 3);
    let dispositions = worker
        .handle_batch(&(0..3).map(alert).collect::<Vec<_>>())
        .await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    for (i, says) in [(0, "eligible (PIM)"), (1, "through group")] {
        let case = ledger
            .find_case(&format!("alert-{i}"))
            .await
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(case.status, CaseStatus::AwaitingApproval, "user {i}");
        assert!(
            case.rails
                .iter()
                .any(|r| r.contains(says) && r.contains(GLOBAL_ADMIN)),
            "{:?}",
            case.rails
        );
    }
    assert_eq!(resets(&s), 1, "only the unprotected user is reset");
    // Protection was read once for the tenant, not per user.
    let calls: Vec<String> = s.with(|d| d.calls.iter().map(|(c, _)| c.clone()).collect());
    assert!(calls.iter().all(|c| !c.contains("transitiveMemberOf")));
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.contains("/roleManagement/directory/roleEligibilitySchedules"))
            .count(),
        2,
        "two protected roles"
    );
    // Only the principal's id and type are asked for: one resource unit a request.
    let role_reads: Vec<&String> = calls
        .iter()
        .filter(|c| c.contains("/roleManagement/directory/"))
        .collect();
    assert_eq!(role_reads.len(), 4, "{role_reads:?}");
    for call in role_reads {
        assert!(
            call.ends_with("&$select=principalId&$expand=principal($select=id)"),
            "{call}"
        );
        let (path, query) = call["GET /v1.0".len()..].split_once('?').unwrap();
        assert_eq!(resource_units(&Method::GET, path, query), 1, "{call}");
    }
}

#[tokio::test]
async fn the_simulator_takes_exactly_the_documented_role_queries() {
    let s = start().await;
    population(&s, 2, 0);
    s.with(|d| {
        d.role_assignments.push((user_id(0), GLOBAL_ADMIN.into()));
        d.role_eligibilities.push((user_id(1), GLOBAL_ADMIN.into()));
    });
    let token = raw_token(&s).await;
    let http = reqwest::Client::new();
    let get = |collection: &str, query: &str| {
        let url = format!(
            "{}/v1.0/roleManagement/directory/{collection}?$filter={}&{query}",
            s.base,
            urlencode(&format!("roleDefinitionId eq '{GLOBAL_ADMIN}'"))
        );
        http.get(url).bearer_auth(&token).send()
    };
    for collection in ["roleAssignments", "roleEligibilitySchedules"] {
        // What the product asks: the principal's id and type, nothing else.
        let answer: serde_json::Value = get(
            collection,
            "$select=principalId&$expand=principal($select=id)",
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let items = answer["value"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{answer}");
        let mut keys: Vec<&String> = items[0].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["principal", "principalId"], "{answer}");
        let principal = items[0]["principal"].as_object().unwrap();
        assert_eq!(principal.len(), 2, "{answer}");
        assert_eq!(principal["@odata.type"], "#microsoft.graph.user");
        assert_eq!(principal["id"], items[0]["principalId"]);
        // The whole principal without a $select of its own.
        let whole: serde_json::Value = get(collection, "$expand=principal")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            whole["value"][0]["principal"]["userPrincipalName"].is_string(),
            "{whole}"
        );
        assert!(whole["value"][0]["roleDefinitionId"].is_string());
        // Anything else is refused as Graph refuses it.
        for bad in [
            "$select=principalId,nope",
            "$expand=roleDefinition",
            "$expand=principal($select=nope)",
            "$expand=principal($filter=id eq 'x')",
        ] {
            let refused = get(collection, bad).await.unwrap();
            assert_eq!(refused.status(), 400, "{collection} {bad}");
            let envelope: serde_json::Value = refused.json().await.unwrap();
            assert_eq!(envelope["error"]["code"], "BadRequest");
        }
    }
}

#[tokio::test]
async fn a_flood_of_sign_ins_moves_the_watermark_and_later_runs_read_the_gap() {
    use risk_responder::respond::sweep::SweepError;
    let s = start().await;
    let now = time::OffsetDateTime::now_utc();
    // 17 users blocked with 53011 two hours ago, a minute apart (user 0 the newest): older
    // than any later run's own window, so only the gap reaches them.
    s.with(|d| {
        d.page_size = 5;
        for i in 0..17 {
            let id = user_id(i);
            d.users.push(json!({"id": id, "userPrincipalName": format!("user{i}@contoso.onmicrosoft.com"), "accountEnabled": true}));
            d.sign_ins.push(json!({"id": format!("si-{i}"),
                "createdDateTime": iso(now - time::Duration::hours(2) - time::Duration::minutes(i as i64)),
                "userId": id, "userPrincipalName": format!("user{i}@contoso.onmicrosoft.com"),
                "appDisplayName": "Office 365 Exchange Online", "ipAddress": "203.0.113.77",
                "status": {"errorCode": 53011, "failureReason": "User blocked due to risk on home tenant."}}));
        }
    });
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    // Two pages of five a run.
    let graph = paged_client(
        &s,
        2,
        risk_responder::graph::limiter::Limits::published(1.0),
    );
    // The users signalled since the last look, with their signals' ids.
    let signalled = |queue: &MemoryQueue| -> std::collections::BTreeMap<String, String> {
        common::risk_events(queue)
            .into_iter()
            .filter_map(|e| match e.subject {
                Subject::User { id, .. } => id.map(|id| (id, e.event_id)),
                _ => None,
            })
            .collect()
    };
    let users = |signals: &std::collections::BTreeMap<String, String>| {
        signals
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    };

    // Run 1: the newest ten are read and kept; the watermark moves; the rest is the gap, and
    // the run fails so that the alarm tells a person.
    let err = sweeper(&graph, &intake)
        .run(TENANT, None)
        .await
        .unwrap_err();
    assert!(matches!(err, SweepError::SignInsLeft { .. }), "{err}");
    let first = signalled(&queue);
    assert_eq!(
        users(&first),
        (0..10).map(user_id).collect(),
        "the newest ten"
    );
    let (state, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    let watermark = state.sign_in_watermark.expect("the watermark moved");
    let gap = state.sign_in_gap.expect("the unread window is kept");
    assert_eq!(
        gap.until.unix_timestamp(),
        (now - time::Duration::hours(2) - time::Duration::minutes(9)).unix_timestamp(),
        "the gap ends at the oldest sign-in read: {gap:?}"
    );

    // Run 2: its own window holds nothing; the page it has left reads the gap's newest five.
    let report = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    let second = signalled(&queue);
    assert_eq!(
        users(&second),
        (9..14).map(user_id).collect(),
        "users 10 to 13, and user 9 again (the gap includes its end)"
    );
    assert_eq!(
        second[&user_id(9)],
        first[&user_id(9)],
        "user 9's signal is the same one: merged once"
    );
    let gap = report.sign_in_gap.expect("still more to read");
    assert!(gap.until < state.sign_in_gap.unwrap().until, "{gap:?}");
    let (state, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    assert!(state.sign_in_watermark.unwrap() > watermark);
    assert_eq!(state.sign_in_gap, Some(gap));

    // Run 3 reads the rest: no gap is left, and every one of the 17 users became a signal.
    let report = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert_eq!(users(&signalled(&queue)), (13..17).map(user_id).collect());
    assert_eq!(report.sign_in_gap, None);
    let (state, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    assert_eq!(state.sign_in_gap, None);
}
