//! Property tests: every parser takes arbitrary input without panicking and keeps its
//! invariants (bounded, markup-free handshake echoes; every notification accounted for).

mod common;

use std::sync::Arc;

use proptest::prelude::*;
use risk_responder::config::Config;
use risk_responder::graph::credential::GraphSecrets;
use risk_responder::ingress::decrypt::{EncryptedContent, decrypt_content};
use risk_responder::ingress::graph::{GraphIngress, MAX_VALIDATION_TOKEN_LEN, handshake_token};
use risk_responder::ingress::secrets::IngressSecrets;
use risk_responder::ingress::{sentinel, signature};
use risk_responder::support::secret::SecretDocument;

/// Parsed once: the embedded secrets hold a 4096-bit key.
static SECRETS: std::sync::LazyLock<IngressSecrets> = std::sync::LazyLock::new(|| {
    risk_responder::vault::local::embedded_dev::<IngressSecrets>().unwrap()
});

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn fixtures() -> Vec<Vec<u8>> {
    [
        "graph/users-updated.function-url.json",
        "graph/mixed-batch.apigw-v2.json",
        "graph/lifecycle-reauthorization-required.apigw-v2.json",
    ]
    .iter()
    .map(|f| {
        let event: serde_json::Value = serde_json::from_str(&common::event_body(f)).unwrap();
        event["body"].as_str().unwrap().as_bytes().to_vec()
    })
    .chain(
        [
            "sentinel/alert-identity-protection.json",
            "sentinel/incident-two-accounts.json",
        ]
        .iter()
        .map(|f| common::event_body(f).into_bytes()),
    )
    .collect()
}

/// A real body with a few bytes changed and maybe truncated.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let bodies = fixtures();
    (
        0..bodies.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(move |(which, flips, cut, truncate)| {
            let mut body = bodies[which].clone();
            for (at, byte) in flips {
                let i = at.index(body.len());
                body[i] = byte;
            }
            if truncate {
                body.truncate(cut.index(body.len() + 1));
            }
            body
        })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated()]
}

/// Notification-shaped JSON with arbitrary field values.
fn notification() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::option::of("[ -~]{0,40}"),
        prop::option::of(prop_oneof![Just(common::TENANT.to_owned()), "[0-9a-f-]{0,36}"]),
        prop::option::of(prop_oneof![
            Just("Users/6e7b768e-07e2-4810-8459-485f84f8f204".to_owned()),
            Just("security/alerts/x".to_owned()),
            "[ -~]{0,40}"
        ]),
        prop::option::of(prop_oneof![Just("reauthorizationRequired".to_owned()), "[a-z]{0,12}"]),
        prop::option::of(("[A-Za-z0-9+/=]{0,64}", "[A-Za-z0-9+/=]{0,64}", "[A-Za-z0-9+/=]{0,64}")),
        any::<bool>(),
    )
        .prop_map(|(state, tenant, resource, lifecycle, encrypted, good_state)| {
            let mut n = serde_json::json!({ "subscriptionId": "s-1", "changeType": "updated" });
            let state = if good_state { Some(common::CLIENT_STATE.to_owned()) } else { state };
            for (key, value) in [("clientState", state), ("tenantId", tenant), ("resource", resource), ("lifecycleEvent", lifecycle)] {
                if let Some(value) = value {
                    n[key] = value.into();
                }
            }
            if let Some((data, key, sig)) = encrypted {
                n["encryptedContent"] = serde_json::json!({ "data": data, "dataKey": key, "dataSignature": sig, "encryptionCertificateId": "custom-id-for-testing" });
            }
            n
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn graph_batches_never_panic(body in bytes()) {
        let rt = runtime();
        let config = Config::default();
        let secrets = &*SECRETS;
        let ingress = GraphIngress { config: &config, secrets, tokens: None, deadline: tokio::time::Instant::now() };
        let _ = rt.block_on(ingress.process(&body));
    }

    #[test]
    fn every_notification_is_accounted_for(items in prop::collection::vec(notification(), 0..20), tokens in prop::option::of(prop::collection::vec("[ -~]{0,80}", 0..3))) {
        let rt = runtime();
        let config = Config::default();
        let secrets = &*SECRETS;
        let ingress = GraphIngress { config: &config, secrets, tokens: None, deadline: tokio::time::Instant::now() };
        let mut batch = serde_json::json!({ "value": items });
        if let Some(tokens) = tokens {
            batch["validationTokens"] = tokens.into();
        }
        let outcome = rt.block_on(ingress.process(batch.to_string().as_bytes())).unwrap();
        let n = batch["value"].as_array().unwrap().len();
        prop_assert_eq!(outcome.events.len() + outcome.lifecycle.len() + outcome.dropped.len(), n);
        // Nothing with random encrypted content or an unverified token gets through.
        for event in &outcome.events {
            prop_assert!(event.resource_data.is_none());
            prop_assert_eq!(&event.tenant_id, common::TENANT);
        }
    }

    #[test]
    fn sentinel_payloads_never_panic(body in bytes()) {
        let _ = sentinel::parse(&body, &Config::default(), None);
    }

    #[test]
    fn signatures_never_panic_and_random_ones_never_verify(
        id in "[ -~]{0,300}", ts in "[ -~]{0,20}", sig in "[ -~]{0,200}", body in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [("webhook-id", &id), ("webhook-timestamp", &ts), ("webhook-signature", &sig)] {
            if let Ok(value) = value.parse() {
                headers.insert(name, value);
            }
        }
        let keys = [signature::WebhookKey::parse(common::WEBHOOK_KEY).unwrap()];
        let result = signature::verify(&headers, &body, &keys, time::OffsetDateTime::now_utc(), signature::DEFAULT_TOLERANCE);
        prop_assert!(result.is_err());
    }

    #[test]
    fn handshake_echo_is_bounded_and_markup_free(query in "[ -~]{0,1500}") {
        if let Some(Ok(token)) = handshake_token(Some(&query)) {
            prop_assert!(!token.is_empty() && token.len() <= MAX_VALIDATION_TOKEN_LEN);
            prop_assert!(!token.contains(['<', '>', '&', '"', '\'', '`']));
            prop_assert!(token.chars().all(|c| c == ' ' || c.is_ascii_graphic()));
        }
    }

    #[test]
    fn random_encrypted_content_is_refused(data in "[ -~]{0,700}", key in "[ -~]{0,700}", sig in "[ -~]{0,64}") {
        let secrets = &*SECRETS;
        let content = EncryptedContent {
            data,
            data_key: key,
            data_signature: sig,
            encryption_certificate_id: None,
            encryption_certificate_thumbprint: None,
        };
        prop_assert!(decrypt_content(&content, secrets.decryption_key("custom-id-for-testing").unwrap()).is_err());
    }

    #[test]
    fn secrets_policy_and_work_items_never_panic(text in "[ -~\\n]{0,400}") {
        let _ = IngressSecrets::from_json(&text);
        let _ = GraphSecrets::from_json(&text);
        let _ = risk_responder::cases::Policy::from_toml(&text);
        let _ = serde_json::from_str::<risk_responder::queue::WorkItem>(&text);
    }

    #[test]
    fn replay_of_arbitrary_files_never_panics(body in bytes()) {
        let rt = runtime();
        let config = Config::default();
        let secrets = &*SECRETS;
        let ctx = risk_responder::replay::ReplayContext { config: &config, secrets, tokens: None, worker: None };
        let text = String::from_utf8_lossy(&body);
        let _ = rt.block_on(risk_responder::replay::replay_text("f", &text, &ctx));
    }
}

#[test]
fn http_endpoints_answer_garbage_with_client_errors() {
    let rt = runtime();
    let state = rt.block_on(common::app("http://127.0.0.1:9/keys")).0;
    let state = Arc::new(state);
    proptest!(ProptestConfig { cases: 128, ..ProptestConfig::default() }, |(body in bytes(), path in prop_oneof![Just("/graph/notifications"), Just("/graph/lifecycle"), Just("/sentinel/alerts")])| {
        let state = (*state).clone();
        let (status, _, _) = rt.block_on(common::call(state, common::post_json(path, String::from_utf8_lossy(&body).into_owned())));
        prop_assert!(matches!(status, 202 | 400 | 401 | 413 | 422), "{path}: {status}");
    });
}
