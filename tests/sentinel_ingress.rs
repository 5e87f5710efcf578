//! Sentinel alerts and incidents over Standard Webhooks HMAC authentication.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use risk_responder::config::Config;
use risk_responder::event::{EventSource, RiskLevel, Subject};

const JWKS: &str = "http://127.0.0.1:9/keys";

#[tokio::test]
async fn signed_alert_becomes_one_event_per_account() {
    let (state, queue) = app(JWKS).await;
    let body = event_body("sentinel/alert-identity-protection.json");
    let headers = signed_headers(WEBHOOK_KEY, "msg_alert_1", &body);
    let (status, content_type, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(content_type, "application/json");
    let events = risk_events(&queue);
    assert_eq!(events.len(), 1);
    // The answer lists, per account, the signal id that `risk-responder cases` resolves.
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["status"], "accepted");
    assert_eq!(
        answer["signals"][0]["signal_id"],
        events[0].event_id.as_str()
    );
    assert_eq!(
        answer["signals"][0]["aad_user_id"],
        "6e7b768e-07e2-4810-8459-485f84f8f204"
    );
    assert_eq!(answer["signals"][0]["tenant_id"], TENANT);
    assert_eq!(events[0].source, EventSource::Sentinel);
    assert_eq!(events[0].tenant_id, TENANT);
    assert_eq!(events[0].risk_level, RiskLevel::Medium);
    assert_eq!(events[0].source_id, "8c3f6f51-0d41-4a3b-8d6b-1d6f2f4b9e77");
    assert_eq!(
        events[0].subject,
        Subject::User {
            id: Some("6e7b768e-07e2-4810-8459-485f84f8f204".into()),
            upn: Some("adele.vance@contoso.onmicrosoft.com".into()),
        }
    );
}

#[tokio::test]
async fn lambda_function_url_event_is_accepted_once_resigned() {
    let (state, queue) = app(JWKS).await;
    let mut request = lambda_event("sentinel/alert.function-url.json");
    let body =
        serde_json::from_str::<serde_json::Value>(&event_body("sentinel/alert.function-url.json"))
            .unwrap()["body"]
            .as_str()
            .unwrap()
            .to_owned();
    for (name, value) in signed_headers(WEBHOOK_KEY, "msg_2pXrUqLc0bJ8y3vQ1Hn5kT", &body) {
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let (status, _, _) = call(state, request).await;
    assert_eq!(status, 202);
    assert_eq!(risk_events(&queue).len(), 1);
}

#[tokio::test]
async fn the_saved_signature_of_the_lambda_event_is_stale() {
    let (state, _) = app(JWKS).await;
    let (status, _, text) = call(state, lambda_event("sentinel/alert.function-url.json")).await;
    assert_eq!(status, 401);
    assert!(text.contains("outside the 300-second tolerance"), "{text}");
}

#[tokio::test]
async fn incident_yields_each_account() {
    let (state, queue) = app(JWKS).await;
    let body = event_body("sentinel/incident-two-accounts.json");
    let headers = signed_headers(WEBHOOK_KEY, "msg_incident_1", &body);
    let (status, _, _) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202);
    let events = risk_events(&queue);
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.risk_level == RiskLevel::High));
    assert!(
        events
            .iter()
            .all(|e| e.source_id == "3d2f7a91-6c0b-4e5f-9a8d-1b2c3d4e5f60")
    );
    assert_ne!(events[0].event_id, events[1].event_id);
}

#[tokio::test]
async fn log_analytics_row_with_entities_as_string_is_understood() {
    let (state, queue) = app(JWKS).await;
    let body = event_body("sentinel/alert-securityalert-table-row.json");
    let headers = signed_headers(WEBHOOK_KEY, "msg_row_1", &body);
    let (status, _, _) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202);
    assert_eq!(risk_events(&queue).len(), 1);
}

#[tokio::test]
async fn missing_signature_is_401_with_a_clear_message() {
    let (state, queue) = app(JWKS).await;
    let body = event_body("sentinel/alert-identity-protection.json");
    let mut headers = signed_headers(WEBHOOK_KEY, "msg_x", &body);
    headers.retain(|(name, _)| *name != "webhook-signature");
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 401);
    assert!(text.contains("missing webhook-signature header"), "{text}");
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn wrong_key_or_tampered_body_is_401() {
    let body = event_body("sentinel/alert-identity-protection.json");
    let (state, queue) = app(JWKS).await;
    let headers = signed_headers("whsec_b2xkb2xkb2xkb2xkb2xkb2xk", "msg_y", &body);
    let (status, _, text) = call(state.clone(), post_sentinel(&body, &headers)).await;
    assert_eq!(status, 401);
    assert!(text.contains("no webhook-signature matches"), "{text}");

    let headers = signed_headers(WEBHOOK_KEY, "msg_z", &body);
    let tampered = body.replace("Medium", "Low");
    let (status, _, _) = call(state, post_sentinel(&tampered, &headers)).await;
    assert_eq!(status, 401);
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn stale_timestamp_is_401() {
    let (state, _) = app(JWKS).await;
    let body = event_body("sentinel/alert-identity-protection.json");
    let old = time::OffsetDateTime::now_utc().unix_timestamp() - 301;
    let raw = risk_responder::ingress::signature::decode_key(WEBHOOK_KEY).unwrap();
    let headers = vec![
        ("webhook-id", "msg_old".to_owned()),
        ("webhook-timestamp", old.to_string()),
        (
            "webhook-signature",
            risk_responder::ingress::signature::sign(&raw, "msg_old", old, body.as_bytes()),
        ),
    ];
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 401);
    assert!(text.contains("tolerance"), "{text}");
}

#[tokio::test]
async fn a_replayed_delivery_is_a_success_that_says_duplicate() {
    // Logic Apps marks a run failed on any 4xx: a delivery already kept gets a 2xx.
    let (state, queue) = app(JWKS).await;
    let body = event_body("sentinel/alert-identity-protection.json");
    let headers = signed_headers(WEBHOOK_KEY, "msg_once", &body);
    let (first, _, first_text) = call(state.clone(), post_sentinel(&body, &headers)).await;
    let (second, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!((first, second), (202, 200));
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["status"], "duplicate");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("already received")
    );
    let first: serde_json::Value = serde_json::from_str(&first_text).unwrap();
    assert_eq!(answer["signals"], first["signals"], "the same signal ids");
    assert_eq!(risk_events(&queue).len(), 1, "kept once");
}

#[tokio::test]
async fn a_delivery_that_could_not_be_kept_may_be_retried() {
    let state = app_with(Config::default(), Arc::new(FailingQueue)).await;
    let body = event_body("sentinel/alert-identity-protection.json");
    let headers = signed_headers(WEBHOOK_KEY, "msg_retry", &body);
    let (status, _, _) = call(state.clone(), post_sentinel(&body, &headers)).await;
    assert_eq!(status, 503);
    // Same webhook-id again: not refused as a replay (it reaches the queue, which fails again).
    let (status, _, _) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn unknown_schema_is_422_naming_the_field() {
    let (state, _) = app(JWKS).await;
    let body = event_body("sentinel/unknown-schema.json");
    let headers = signed_headers(WEBHOOK_KEY, "msg_schema", &body);
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 422);
    assert!(text.contains("missing field `SystemAlertId`"), "{text}");
}

/// Once the schema is known (an incident's `object.name`/`properties`, an alert's
/// `SystemAlertId`), missing, null, empty or unreadable entities are "no account": a 200 that
/// says so, never a 4xx that Logic Apps would mark as a failed run.
#[tokio::test]
async fn a_known_schema_without_entities_is_a_success_that_says_so() {
    let (state, queue) = app(JWKS).await;
    let incident = |properties: &str| {
        format!(
            r#"{{"object":{{"id":"/subscriptions/x/incidents/inc-1","name":"inc-1","properties":{properties}}}}}"#
        )
    };
    let alert = |entities: &str| {
        format!(
            r#"{{"SystemAlertId":"8c3f6f51-0d41-4a3b-8d6b-1d6f2f4b9e77","Severity":"High"{entities}}}"#
        )
    };
    let bodies = [
        incident(r#"{"severity":"High"}"#),
        incident(r#"{"severity":"High","relatedEntities":null}"#),
        incident(r#"{"severity":"High","relatedEntities":[]}"#),
        incident(r#"{"severity":"High","relatedEntities":{"kind":"Account"}}"#),
        r#"{"object":{"name":"inc-2"}}"#.to_owned(),
        r#"{"object":{"properties":{"incidentNumber":12,"severity":"Low"}}}"#.to_owned(),
        alert(""),
        alert(r#","Entities":null"#),
        alert(r#","Entities":[]"#),
        alert(r#","Entities":{}"#),
        alert(r#","Entities":"not json""#),
        alert(r#","Entities":"{\"Type\":\"account\"}""#),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let headers = signed_headers(WEBHOOK_KEY, &format!("msg_no_entities_{i}"), body);
        let (status, _, text) = call(state.clone(), post_sentinel(body, &headers)).await;
        assert_eq!(status, 200, "{body}: {text}");
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["status"], "no_usable_account", "{body}");
        assert_eq!(answer["signals"], serde_json::json!([]), "{body}");
    }
    assert!(queue.drain().is_empty());
}

/// A body that is no Sentinel payload at all still fails visibly, naming what is missing.
#[tokio::test]
async fn a_body_that_is_not_a_sentinel_payload_is_still_refused() {
    let (state, _) = app(JWKS).await;
    for body in [
        r#"{"hello":"world"}"#,
        r#"{"object":5}"#,
        r#"{"object":{"title":"no name, no properties"}}"#,
        r#"[]"#,
    ] {
        let headers = signed_headers(WEBHOOK_KEY, "msg_not_sentinel", body);
        let (status, _, text) = call(state.clone(), post_sentinel(body, &headers)).await;
        assert_eq!(status, 422, "{body}: {text}");
        assert!(text.contains("missing field `SystemAlertId`"), "{text}");
    }
}

#[tokio::test]
async fn an_alert_without_accounts_is_a_success_that_says_so() {
    let (state, queue) = app(JWKS).await;
    let body = event_body("sentinel/alert-without-accounts.json");
    let headers = signed_headers(WEBHOOK_KEY, "msg_noacct", &body);
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["status"], "no_usable_account");
    assert_eq!(answer["signals"], serde_json::json!([]));
    assert!(queue.drain().is_empty());
}

#[tokio::test]
async fn accounts_that_name_no_entra_user_are_listed_as_dropped() {
    let (state, _) = app(JWKS).await;
    let body = event_body("sentinel/incident-account-name-upnsuffix.json");
    let headers = signed_headers(WEBHOOK_KEY, "msg_dropped_list", &body);
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["signals"].as_array().unwrap().len(), 1);
    assert_eq!(answer["dropped"][0]["account"], "domain\\administrator");
    assert!(
        answer["dropped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("names no Entra user")
    );
}

#[tokio::test]
async fn signed_garbage_is_400() {
    let (state, _) = app(JWKS).await;
    let body = "not json at all";
    let headers = signed_headers(WEBHOOK_KEY, "msg_garbage", body);
    let (status, _, _) = call(state, post_sentinel(body, &headers)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn account_of_a_foreign_tenant_is_dropped() {
    let (state, queue) = app(JWKS).await;
    let body = event_body("sentinel/alert-identity-protection.json")
        .replace(TENANT, "f00dfeed-0000-4000-8000-000000000bad");
    let headers = signed_headers(WEBHOOK_KEY, "msg_foreign", &body);
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["status"], "no_usable_account");
    assert_eq!(
        answer["dropped"][0]["reason"],
        "tenant f00dfeed-0000-4000-8000-000000000bad is not allowed"
    );
    assert!(queue.drain().is_empty());
}

/// Headers signed by the PyPI `standardwebhooks` package with `key`.
fn python_signed(key: &str, msg_id: &str, body: &str) -> Vec<(&'static str, String)> {
    let python = test_python();
    let script = r#"
import sys, json, datetime
from standardwebhooks import Webhook
key, msg_id, body = sys.argv[1], sys.argv[2], sys.stdin.read()
now = datetime.datetime.now(tz=datetime.timezone.utc)
print(json.dumps({"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                  "webhook-signature": Webhook(key).sign(msg_id, now, body)}))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script, key, msg_id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "python signer failed");
    let signed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .into_iter()
        .map(|name| (name, signed[name].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn signatures_from_the_python_standardwebhooks_library_verify() {
    let body = event_body("sentinel/incident-two-accounts.json");
    let headers = python_signed(WEBHOOK_KEY, "msg_from_python", &body);
    let (state, queue) = app(JWKS).await;
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(risk_events(&queue).len(), 2);
}

#[tokio::test]
async fn an_unpadded_key_works_as_with_the_reference_library() {
    // 25 random bytes: base64 with "==" of padding, configured and used without it.
    let key = "whsec_3q2+7wAAABEiM0RVZneImaq7zN3u/xAgMA";
    assert!(!key.ends_with('='));
    let queue = Arc::new(risk_responder::queue::MemoryQueue::default());
    let secrets = serde_json::json!({ "webhook_hmac_keys": [key] }).to_string();
    let state = app_with_secrets(Config::default(), &secrets, queue.clone());
    let body = event_body("sentinel/alert-identity-protection.json");
    let headers = python_signed(key, "msg_unpadded", &body);
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(risk_events(&queue).len(), 1);
}

// ---- entity shapes (Microsoft Sentinel entities reference) ----

async fn signed_delivery(
    file: &str,
    id: &str,
) -> (u16, String, Vec<risk_responder::event::RiskEvent>) {
    let (state, queue) = app(JWKS).await;
    let body = event_body(file);
    let headers = signed_headers(WEBHOOK_KEY, id, &body);
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    (status, text, risk_events(&queue))
}

#[tokio::test]
async fn an_account_nested_in_a_process_and_referenced_by_ref_is_found_once() {
    // Defender for Endpoint: the account sits inside the process entity (and its parent
    // process refers to it); the top level holds only {"$ref": "6"}.
    let (status, text, events) =
        signed_delivery("sentinel/alert-mde-nested-account.json", "msg_mde_nested").await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].subject,
        Subject::User {
            id: Some("6e7b768e-07e2-4810-8459-485f84f8f204".into()),
            upn: Some("adele.vance@contoso.onmicrosoft.com".into()),
        }
    );
    assert_eq!(events[0].risk_level, RiskLevel::High);
    assert_eq!(events[0].source_id, "1b7e3c0a-9f4d-4a2e-b6c8-5d3e2f1a0b9c");
}

#[tokio::test]
async fn an_entra_cloud_sid_gives_the_object_id() {
    // An Entra-joined device: the account is AzureAD\AdeleVance with only a cloud SID.
    let (status, text, events) =
        signed_delivery("sentinel/alert-entra-joined-sid.json", "msg_cloud_sid").await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].subject,
        Subject::User {
            id: Some("6e7b768e-07e2-4810-8459-485f84f8f204".into()),
            upn: None,
        }
    );
}

#[tokio::test]
async fn incident_accounts_given_as_name_and_upn_suffix_are_used() {
    let (status, text, events) = signed_delivery(
        "sentinel/incident-account-name-upnsuffix.json",
        "msg_inc_upnsuffix",
    )
    .await;
    assert_eq!(status, 202, "{text}");
    // megan.bowen@contoso.onmicrosoft.com; domain\administrator names no Entra user.
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].subject,
        Subject::User {
            id: None,
            upn: Some("megan.bowen@contoso.onmicrosoft.com".into()),
        }
    );
    assert_eq!(events[0].risk_level, RiskLevel::Medium);
    // The incident's ARM id travels with the signal, for the write-back.
    let context = events[0].resource_data.as_ref().expect("incident context");
    assert!(
        context["incidentArmId"].as_str().unwrap().ends_with(
            "/Microsoft.SecurityInsights/Incidents/9e4b2d6f-8a1c-4e3b-b5d7-2f4a6c8e0b1d"
        )
    );
    assert_eq!(context["incidentNumber"], 4802);
}

/// An `AadUserId` that is not a GUID names no Entra user: the entity is reported unusable (and
/// its other fields are not trusted). SIDs are decoded only from ASCII digits.
#[tokio::test]
async fn malformed_object_ids_and_sids_are_reported_unusable() {
    let (state, queue) = app(JWKS).await;
    let body = serde_json::json!({
        "SystemAlertId": "5d0e6c1a-1f7b-4c2e-9a3d-7b8c9d0e1f2a",
        "Severity": "High",
        "Entities": [
            {"$id": "2", "Type": "account", "AadUserId": "../../users/someone-else",
             "Name": "adele.vance", "UPNSuffix": "contoso.onmicrosoft.com",
             "AadTenantId": TENANT},
            {"$id": "3", "Type": "account", "Name": "plus",
             "Sid": "S-1-12-1-+1853585038-1209010146-1598577028-83032196"},
            {"$id": "4", "Type": "account",
             "AadUserId": "{6E7B768E-07E2-4810-8459-485F84F8F204}", "AadTenantId": TENANT}
        ]
    })
    .to_string();
    let headers = signed_headers(WEBHOOK_KEY, "msg_malformed_ids", &body);
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dropped = answer["dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 2, "{text}");
    assert_eq!(dropped[0]["account"], "adele.vance");
    assert_eq!(
        dropped[0]["reason"],
        "AadUserId is not a GUID (an Entra object id)"
    );
    assert_eq!(dropped[1]["account"], "plus");
    assert!(
        dropped[1]["reason"]
            .as_str()
            .unwrap()
            .contains("names no Entra user"),
        "{text}"
    );
    // A braced, upper-case GUID is a GUID: normalised.
    let events = risk_events(&queue);
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].subject,
        Subject::User {
            id: Some("6e7b768e-07e2-4810-8459-485f84f8f204".into()),
            upn: None,
        }
    );
}

/// `/sentinel/alerts` has its own, larger body limit (`RR_SENTINEL_MAX_BODY_BYTES`): an
/// incident trigger body over the 1 MiB of Graph batches is kept (Logic Apps would not retry a
/// 413); beyond the Sentinel limit, 413.
#[tokio::test]
async fn large_incident_bodies_have_a_limit_of_their_own() {
    let queue = Arc::new(risk_responder::queue::MemoryQueue::default());
    let config = Config {
        jwks_url: JWKS.to_owned(),
        ..Config::default()
    };
    assert_eq!(config.max_body_bytes, 1024 * 1024);
    let state = app_with(config, queue.clone()).await;
    let mut incident: serde_json::Value =
        serde_json::from_str(&event_body("sentinel/incident-two-accounts.json")).unwrap();
    incident["object"]["properties"]["description"] = "x".repeat(2 * 1024 * 1024).into();
    let body = incident.to_string();
    let headers = signed_headers(WEBHOOK_KEY, "msg_large_incident", &body);
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{}", &text[..text.len().min(300)]);
    assert_eq!(risk_events(&queue).len(), 2);

    let small = Config {
        jwks_url: JWKS.to_owned(),
        sentinel_max_body_bytes: 64 * 1024,
        ..Config::default()
    };
    let state = app_with(small, queue.clone()).await;
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 413, "{}", &text[..text.len().min(300)]);
    assert!(text.contains("larger than 65536 bytes"), "{text}");
    assert!(queue.drain().is_empty());
}

/// A second tenant this deployment serves.
const TENANT_B: &str = "2c1d8d6e-5a4b-4c3d-9e8f-7a6b5c4d3e2f";

fn two_tenants(
    secrets: serde_json::Value,
) -> (
    risk_responder::http::AppState,
    Arc<risk_responder::queue::MemoryQueue>,
) {
    let queue = Arc::new(risk_responder::queue::MemoryQueue::default());
    let config = Config {
        allowed_tenants: vec![TENANT.to_owned(), TENANT_B.to_owned()],
        jwks_url: JWKS.into(),
        ..Config::default()
    };
    (
        app_with_secrets(config, &secrets.to_string(), queue.clone()),
        queue,
    )
}

fn alert_in(tenant: &str, id: &str) -> String {
    serde_json::json!({
        "SystemAlertId": id,
        "Severity": "High",
        "Entities": [{"$id": "2", "Type": "account", "AadUserId": "6e7b768e-07e2-4810-8459-485f84f8f204", "AadTenantId": tenant}]
    })
    .to_string()
}

#[tokio::test]
async fn a_signing_key_names_only_the_tenants_listed_with_it() {
    let (state, queue) = two_tenants(serde_json::json!({
        "webhook_hmac_keys": [{ "key": WEBHOOK_KEY, "tenants": [TENANT_B] }]
    }));
    let body = alert_in(TENANT, "alert-a");
    let headers = signed_headers(WEBHOOK_KEY, "msg_bound_1", &body);
    let (status, _, text) = call(state.clone(), post_sentinel(&body, &headers)).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("forbidden_tenant"), "{text}");
    assert!(queue.is_empty());
    let body = alert_in(TENANT_B, "alert-b");
    let headers = signed_headers(WEBHOOK_KEY, "msg_bound_2", &body);
    let (status, _, text) = call(state, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    let kept = risk_events(&queue);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].origin.as_ref().unwrap().by, "webhook_hmac_keys[0]");
}

#[tokio::test]
async fn a_key_that_lists_no_tenant_names_none_when_several_are_allowed() {
    let (state, queue) = two_tenants(serde_json::json!({
        "webhook_hmac_keys": [WEBHOOK_KEY],
        "sentinel_api_keys": [{ "key": "k".repeat(40), "tenants": [TENANT] }]
    }));
    for tenant in [TENANT, TENANT_B] {
        let body = alert_in(tenant, &format!("alert-{tenant}"));
        let headers = signed_headers(WEBHOOK_KEY, &format!("msg_unbound_{tenant}"), &body);
        let (status, _, text) = call(state.clone(), post_sentinel(&body, &headers)).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("bound to no tenant"), "{text}");
    }
    assert!(queue.is_empty());
    // An API key listed with tenant A speaks for A.
    let body = alert_in(TENANT, "alert-api-key");
    let (status, _, text) = call(
        state,
        post_sentinel(&body, &[("x-api-key", "k".repeat(40))]),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(risk_events(&queue)[0].tenant_id, TENANT);
}
