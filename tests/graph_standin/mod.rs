//! The Graph simulator (`crates/graph-simulator`) as the tests use it: started on a free
//! port, with fixtures (Adele at risk, her manager, 53011 sign-ins) and worker builders.
#![allow(dead_code)]

use std::sync::Arc;

pub use risk_responder::demo::SimulatedClients;
pub use risk_responder::demo::simulator::*;
use serde_json::{Value, json};

/// The simulator under the name the tests use.
pub type StandIn = GraphSimulator;

/// Starts a simulator with an empty directory.
pub async fn start() -> StandIn {
    risk_responder::demo::simulator::start()
        .await
        .expect("start the Graph simulator")
}

/// A policy: the embedded one in `mode`.
pub fn policy(mode: risk_responder::cases::Mode) -> risk_responder::cases::Policy {
    let mut policy = risk_responder::cases::Policy::default_policy();
    policy.mode = mode;
    policy
}

/// A worker over this simulator and `ledger` with `policy`.
pub fn worker_with(
    s: &StandIn,
    ledger: risk_responder::ledger::Ledger,
    policy: risk_responder::cases::Policy,
    max_attempts: u32,
) -> risk_responder::respond::Worker {
    // Workers on one ledger share the scarce Graph budgets through it, as in Lambda.
    let limiter = Arc::new(risk_responder::graph::limiter::SharedLimiter::new(
        ledger.clone(),
        risk_responder::graph::limiter::Limits::published(1.0),
    ));
    let graph = s.client_with(
        risk_responder::graph::ClientCredential::Secret(
            risk_responder::support::secret::SecretString::new(CLIENT_SECRET),
        ),
        max_attempts,
        limiter,
    );
    let mut worker = risk_responder::respond::Worker::new(
        ledger,
        graph,
        Arc::new(policy),
        None,
        None,
        vec![TENANT.to_owned()],
    );
    // Sealing temporary passwords until they are delivered, as a deployed worker does.
    worker.sealer = risk_responder::vault::local::embedded_dev::<
        risk_responder::graph::credential::GraphSecrets,
    >()
    .unwrap()
    .intent_sealer;
    worker
}

/// A worker over this simulator and `ledger` with `policy`, using `share` of the tenant's
/// Identity Protection budget (the rest left to the tenant's other apps).
pub fn worker_sharing(
    s: &StandIn,
    ledger: risk_responder::ledger::Ledger,
    policy: risk_responder::cases::Policy,
    max_attempts: u32,
    share: f64,
) -> risk_responder::respond::Worker {
    let limiter = Arc::new(risk_responder::graph::limiter::SharedLimiter::new(
        ledger.clone(),
        risk_responder::graph::limiter::Limits::published(share),
    ));
    let graph = s.client_with(
        risk_responder::graph::ClientCredential::Secret(
            risk_responder::support::secret::SecretString::new(CLIENT_SECRET),
        ),
        max_attempts,
        limiter,
    );
    risk_responder::respond::Worker::new(
        ledger,
        graph,
        Arc::new(policy),
        None,
        None,
        vec![TENANT.to_owned()],
    )
}

/// A client of this simulator that follows at most `max_pages` pages of a listing, with
/// `limits` in-process.
pub fn paged_client(
    s: &StandIn,
    max_pages: usize,
    limits: risk_responder::graph::limiter::Limits,
) -> risk_responder::graph::GraphClient {
    use risk_responder::graph::{ClientCredential, GraphClient, RetryPolicy, TokenProvider};
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenProvider::new(
        http.clone(),
        s.authority(),
        CLIENT_ID,
        ClientCredential::Secret(risk_responder::support::secret::SecretString::new(
            CLIENT_SECRET,
        )),
        "https://graph.microsoft.com/.default",
    ));
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_secs(5),
        request_timeout: std::time::Duration::from_secs(5),
        max_pages,
    };
    GraphClient::new(http, s.graph_url(), tokens, retry).with_limiter(Arc::new(
        risk_responder::graph::limiter::LocalLimiter::new(limits),
    ))
}

/// A bearer token of our application for raw requests to the simulator.
pub async fn raw_token(s: &StandIn) -> String {
    s.secret_client(1)
        .tokens()
        .token(TENANT)
        .await
        .expect("a token")
        .expose()
        .to_owned()
}

/// `POST /v1.0/$batch` with `requests`, as sent by hand.
pub async fn raw_batch(s: &StandIn, token: &str, requests: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1.0/$batch", s.base))
        .bearer_auth(token)
        .json(&json!({ "requests": requests }))
        .send()
        .await
        .expect("the batch is answered")
}

/// Members of each `$batch` the simulator accepted ("METHOD url"), in order.
pub fn batches(s: &StandIn) -> Vec<Vec<String>> {
    s.with(|d| d.batches.clone())
}

/// A worker over this simulator with the embedded policy switched to enforce.
pub fn enforcing_worker(
    s: &StandIn,
    ledger: risk_responder::ledger::Ledger,
    max_attempts: u32,
) -> risk_responder::respond::Worker {
    worker_with(
        s,
        ledger,
        policy(risk_responder::cases::Mode::Enforce),
        max_attempts,
    )
}

/// A ledger in memory.
pub fn memory_ledger() -> risk_responder::ledger::Ledger {
    risk_responder::ledger::Ledger::new(Arc::new(
        risk_responder::ledger::sqlite::SqliteStore::in_memory().unwrap(),
    ))
}

/// How many times sessions were revoked (Graph answered `revokeSignInSessions` with 200).
pub fn revokes(s: &StandIn) -> usize {
    s.with(|d| d.revoked.len())
}

/// How many password resets (PATCH with a passwordProfile) Graph received.
pub fn resets(s: &StandIn) -> usize {
    s.with(|d| d.password_resets)
}

/// Mails sent, as (sender, subject).
pub fn mail_subjects(s: &StandIn) -> Vec<String> {
    s.with(|d| {
        d.mails
            .iter()
            .map(|(_, m)| m["message"]["subject"].as_str().unwrap_or("").to_owned())
            .collect()
    })
}

/// The password a user holds now, as Graph last set it.
pub fn current_password(s: &StandIn, user: &str) -> Option<String> {
    s.with(|d| {
        d.users
            .iter()
            .find(|u| u["id"] == user)
            .and_then(|u| u["passwordProfile"]["password"].as_str().map(str::to_owned))
    })
}

/// The temporary password a password mail carries.
pub fn mailed_password(body: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("Temporary password (must be changed at next sign-in): "))
        .expect("the mail carries a password")
        .trim()
        .to_owned()
}

/// Bodies of the temporary-password mails sent, in the order sent.
pub fn password_mail_bodies(s: &StandIn) -> Vec<String> {
    s.with(|d| {
        d.mails
            .iter()
            .filter(|(_, m)| {
                m["message"]["subject"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Temporary password")
            })
            .map(|(_, m)| m["message"]["body"]["content"].as_str().unwrap().to_owned())
            .collect()
    })
}

// ---- directory fixtures ----

pub const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
pub const ADELE: &str = "6e7b768e-07e2-4810-8459-485f84f8f204";
pub const ADELE_UPN: &str = "adele.vance@contoso.onmicrosoft.com";
pub const MANAGER: &str = "a1b2c3d4-0000-4000-8000-00000000beef";

/// Adele (at risk, `risk_level`), her manager, and `blocked` recent 53011 sign-ins plus noise.
pub fn seed(s: &GraphSimulator, risk_level: &str, risk_state: &str, blocked: usize) {
    let now = time::OffsetDateTime::now_utc();
    let iso = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    s.with(|d| {
        d.users.push(json!({"id": ADELE, "userPrincipalName": ADELE_UPN, "displayName": "Adele Vance", "accountEnabled": true, "mail": ADELE_UPN}));
        d.users.push(json!({"id": MANAGER, "userPrincipalName": "miriam.graham@contoso.onmicrosoft.com", "displayName": "Miriam Graham", "accountEnabled": true, "mail": "miriam.graham@contoso.onmicrosoft.com"}));
        d.managers.insert(ADELE.into(), MANAGER.into());
        d.risky_users.insert(ADELE.into(), json!({
            "id": ADELE, "isDeleted": false, "isProcessing": false,
            "riskLastUpdatedDateTime": iso(now), "riskLevel": risk_level, "riskState": risk_state,
            "riskDetail": "none", "userDisplayName": "Adele Vance", "userPrincipalName": ADELE_UPN
        }));
        for i in 0..blocked {
            d.sign_ins.push(sign_in(&format!("blocked-{i}"), ADELE, 53011, iso(now - time::Duration::seconds(300 + 10 * i as i64))));
        }
        // Noise the filter must exclude: another error, an old one, another user.
        d.sign_ins.push(sign_in("ok-1", ADELE, 0, iso(now - time::Duration::minutes(3))));
        d.sign_ins.push(sign_in("old-1", ADELE, 53011, iso(now - time::Duration::days(3))));
        d.sign_ins.push(sign_in("other-1", MANAGER, 53011, iso(now - time::Duration::minutes(1))));
    });
}

/// A high-risk Sentinel signal about Adele, as a work item.
pub fn adele_item(event_id: &str) -> risk_responder::queue::WorkItem {
    use risk_responder::event::{EventSource, RiskEvent, RiskLevel, Subject};
    risk_responder::queue::WorkItem::Risk(RiskEvent {
        event_id: event_id.into(),
        tenant_id: TENANT.into(),
        source: EventSource::Sentinel,
        subject: Subject::User {
            id: Some(ADELE.into()),
            upn: None,
        },
        risk_level: RiskLevel::High,
        detected_at: time::OffsetDateTime::now_utc(),
        source_id: "alert-1".into(),
        resource_data: None,
        origin: None,
    })
}

fn sign_in(id: &str, user: &str, code: i64, at: String) -> Value {
    json!({
        "id": id, "createdDateTime": at, "userDisplayName": "Adele Vance",
        "userPrincipalName": ADELE_UPN, "userId": user, "appId": "00000002-0000-0ff1-ce00-000000000000",
        "appDisplayName": "Office 365 Exchange Online", "ipAddress": "203.0.113.77",
        "clientAppUsed": "Browser", "conditionalAccessStatus": "notApplied",
        "location": { "city": "Lagos", "state": "Lagos", "countryOrRegion": "NG",
                      "geoCoordinates": { "altitude": null, "latitude": 6.45, "longitude": 3.39 } },
        "deviceDetail": { "deviceId": "", "displayName": null, "operatingSystem": "Linux",
                          "browser": "Firefox 140.0", "isCompliant": null, "isManaged": null, "trustType": null },
        "status": { "errorCode": code, "failureReason": if code == 53011 { "User blocked due to risk on home tenant." } else { "" }, "additionalDetails": null },
        "riskLevelAggregated": "high", "riskState": "atRisk"
    })
}
