//! Issue 22, items 7 and 8: every listing makes progress past the page limit, and time in
//! shared state is bounded by Graph's clock (its `Date` header), not the host's.

mod common;
mod graph_standin;

use std::sync::Arc;

use graph_standin::*;
use risk_responder::event::Subject;
use risk_responder::graph::limiter::{Limits, SharedLimiter};
use risk_responder::http::Intake;
use risk_responder::queue::MemoryQueue;
use risk_responder::respond::sweep::{SweepError, Sweeper};
use risk_responder::respond::view::RiskView;
use serde_json::json;
use time::{Duration, OffsetDateTime};

fn iso(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn sweeper<'a>(graph: &'a risk_responder::graph::GraphClient, intake: &'a Intake) -> Sweeper<'a> {
    Sweeper {
        graph,
        ledger: &intake.ledger,
        intake,
        first_lookback: Duration::hours(24),
    }
}

const NEWCOMER: &str = "00000000-0000-4000-8000-0000000c0fee";

/// A user at risk since `at`, with one sign-in blocked with 53011 a minute later.
fn newcomer(s: &StandIn, at: OffsetDateTime) {
    let upn = "newcomer@contoso.onmicrosoft.com";
    s.with(|d| {
        d.users.push(json!({"id": NEWCOMER, "userPrincipalName": upn, "accountEnabled": true}));
        d.risky_users.insert(NEWCOMER.into(), json!({"id": NEWCOMER, "userPrincipalName": upn,
            "riskLevel": "high", "riskState": "atRisk", "riskDetail": "none",
            "riskLastUpdatedDateTime": iso(at)}));
        d.sign_ins.push(json!({"id": "si-newcomer", "createdDateTime": iso(at + Duration::minutes(1)),
            "userId": NEWCOMER, "userPrincipalName": upn, "appDisplayName": "Office 365 Exchange Online",
            "ipAddress": "203.0.113.77", "clientAppUsed": "Browser",
            "status": {"errorCode": 53011, "failureReason": "User blocked due to risk on home tenant."}}));
    });
}

/// What the newcomer's signals say: (a risk record signal, a 53011 sign-in signal).
fn newcomer_signals(queue: &MemoryQueue) -> (bool, bool) {
    let mine: Vec<_> = common::risk_events(queue)
        .into_iter()
        .filter(|e| matches!(&e.subject, Subject::User { id: Some(id), .. } if id == NEWCOMER))
        .collect();
    (
        mine.iter().any(|e| e.source_id.starts_with("riskyUser")),
        mine.iter().any(|e| e.source_id.contains("53011")),
    )
}

fn ip_requests(s: &StandIn) -> usize {
    s.with(|d| {
        d.admitted
            .get(&Budget::IdentityProtection)
            .copied()
            .unwrap_or(0)
    })
}

#[tokio::test]
async fn thirty_thousand_changed_records_are_read_to_the_end_and_the_sweep_moves_on() {
    let s = start().await;
    // The throttle is not what this test is about: 61 pages at 1 a second would take a minute.
    s.with(|d| {
        d.limits.enabled = false;
        d.page_size = 500;
    });
    let graph = paged_client(
        &s,
        50,
        Limits {
            identity_protection: (1000, std::time::Duration::from_secs(1)),
            reports: (1000, std::time::Duration::from_secs(1)),
            ..Limits::published(1.0)
        },
    );
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    let view = RiskView {
        graph: &graph,
        ledger: &intake.ledger,
    };
    // The view was seeded and the sweep last ran a quarter of an hour ago.
    let now = OffsetDateTime::now_utc();
    let last = iso(now - Duration::minutes(15));
    for (key, doc) in [
        (
            format!("tenant#{TENANT}#view"),
            json!({"watermark": last, "refreshed_at": last, "complete": true}),
        ),
        (
            format!("tenant#{TENANT}#sweep"),
            json!({"risk_watermark": last, "sign_in_watermark": last, "last_run": last}),
        ),
    ] {
        intake
            .ledger
            .store()
            .put(&key, &doc.to_string(), 0, None)
            .await
            .unwrap()
            .unwrap();
    }
    // Since then an administrator bulk-dismissed 30,000 stale users (60 pages of 500, more
    // than the 50 a listing follows), and a minute later a new user became risky and was
    // blocked: their record is on the 61st page.
    let dismissed_at = now - Duration::minutes(10);
    s.with(|d| {
        for i in 0..30_000 {
            let id = format!("00000000-0000-4000-9000-{i:012}");
            d.risky_users.insert(
                id.clone(),
                json!({"id": id, "riskLevel": "none",
                "riskState": "dismissed", "riskDetail": "adminDismissedAllRiskForUser",
                "riskLastUpdatedDateTime": iso(dismissed_at)}),
            );
        }
    });
    newcomer(&s, dismissed_at + Duration::minutes(1));

    // Run 1 reads 50 pages, keeps what it read and where it stopped; run 2 continues there,
    // reaches the newcomer's record and completes.
    let err = sweeper(&graph, &intake)
        .run(TENANT, None)
        .await
        .unwrap_err();
    assert!(matches!(err, SweepError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("continues"), "{err}");
    let (state, _) = view.state(TENANT).await.unwrap();
    let kept = state
        .continuation
        .expect("where the listing stopped is kept");
    assert_eq!((kept.pages, kept.records), (50, 25_000));
    assert_eq!(
        newcomer_signals(&queue),
        (false, true),
        "the sign-in log is read newest first: the 53011 sign-in is already a signal"
    );
    let report = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert_eq!(report.users_at_risk, 1, "{report:?}");
    assert_eq!(newcomer_signals(&queue), (true, true));
    let (state, _) = view.state(TENANT).await.unwrap();
    assert!(state.continuation.is_none(), "{state:?}");
    assert!(
        state.watermark >= Some(dismissed_at),
        "the view moved forward: {state:?}"
    );
    let entry = intake
        .ledger
        .store()
        .get(&format!(
            "tenant#{TENANT}#risk#00000000-0000-4000-9000-000000029999"
        ))
        .await
        .unwrap();
    assert!(
        entry.is_some(),
        "the last dismissed record reached the view"
    );

    // From here on the sweep lists only what changed since: never the same 60 pages again.
    let before = ip_requests(&s);
    sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert!(
        ip_requests(&s) - before <= 2,
        "{} requests",
        ip_requests(&s) - before
    );
    // And a worker's view is current without a listing of its own.
    let risks = view
        .risks(TENANT, &[NEWCOMER.to_owned()], now - Duration::minutes(1))
        .await
        .unwrap();
    assert!(risks[NEWCOMER].as_ref().is_some_and(|r| r.at_risk()));
}

#[tokio::test]
async fn times_a_fast_host_wrote_are_refused_and_the_next_sweep_finds_the_new_user() {
    let s = start().await;
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    let ledger = intake.ledger.clone();
    let graph = paged_client(&s, 50, Limits::published(1.0));
    let graph = graph.with_limiter(Arc::new(
        SharedLimiter::new(ledger.clone(), Limits::published(1.0))
            .with_clock(Arc::new(Default::default())),
    ));
    // What a sweep on a host two hours fast left behind on main: watermarks, the view's
    // freshness and a full Identity Protection rate window, all two hours ahead.
    let now = OffsetDateTime::now_utc();
    let ahead = iso(now + Duration::hours(2));
    let store = ledger.store();
    store
        .put(
            &format!("tenant#{TENANT}#sweep"),
            &json!({"risk_watermark": ahead, "sign_in_watermark": ahead, "last_run": ahead})
                .to_string(),
            0,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    store
        .put(
            &format!("tenant#{TENANT}#view"),
            &json!({"watermark": ahead, "refreshed_at": ahead, "complete": true}).to_string(),
            0,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let future_ms = (now + Duration::hours(2)).unix_timestamp() * 1000;
    let slot_ms = 2_200 / 32 + 1;
    store
        .put(
            &format!("tenant#{TENANT}#rate#identity_protection"),
            &json!({"slot_ms": slot_ms, "slots": [[future_ms / slot_ms, 1]]}).to_string(),
            0,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    // Meanwhile a user became risky and was blocked.
    newcomer(&s, now - Duration::minutes(3));

    let report = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert_eq!(newcomer_signals(&queue), (true, true), "{report:?}");
    assert_eq!(report.users_at_risk, 1);
    let (state, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    let bound = OffsetDateTime::now_utc() + Duration::minutes(2);
    for t in [
        state.risk_watermark,
        state.sign_in_watermark,
        state.last_run,
    ] {
        assert!(t.is_some_and(|t| t <= bound), "{state:?}");
    }
    let (view_state, _) = RiskView {
        graph: &graph,
        ledger: &ledger,
    }
    .state(TENANT)
    .await
    .unwrap();
    assert!(
        view_state.refreshed_at.is_some_and(|t| t <= bound),
        "{view_state:?}"
    );
}

#[tokio::test]
async fn a_host_two_hours_fast_writes_graphs_time_into_shared_state() {
    let s = start().await;
    // Graph's Date header says two hours less than this host's clock.
    s.with(|d| d.faults.clock_behind = std::time::Duration::from_secs(2 * 3600));
    let graph_now = OffsetDateTime::now_utc() - Duration::hours(2);
    newcomer(&s, graph_now - Duration::minutes(3));
    let queue = Arc::new(MemoryQueue::default());
    let intake = Intake::in_process(queue.clone()).unwrap();
    let ledger = intake.ledger.clone();
    let graph = paged_client(&s, 50, Limits::published(1.0));
    let clock = graph.clock().clone();
    let graph = graph.with_limiter(Arc::new(
        SharedLimiter::new(ledger.clone(), Limits::published(1.0)).with_clock(clock.clone()),
    ));
    let report = sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    assert_eq!(newcomer_signals(&queue), (true, true), "{report:?}");
    assert_eq!(
        clock.skew().map(|s| s.whole_minutes()),
        Some(120),
        "the skew is measured"
    );
    // Every time written is Graph's, within the allowance, not the host's. (The first request
    // of a process counts in the host's time, before any response told Graph's; a later write
    // of the window drops that slot as one no host in step could have written.)
    sweeper(&graph, &intake).run(TENANT, None).await.unwrap();
    let bound = OffsetDateTime::now_utc() - Duration::hours(2) + Duration::minutes(2);
    let (state, _) = sweeper(&graph, &intake).state(TENANT).await.unwrap();
    for t in [
        state.risk_watermark,
        state.sign_in_watermark,
        state.last_run,
    ] {
        assert!(t.is_some_and(|t| t <= bound), "{state:?}");
    }
    let stored = ledger
        .store()
        .get(&format!("tenant#{TENANT}#rate#identity_protection"))
        .await
        .unwrap()
        .expect("the shared window was written");
    let window: serde_json::Value = serde_json::from_str(&stored.doc).unwrap();
    let slot_ms = window["slot_ms"].as_i64().unwrap();
    let slots = window["slots"].as_array().unwrap();
    assert!(!slots.is_empty(), "{window}");
    for slot in slots {
        assert!(
            slot[0].as_i64().unwrap() * slot_ms <= bound.unix_timestamp() * 1000,
            "the rate window counts in Graph's time: {window}"
        );
    }
}
