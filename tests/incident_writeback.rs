//! Write-back (issue 11, item 4): a case that merged a signal from a Sentinel incident puts its
//! outcome on the incident as a comment, through Azure Resource Manager or Microsoft Graph,
//! end to end from the incident trigger body, against the simulator's ARM and Graph stand-ins.

mod common;
mod graph_standin;

use std::sync::Arc;

use graph_standin::*;
use reqwest::Method;
use risk_responder::cases::incident::{CommentPath, CommentState, comment_id};
use risk_responder::cases::{Case, CaseStatus, Mode, Policy};
use risk_responder::event::{RiskEvent, Subject};
use risk_responder::ledger::Ledger;
use risk_responder::queue::WorkItem;
use risk_responder::respond::{Disposition, Worker};
use serde_json::Value;

/// Adele's signal from an incident trigger body in `events/sentinel/`, through Sentinel ingress.
fn incident_signal(file: &str) -> RiskEvent {
    let body = common::event_body(&format!("sentinel/{file}"));
    let config = risk_responder::config::Config::default();
    let outcome = risk_responder::ingress::sentinel::parse(body.as_bytes(), &config, None).unwrap();
    outcome
        .events
        .into_iter()
        .find(|e| matches!(&e.subject, Subject::User { id: Some(id), .. } if id == ADELE))
        .expect("Adele's signal")
}

fn arm_id(file: &str) -> String {
    let body: Value =
        serde_json::from_str(&common::event_body(&format!("sentinel/{file}"))).unwrap();
    body["object"]["id"].as_str().unwrap().to_owned()
}

const TWO_ACCOUNTS: &str = "incident-two-accounts.json";
const DEFENDER: &str = "incident-defender-portal.json";
const DEFENDER_ID: &str = "2972395";

fn worker(s: &StandIn, ledger: &Ledger, policy: Policy, path: CommentPath) -> Worker {
    let mut worker = worker_with(s, ledger.clone(), policy, 2);
    let commenter = s.incident_commenter(&worker.graph, path, 2);
    worker.incident_comments = Some(Arc::new(commenter));
    worker
}

async fn case_of(ledger: &Ledger, signal: &RiskEvent) -> (Case, u64) {
    ledger.find_case(&signal.event_id).await.unwrap().unwrap()
}

fn arm_comments(s: &StandIn, file: &str) -> Vec<Value> {
    s.with(|d| d.sentinel.comments(&arm_id(file)))
}

fn message(comment: &Value) -> String {
    comment["properties"]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The ARM comment PUTs the stand-in answered, as (path and query, status).
fn arm_puts(s: &StandIn) -> Vec<(String, u16)> {
    s.with(|d| {
        d.sentinel
            .calls
            .iter()
            .filter(|(c, _)| c.starts_with("PUT "))
            .cloned()
            .collect()
    })
}

fn graph_posts(s: &StandIn) -> usize {
    s.writes()
        .iter()
        .filter(|c| c.starts_with("POST /v1.0/security/incidents/"))
        .count()
}

/// Every temporary password the tenant holds now; the test fails if there is none (so the
/// "no password in the comment" check cannot pass vacuously).
fn passwords(s: &StandIn) -> Vec<String> {
    let found: Vec<String> = s.with(|d| {
        d.users
            .iter()
            .filter_map(|u| u["passwordProfile"]["password"].as_str().map(str::to_owned))
            .collect()
    });
    assert!(!found.is_empty(), "a password was set");
    found
}

fn assert_no_password(s: &StandIn, text: &str) {
    for password in passwords(s) {
        assert!(!text.contains(&password), "a password in a comment: {text}");
        // The password did go out, through its channel only.
        assert!(
            s.with(|d| d
                .mails
                .iter()
                .any(|(_, m)| m.to_string().contains(&password))),
            "the password mail carries it"
        );
    }
}

fn enforce() -> Policy {
    policy(Mode::Enforce)
}

#[tokio::test]
async fn an_incident_case_comments_its_outcome_through_arm() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS)));
    let ledger = memory_ledger();
    let worker = worker(&s, &ledger, enforce(), CommentPath::Arm);
    let signal = incident_signal(TWO_ACCOUNTS);

    let disposition = worker.handle(&WorkItem::Risk(signal.clone())).await;
    assert!(
        matches!(disposition, Disposition::Done(_)),
        "{disposition:?}"
    );
    let (case, _) = case_of(&ledger, &signal).await;
    assert_eq!(case.status, CaseStatus::Completed);

    // One PUT, on the documented path with the exact api-version and the case's comment id.
    let puts = arm_puts(&s);
    assert_eq!(puts.len(), 1, "{puts:?}");
    let expected = format!(
        "PUT {}/comments/{}?api-version=2025-09-01",
        arm_id(TWO_ACCOUNTS),
        comment_id(&case.case_id)
    );
    assert_eq!(puts[0], (expected, 201));
    let comments = arm_comments(&s, TWO_ACCOUNTS);
    assert_eq!(comments.len(), 1);
    let text = message(&comments[0]);
    for expected in [
        case.case_id.as_str(),
        ADELE_UPN,
        "is **completed**",
        "mode enforce",
        "revoke_sessions: done",
        "block_sign_in: done",
        "reset_password: done",
        "confirm_compromised: done",
        "notify: done",
        "Safety rails: none applied.",
        "**Next**: nobody; the case is closed.",
        "Sign-ins blocked with AADSTS53011",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert_no_password(&s, &text);
    // The token was an ARM token (the stand-in refuses Graph tokens on ARM).
    assert_eq!(s.with(|d| d.sentinel.issued.len()), 1);
    // Recorded on the case.
    let written = &case.write_back.incidents[0];
    assert_eq!(written.state, CommentState::Written);
    assert_eq!(written.incident.number, Some(4711));
    assert!(written.written.is_some());
    assert!(case.write_back.claim.is_none(), "the claim is released");
    let counts = worker.incident_comments.as_ref().unwrap().counts();
    assert_eq!((counts.written, counts.failed), (1, 0));
    // `cases show` tells it.
    let report = risk_responder::respond::report::CaseReport(&case).to_string();
    assert!(
        report.contains("incident #4711: comment written via arm"),
        "{report}"
    );
}

#[tokio::test]
async fn a_failed_arm_comment_is_kept_for_retry_and_the_retry_overwrites_the_same_comment() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS));
        d.sentinel.unavailable_next = 2; // both attempts of the first write
    });
    let ledger = memory_ledger();
    let worker = worker(&s, &ledger, enforce(), CommentPath::Arm);
    let signal = incident_signal(TWO_ACCOUNTS);
    let item = WorkItem::Risk(signal.clone());
    let (logs, _guard) = common::Logs::capture();

    // Remediation is done; the comment failed: the message is kept, the failure is on the case,
    // in the log and in the counts.
    let first = worker.handle(&item).await;
    assert!(first.is_retry(), "{first:?}");
    let Disposition::Retry(reason) = &first else {
        unreachable!()
    };
    assert!(reason.contains("incident comment failed"), "{reason}");
    let (case, _) = case_of(&ledger, &signal).await;
    assert_eq!(case.status, CaseStatus::Completed);
    let comment = &case.write_back.incidents[0];
    assert_eq!(comment.state, CommentState::Failed);
    assert_eq!(comment.failures, 1);
    assert!(
        comment
            .last_error
            .as_deref()
            .unwrap()
            .contains("ARM error 503"),
        "{comment:?}"
    );
    assert!(
        case.history
            .iter()
            .any(|h| h.what.contains("comment failed, kept for retry")),
        "{:?}",
        case.history
    );
    assert!(
        logs.text().contains("incident comment failed"),
        "{}",
        logs.text()
    );
    assert_eq!(
        worker.incident_comments.as_ref().unwrap().counts().failed,
        1
    );
    assert!(arm_comments(&s, TWO_ACCOUNTS).is_empty());
    let remediated = (resets(&s), revokes(&s), mail_subjects(&s).len());
    assert_eq!((remediated.0, remediated.1), (1, 1));

    // The redelivery retries only the comment.
    let second = worker.handle(&item).await;
    assert!(matches!(second, Disposition::Done(_)), "{second:?}");
    assert_eq!(
        (resets(&s), revokes(&s), mail_subjects(&s).len()),
        remediated,
        "remediation is not repeated"
    );
    let comments = arm_comments(&s, TWO_ACCOUNTS);
    assert_eq!(comments.len(), 1);
    let (case, version) = case_of(&ledger, &signal).await;
    assert_eq!(case.write_back.incidents[0].state, CommentState::Written);

    // Another redelivery writes nothing: the incident shows this outcome already.
    let puts = arm_puts(&s).len();
    assert!(!worker.handle(&item).await.is_retry());
    assert_eq!(arm_puts(&s).len(), puts);

    // Had the record of the write been lost, the retry PUTs the same comment id: replaced
    // (200), still one comment.
    let mut forgotten = case.clone();
    forgotten.write_back.incidents[0].written = None;
    ledger
        .save_case(&forgotten, version)
        .await
        .unwrap()
        .unwrap();
    assert!(!worker.handle(&item).await.is_retry());
    let puts = arm_puts(&s);
    assert_eq!(puts.last().unwrap().1, 200, "{puts:?}");
    let comments = arm_comments(&s, TWO_ACCOUNTS);
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0]["name"], comment_id(&case.case_id).as_str());
    assert_no_password(&s, &message(&comments[0]));
}

#[tokio::test]
async fn a_report_only_comment_gives_the_plan_and_the_approved_outcome_replaces_it() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS)));
    let ledger = memory_ledger();
    let worker = worker(&s, &ledger, policy(Mode::ReportOnly), CommentPath::Arm);
    let signal = incident_signal(TWO_ACCOUNTS);

    assert!(
        !worker
            .handle(&WorkItem::Risk(signal.clone()))
            .await
            .is_retry()
    );
    assert!(
        s.writes().is_empty(),
        "report-only changes nothing in the tenant"
    );
    let (case, version) = case_of(&ledger, &signal).await;
    let comments = arm_comments(&s, TWO_ACCOUNTS);
    assert_eq!(comments.len(), 1);
    let plan = message(&comments[0]);
    for expected in [
        "(report-only: nothing was changed; this is the plan)",
        "Planned actions:",
        "revoke_sessions: planned",
        "reset_password: planned",
        "confirm_compromised: planned",
        &format!("`risk-responder cases approve {}`", case.case_id),
    ] {
        assert!(
            plan.contains(expected),
            "{expected:?} missing from:\n{plan}"
        );
    }

    // A person approves; the worker carries the plan out; the same comment now says so.
    let mut approved = case.clone();
    approved
        .approve(
            "alice",
            "verified with the user",
            approved.plan_version,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    ledger.save_case(&approved, version).await.unwrap().unwrap();
    let resume = WorkItem::Resume {
        tenant_id: TENANT.into(),
        case_id: case.case_id.clone(),
    };
    assert!(!worker.handle(&resume).await.is_retry());
    let comments = arm_comments(&s, TWO_ACCOUNTS);
    assert_eq!(
        comments.len(),
        1,
        "the later state overwrites the same comment"
    );
    let done = message(&comments[0]);
    assert!(done.contains("reset_password: done"), "{done}");
    assert!(done.contains("Decision: approve by alice"), "{done}");
    assert!(!done.contains("report-only"), "{done}");
    assert_eq!(arm_puts(&s).last().unwrap().1, 200);
    assert_no_password(&s, &done);
}

#[tokio::test]
async fn the_graph_path_posts_once_per_outcome_and_never_twice_on_redelivery() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.sentinel.add_defender_incident(DEFENDER_ID));
    let ledger = memory_ledger();
    let mut policy = enforce();
    // A protected account: the case waits for a person first.
    policy.safety.protected_user_ids = vec![ADELE.to_owned()];
    let worker = worker(&s, &ledger, policy, CommentPath::Graph);
    let signal = incident_signal(DEFENDER);
    let item = WorkItem::Risk(signal.clone());

    assert!(!worker.handle(&item).await.is_retry());
    let (case, _) = case_of(&ledger, &signal).await;
    assert_eq!(case.status, CaseStatus::AwaitingApproval);
    let comments = s.with(|d| d.sentinel.defender_comments(DEFENDER_ID));
    assert_eq!(comments.len(), 1);
    let waiting = comments[0]["comment"].as_str().unwrap().to_owned();
    assert!(waiting.contains("is **awaiting approval**"), "{waiting}");
    assert!(waiting.contains("held (protected account"), "{waiting}");
    assert!(
        waiting.contains(&format!("`cases approve {}`", case.case_id)),
        "who must act next: {waiting}"
    );
    assert_eq!(graph_posts(&s), 1);
    // Nothing goes through ARM on this path.
    assert!(s.with(|d| d.sentinel.calls.is_empty()));

    // Redeliveries post nothing more.
    for _ in 0..3 {
        assert!(!worker.handle(&item).await.is_retry());
    }
    assert_eq!(graph_posts(&s), 1);

    // A post whose answer was lost (the case has no record of it): the incident already
    // carries this outcome's marker, so it is not posted again.
    let (case, version) = case_of(&ledger, &signal).await;
    let mut forgotten = case.clone();
    forgotten.write_back.incidents[0].written = None;
    ledger
        .save_case(&forgotten, version)
        .await
        .unwrap()
        .unwrap();
    assert!(!worker.handle(&item).await.is_retry());
    assert_eq!(graph_posts(&s), 1);
    assert_eq!(
        s.with(|d| d.sentinel.defender_comments(DEFENDER_ID)).len(),
        1
    );

    // A later state posts a new comment.
    let (case, version) = case_of(&ledger, &signal).await;
    let mut approved = case.clone();
    approved
        .approve(
            "bob",
            "verified by phone",
            approved.plan_version,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    ledger.save_case(&approved, version).await.unwrap().unwrap();
    let resume = WorkItem::Resume {
        tenant_id: TENANT.into(),
        case_id: case.case_id.clone(),
    };
    assert!(!worker.handle(&resume).await.is_retry());
    let comments = s.with(|d| d.sentinel.defender_comments(DEFENDER_ID));
    assert_eq!(comments.len(), 2);
    let completed = comments[1]["comment"].as_str().unwrap();
    assert!(completed.contains("is **completed**"), "{completed}");
    assert!(completed.contains("reset_password: done"), "{completed}");
    for c in &comments {
        assert_no_password(&s, c["comment"].as_str().unwrap());
    }
    assert!(!worker.handle(&resume).await.is_retry());
    assert_eq!(graph_posts(&s), 2);
}

#[tokio::test]
async fn a_refused_graph_comment_is_visible_and_retried_without_repeating_remediation() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.sentinel.add_defender_incident(DEFENDER_ID);
        // SecurityIncident.ReadWrite.All not granted yet.
        d.faults
            .forbidden
            .push((Method::GET, "/security/incidents".into()));
    });
    let ledger = memory_ledger();
    let worker = worker(&s, &ledger, enforce(), CommentPath::Graph);
    let signal = incident_signal(DEFENDER);
    let item = WorkItem::Risk(signal.clone());

    let first = worker.handle(&item).await;
    assert!(first.is_retry(), "{first:?}");
    let (case, _) = case_of(&ledger, &signal).await;
    assert_eq!(case.status, CaseStatus::Completed);
    let comment = &case.write_back.incidents[0];
    assert_eq!(comment.state, CommentState::Failed);
    assert!(
        comment.last_error.as_deref().unwrap().contains("403"),
        "{comment:?}"
    );
    let report = risk_responder::respond::report::CaseReport(&case).to_string();
    assert!(report.contains("comment failed"), "{report}");
    let remediated = (resets(&s), revokes(&s));

    // Still refused: still kept, nothing posted, remediation untouched.
    assert!(worker.handle(&item).await.is_retry());
    assert_eq!(graph_posts(&s), 0);

    // The permission is granted: the next delivery posts, once.
    s.with(|d| d.faults.forbidden.clear());
    assert!(matches!(worker.handle(&item).await, Disposition::Done(_)));
    assert!(!worker.handle(&item).await.is_retry());
    assert_eq!(graph_posts(&s), 1);
    assert_eq!((resets(&s), revokes(&s)), remediated);
    let (case, _) = case_of(&ledger, &signal).await;
    let comment = &case.write_back.incidents[0];
    assert_eq!(comment.state, CommentState::Written);
    assert_eq!((comment.attempts, comment.failures), (3, 2));
    let counts = worker.incident_comments.as_ref().unwrap().counts();
    assert_eq!((counts.written, counts.failed), (1, 2));
}

#[tokio::test]
async fn incidents_that_cannot_be_written_to_are_recorded_not_retried() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let ledger = memory_ledger();
    // Graph path, but the incident was created by Sentinel itself (no Defender incident id).
    let worker_graph = worker(&s, &ledger, enforce(), CommentPath::Graph);
    let signal = incident_signal(TWO_ACCOUNTS);
    let disposition = worker_graph.handle(&WorkItem::Risk(signal.clone())).await;
    assert!(
        matches!(disposition, Disposition::Done(_)),
        "{disposition:?}"
    );
    let (case, _) = case_of(&ledger, &signal).await;
    let comment = &case.write_back.incidents[0];
    assert_eq!(comment.state, CommentState::Unwritable);
    assert!(
        comment
            .last_error
            .as_deref()
            .unwrap()
            .contains("not a Defender XDR incident (provider \"Azure Sentinel\")"),
        "{comment:?}"
    );
    assert_eq!(graph_posts(&s), 0);
    assert_eq!(
        worker_graph
            .incident_comments
            .as_ref()
            .unwrap()
            .counts()
            .unwritable,
        1
    );

    // ARM path, an incident the workspace does not have (deleted): 404, recorded, not retried.
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS)); // the role on the workspace
        d.sentinel.incidents.clear(); // and the incident deleted
    });
    let ledger = memory_ledger();
    let worker_arm = worker(&s, &ledger, enforce(), CommentPath::Arm);
    let disposition = worker_arm.handle(&WorkItem::Risk(signal.clone())).await;
    assert!(
        matches!(disposition, Disposition::Done(_)),
        "{disposition:?}"
    );
    let (case, _) = case_of(&ledger, &signal).await;
    let comment = &case.write_back.incidents[0];
    assert_eq!(comment.state, CommentState::Unwritable);
    assert!(
        comment
            .last_error
            .as_deref()
            .unwrap()
            .contains("404 NotFound"),
        "{comment:?}"
    );
    let calls = arm_puts(&s).len();
    assert!(!worker_arm.handle(&WorkItem::Risk(signal)).await.is_retry());
    assert_eq!(arm_puts(&s).len(), calls, "not retried");
}

#[tokio::test]
async fn without_write_back_or_without_an_incident_nothing_is_written() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS)));
    // Off: the worker has no commenter.
    let ledger = memory_ledger();
    let off = worker_with(&s, ledger.clone(), enforce(), 2);
    let signal = incident_signal(TWO_ACCOUNTS);
    assert!(!off.handle(&WorkItem::Risk(signal.clone())).await.is_retry());
    assert!(s.with(|d| d.sentinel.calls.is_empty()));
    let (case, _) = case_of(&ledger, &signal).await;
    assert!(case.write_back.is_empty());

    // An alert (not an incident) names no incident to write to.
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let ledger = memory_ledger();
    let on = worker(&s, &ledger, enforce(), CommentPath::Arm);
    assert!(!on.handle(&adele_item("alert-1")).await.is_retry());
    assert!(s.with(|d| d.sentinel.calls.is_empty()));
}

#[tokio::test]
async fn a_skipped_case_tells_its_incident() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS)));
    let ledger = memory_ledger();
    let mut policy = enforce();
    policy.safety.protected_user_ids = vec![ADELE.to_owned()];
    let worker = worker(&s, &ledger, policy, CommentPath::Arm);
    let signal = incident_signal(TWO_ACCOUNTS);
    assert!(
        !worker
            .handle(&WorkItem::Risk(signal.clone()))
            .await
            .is_retry()
    );
    let (case, version) = case_of(&ledger, &signal).await;
    assert_eq!(case.status, CaseStatus::AwaitingApproval);
    let mut skipped = case.clone();
    skipped
        .skip("carol", "known travel", time::OffsetDateTime::now_utc())
        .unwrap();
    ledger.save_case(&skipped, version).await.unwrap().unwrap();
    let resume = WorkItem::Resume {
        tenant_id: TENANT.into(),
        case_id: case.case_id.clone(),
    };
    assert!(!worker.handle(&resume).await.is_retry());
    let comments = arm_comments(&s, TWO_ACCOUNTS);
    assert_eq!(comments.len(), 1);
    let text = message(&comments[0]);
    assert!(text.contains("is **skipped**"), "{text}");
    assert!(text.contains("Decision: skip by carol"), "{text}");
}

/// The ARM stand-in is as strict as ARM: a documented api-version, ARM's error envelope, an ARM token,
/// the Responder role, the documented limits.
#[tokio::test]
async fn the_arm_stand_in_refuses_what_arm_refuses() {
    let s = start().await;
    let incident = arm_id(TWO_ACCOUNTS);
    s.with(|d| d.sentinel.add_incident(&incident));
    let http = reqwest::Client::new();
    let token = |scope: &'static str| {
        let http = http.clone();
        let url = format!("{}/{TENANT}/oauth2/v2.0/token", s.authority());
        async move {
            let r: Value = http
                .post(url)
                .form(&[
                    ("client_id", CLIENT_ID),
                    ("client_secret", CLIENT_SECRET),
                    ("grant_type", "client_credentials"),
                    ("scope", scope),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["access_token"].as_str().unwrap().to_owned()
        }
    };
    let arm = token("https://management.azure.com/.default").await;
    let graph = token("https://graph.microsoft.com/.default").await;
    let url = |version: Option<&str>| {
        format!(
            "{}{incident}/comments/4bb36b7b-26ff-4d1c-9cbe-0d8ab3da0014{}",
            s.arm_url(),
            version
                .map(|v| format!("?api-version={v}"))
                .unwrap_or_default()
        )
    };
    let body = serde_json::json!({"properties": {"message": "Some message"}});
    let put = |url: String, token: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .put(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let code = |v: &Value| v["error"]["code"].as_str().unwrap().to_owned();

    let (status, v) = put(url(None), arm.clone(), body.clone()).await;
    assert_eq!(
        (status, code(&v).as_str()),
        (400, "MissingApiVersionParameter")
    );
    let (status, v) = put(url(Some("2018-06-01")), arm.clone(), body.clone()).await;
    assert_eq!(
        (status, code(&v).as_str()),
        (400, "NoRegisteredProviderFound")
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2025-09-01")
    );
    let (status, v) = put(url(Some("2025-09-01")), graph, body.clone()).await;
    assert_eq!(
        (status, code(&v).as_str()),
        (401, "InvalidAuthenticationTokenAudience")
    );
    let long = serde_json::json!({"properties": {"message": "x".repeat(30_001)}});
    let (status, v) = put(url(Some("2025-09-01")), arm.clone(), long).await;
    assert_eq!((status, code(&v).as_str()), (400, "BadRequest"));
    // Counted in UTF-16 code units: 15,001 emoji are 30,002.
    let wide = serde_json::json!({"properties": {"message": "😀".repeat(15_001)}});
    let (status, v) = put(url(Some("2025-09-01")), arm.clone(), wide).await;
    assert_eq!((status, code(&v).as_str()), (400, "BadRequest"));
    let (status, v) = put(url(Some("2025-09-01")), arm.clone(), body.clone()).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["type"], "Microsoft.SecurityInsights/incidents/comments");
    assert_eq!(v["properties"]["message"], "Some message");
    let (status, _) = put(url(Some("2025-09-01")), arm.clone(), body.clone()).await;
    assert_eq!(status, 200);
    // An older documented api-version of the type is served as well.
    let (status, v) = put(url(Some("2022-11-01")), arm.clone(), body.clone()).await;
    assert_eq!(status, 200, "{v}");
    // Not JSON.
    let r = http
        .put(url(Some("2025-09-01")))
        .bearer_auth(&arm)
        .header("content-type", "text/plain")
        .body("Some message")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    // Unknown incident.
    let unknown = url(Some("2025-09-01")).replace("3d2f7a91", "00000000");
    let (status, v) = put(unknown, arm.clone(), body.clone()).await;
    assert_eq!((status, code(&v).as_str()), (404, "NotFound"));
    // Without the Responder role on the workspace.
    s.with(|d| d.sentinel.responder_on.clear());
    let (status, v) = put(url(Some("2025-09-01")), arm.clone(), body).await;
    assert_eq!((status, code(&v).as_str()), (403, "AuthorizationFailed"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Microsoft.SecurityInsights/incidents/comments/write")
    );
}

/// Two workers redelivering the same settled case at once: the one that claims the case's
/// comments posts; the other does not (the Graph post is not idempotent).
#[tokio::test]
async fn concurrent_workers_post_a_comment_once() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.sentinel.add_defender_incident(DEFENDER_ID);
        d.faults
            .unavailable_paths
            .push((Method::GET, "/security/incidents".into()));
    });
    let ledger = memory_ledger();
    let a = worker(&s, &ledger, enforce(), CommentPath::Graph);
    let b = worker(&s, &ledger, enforce(), CommentPath::Graph);
    let signal = incident_signal(DEFENDER);
    assert!(
        a.handle(&WorkItem::Risk(signal.clone())).await.is_retry(),
        "the first comment failed"
    );
    s.with(|d| d.faults.unavailable_paths.clear());
    // Redeliveries of the case's work reach the write-back together.
    let item = WorkItem::Resume {
        tenant_id: TENANT.into(),
        case_id: case_of(&ledger, &signal).await.0.case_id,
    };
    for _ in 0..5 {
        let (x, y) = tokio::join!(a.handle(&item), b.handle(&item));
        assert!(!x.is_retry() || !y.is_retry(), "{x:?} {y:?}");
    }
    assert_eq!(graph_posts(&s), 1);
    assert_eq!(
        s.with(|d| d.sentinel.defender_comments(DEFENDER_ID)).len(),
        1
    );
}

/// The configured product (RR_INCIDENT_COMMENTS unset: ARM, at RR_ARM_BASE_URL): a person skips
/// a case from the CLI, and the incident hears of it.
#[tokio::test]
async fn cases_skip_from_the_cli_tells_the_incident() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS)));
    let dir = std::env::temp_dir().join(format!("writeback-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ledger.sqlite");
    let policy_file = dir.join("policy.toml");
    std::fs::write(
        &policy_file,
        risk_responder::cases::policy::DEFAULT_POLICY
            .replace("mode = \"report-only\"", "mode = \"enforce\"")
            .replace(
                "protected_user_ids = []",
                &format!("protected_user_ids = [\"{ADELE}\"]"),
            ),
    )
    .unwrap();
    let policy = Policy::from_toml(&std::fs::read_to_string(&policy_file).unwrap()).unwrap();
    let store = risk_responder::ledger::sqlite::SqliteStore::open(&path).unwrap();
    let ledger = Ledger::new(Arc::new(store));
    let worker = worker(&s, &ledger, policy, CommentPath::Arm);
    let signal = incident_signal(TWO_ACCOUNTS);
    assert!(
        !worker
            .handle(&WorkItem::Risk(signal.clone()))
            .await
            .is_retry()
    );
    let waiting = message(&arm_comments(&s, TWO_ACCOUNTS)[0]);
    assert!(waiting.contains("is **awaiting approval**"), "{waiting}");

    let cli = async |args: &[&str]| {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
            .args(args)
            .env("RR_LEDGER_PATH", &path)
            .env("RR_POLICY_FILE", &policy_file)
            .env("RR_GRAPH_BASE_URL", s.graph_url())
            .env("RR_LOGIN_AUTHORITY", s.authority())
            .env("RR_ARM_BASE_URL", s.arm_url())
            .env_remove("RR_INCIDENT_COMMENTS")
            .env("RUST_LOG", "warn")
            .env("USER", "dana")
            .output()
            .await
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, out) = cli(&[
        "cases",
        "skip",
        &signal.event_id,
        "--reason",
        "user travelling, verified",
    ])
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("incident #4711: comment written via arm"),
        "{out}"
    );
    let comments = arm_comments(&s, TWO_ACCOUNTS);
    assert_eq!(comments.len(), 1, "the same comment, replaced");
    let skipped = message(&comments[0]);
    assert!(skipped.contains("is **skipped**"), "{skipped}");
    assert!(skipped.contains("Decision: skip by dana"), "{skipped}");
    assert_eq!(resets(&s), 0, "nothing was done to the account");
    std::fs::remove_dir_all(&dir).ok();
}

/// A replay without --enforce is a dry run: no comment reaches the incident, even with the
/// write-back configured.
#[tokio::test]
async fn a_report_only_replay_writes_no_comment() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS)));
    let ledger = std::env::temp_dir().join(format!("replay-wb-{}.sqlite", uuid::Uuid::new_v4()));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .args(["replay", "events/sentinel/incident-two-accounts.json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RR_GRAPH_BASE_URL", s.graph_url())
        .env("RR_LOGIN_AUTHORITY", s.authority())
        .env("RR_ARM_BASE_URL", s.arm_url())
        .env("RR_INCIDENT_COMMENTS", "arm")
        .env("RR_LEDGER_PATH", &ledger)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("completed  ReportOnly"), "{out}");
    assert!(s.with(|d| d.sentinel.calls.is_empty()), "no ARM call");
    assert!(arm_comments(&s, TWO_ACCOUNTS).is_empty());
    std::fs::remove_file(ledger).ok();
}

// ---- what the comment may carry from elsewhere, and its length ----

/// App names and locations come from sign-in logs, which an attacker influences (an app
/// registration's name, a crafted location). Sentinel renders Markdown and HTML in comments:
/// none of it may become a link, an image or markup.
#[tokio::test]
async fn a_hostile_app_name_cannot_put_a_link_into_the_comment() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let hostile_app = "[Reset your password here](https://evil.example/login) ![t](https://evil.example/t.png) <img src=x onerror=alert(1)> **urgent**";
    let hostile_city = "](https://evil.example) `x` | # !";
    s.with(|d| {
        for sign_in in d.sign_ins.iter_mut() {
            sign_in["appDisplayName"] = hostile_app.into();
            sign_in["location"]["city"] = hostile_city.into();
        }
        d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS));
    });
    let ledger = memory_ledger();
    let worker = worker(&s, &ledger, enforce(), CommentPath::Arm);
    let signal = incident_signal(TWO_ACCOUNTS);
    let disposition = worker.handle(&WorkItem::Risk(signal)).await;
    assert!(
        matches!(disposition, Disposition::Done(_)),
        "{disposition:?}"
    );
    let comments = arm_comments(&s, TWO_ACCOUNTS);
    let text = message(&comments[0]);
    assert!(
        text.contains(r"app \[Reset your password here\]\(https://evil.example/login\) \!\[t\]\(https://evil.example/t.png\) &lt;img src=x onerror=alert\(1\)&gt; \*\*urgent\*\*"),
        "{text}"
    );
    assert!(
        text.contains(r"\]\(https://evil.example\) \`x\` \| \# \!"),
        "{text}"
    );
    for live in ["](https://evil", "<img", "**urgent**", "`x`"] {
        assert!(!text.contains(live), "{live:?} is live in:\n{text}");
    }
    // Our own formatting is intact.
    assert!(text.contains("**risk-responder**"), "{text}");
}

/// Sentinel counts a comment's 30,000 characters in UTF-16 code units: a comment full of
/// characters outside the Basic Multilingual Plane is shortened to fit, not refused.
#[tokio::test]
async fn a_long_comment_is_shortened_to_30000_utf16_units() {
    let s = start().await;
    seed(&s, "high", "atRisk", 5);
    let wide = "😀".repeat(7_000);
    s.with(|d| {
        for sign_in in d.sign_ins.iter_mut() {
            sign_in["appDisplayName"] = wide.clone().into();
        }
        d.sentinel.add_incident(&arm_id(TWO_ACCOUNTS));
    });
    let ledger = memory_ledger();
    let worker = worker(&s, &ledger, enforce(), CommentPath::Arm);
    let signal = incident_signal(TWO_ACCOUNTS);
    let disposition = worker.handle(&WorkItem::Risk(signal.clone())).await;
    assert!(
        matches!(disposition, Disposition::Done(_)),
        "{disposition:?}"
    );
    let (case, _) = case_of(&ledger, &signal).await;
    assert_eq!(case.write_back.incidents[0].state, CommentState::Written);
    let text = message(&arm_comments(&s, TWO_ACCOUNTS)[0]);
    let units = text.encode_utf16().count();
    assert!((29_000..=30_000).contains(&units), "{units}");
    assert!(text.contains("(shortened;"), "shortened visibly");
    assert!(
        text.ends_with(&risk_responder::cases::comment::marker(
            &case,
            &risk_responder::cases::comment::outcome_key(&case)
        )),
        "the marker line ends it"
    );
}

/// The Graph stand-in holds incident comments to limits and permissions too: a comment over
/// 30,000 UTF-16 units or past 100 comments is refused (400), and an application that may only
/// read incidents gets 403 on POST.
#[tokio::test]
async fn the_graph_incident_stand_in_refuses_long_comments_too_many_and_read_only_apps() {
    let s = start().await;
    s.with(|d| {
        d.sentinel.add_defender_incident(DEFENDER_ID);
        // 100 comments in a row: past the security budget's 50 a minute, which is not tested here.
        d.limits.enabled = false;
    });
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", s.authority()))
        .form(&[
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let url = format!(
        "{}/security/incidents/{DEFENDER_ID}/comments",
        s.graph_url()
    );
    let post = |comment: String| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({
                    "@odata.type": "microsoft.graph.security.alertComment",
                    "comment": comment,
                }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    // 15,001 emoji: 15,001 characters, 30,002 UTF-16 units.
    let (status, v) = post("😀".repeat(15_001)).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = post("😀".repeat(15_000)).await;
    assert_eq!(status, 200, "{v}");
    for i in 1..100 {
        let (status, v) = post(format!("comment {i}")).await;
        assert_eq!(status, 200, "{i}: {v}");
    }
    let (status, v) = post("one too many".into()).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100 comments"),
        "{v}"
    );
    s.with(|d| d.sentinel.add_defender_incident("2972396"));
    s.with(|d| d.sentinel.defender_read_only = true);
    let url = format!("{}/security/incidents/2972396/comments", s.graph_url());
    let r = http
        .post(url)
        .bearer_auth(&token)
        .json(&serde_json::json!({"comment": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // Reading still works.
    let r = http
        .get(format!("{}/security/incidents/2972396", s.graph_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// The application may read incidents but not comment: the write-back reads the incident,
/// its POST is refused, the failure is recorded and the item kept; once the permission is
/// granted the comment is posted once.
#[tokio::test]
async fn a_graph_comment_refused_for_want_of_readwrite_is_kept_and_posted_once_granted() {
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| {
        d.sentinel.add_defender_incident(DEFENDER_ID);
        d.sentinel.defender_read_only = true;
    });
    let ledger = memory_ledger();
    let worker = worker(&s, &ledger, enforce(), CommentPath::Graph);
    let signal = incident_signal(DEFENDER);
    let item = WorkItem::Risk(signal.clone());
    assert!(worker.handle(&item).await.is_retry());
    let (case, _) = case_of(&ledger, &signal).await;
    let comment = &case.write_back.incidents[0];
    assert_eq!(comment.state, CommentState::Failed);
    assert!(
        comment.last_error.as_deref().unwrap().contains("403"),
        "{comment:?}"
    );
    assert!(
        s.with(|d| d.sentinel.defender_comments(DEFENDER_ID))
            .is_empty()
    );
    s.with(|d| d.sentinel.defender_read_only = false);
    assert!(matches!(worker.handle(&item).await, Disposition::Done(_)));
    assert!(!worker.handle(&item).await.is_retry());
    assert_eq!(
        s.with(|d| d.sentinel.defender_comments(DEFENDER_ID)).len(),
        1
    );
}

/// Megan's signal from the incident whose accounts carry only `accountName` + `upnSuffix`:
/// the stand-in's directory has no such user, so no case can be opened for her.
fn unknown_account_signal() -> RiskEvent {
    let body = common::event_body("sentinel/incident-account-name-upnsuffix.json");
    let config = risk_responder::config::Config::default();
    let outcome = risk_responder::ingress::sentinel::parse(body.as_bytes(), &config, None).unwrap();
    outcome
        .events
        .into_iter()
        .find(|e| {
            matches!(&e.subject, Subject::User { upn: Some(upn), .. }
                if upn == "megan.bowen@contoso.onmicrosoft.com")
        })
        .expect("Megan's signal")
}

/// An incident account that names no user in the directory opens no case, and the incident is
/// told so (the analyst sees it on the incident, not only in the playbook's run history): one
/// comment, the same on redelivery, on either path.
#[tokio::test]
async fn an_incident_account_with_no_user_is_reported_on_the_incident_once() {
    // ARM: the comment id comes from the signal, so a redelivery replaces the same comment.
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    let signal = unknown_account_signal();
    let arm = signal.resource_data.as_ref().unwrap()["incidentArmId"]
        .as_str()
        .unwrap()
        .to_owned();
    s.with(|d| d.sentinel.add_incident(&arm));
    let ledger = memory_ledger();
    let on = worker(&s, &ledger, enforce(), CommentPath::Arm);
    let item = WorkItem::Risk(signal.clone());
    for _ in 0..2 {
        let disposition = on.handle(&item).await;
        assert!(
            matches!(disposition, Disposition::Done(_)),
            "{disposition:?}"
        );
    }
    assert!(ledger.find_case(&signal.event_id).await.unwrap().is_none());
    let comments = s.with(|d| d.sentinel.comments(&arm));
    assert_eq!(comments.len(), 1, "{comments:?}");
    let text = message(&comments[0]);
    for expected in [
        "could not act on account megan.bowen@contoso.onmicrosoft.com",
        "No case was opened",
        &signal.event_id,
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert_eq!(
        arm_puts(&s).len(),
        2,
        "one comment, written again on redelivery"
    );

    // Graph: the marker finds the earlier post, so a redelivery posts nothing more.
    let s = start().await;
    seed(&s, "high", "atRisk", 1);
    s.with(|d| d.sentinel.add_defender_incident(DEFENDER_ID));
    let mut signal = unknown_account_signal();
    signal.resource_data = incident_signal(DEFENDER).resource_data;
    let ledger = memory_ledger();
    let on = worker(&s, &ledger, enforce(), CommentPath::Graph);
    let item = WorkItem::Risk(signal.clone());
    for _ in 0..3 {
        assert!(!on.handle(&item).await.is_retry());
    }
    assert_eq!(graph_posts(&s), 1);
    let comments = s.with(|d| d.sentinel.defender_comments(DEFENDER_ID));
    assert!(
        comments[0]["comment"]
            .as_str()
            .unwrap()
            .contains("No case was opened"),
        "{comments:?}"
    );
}
