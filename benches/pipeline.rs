//! Criterion benches: Graph ingress of 100-notification batches (basic, and rich with
//! validation tokens and encrypted content), Sentinel parsing with HMAC, a report-only replay
//! of events/, and the raw crypto floor (RSA-OAEP decrypt, JWT verify, HMAC) for comparison.
//! Run with `make bench` (which also writes BENCHMARKS.md).

mod common;
#[path = "../tests/graph_standin/mod.rs"]
mod graph_standin;

use std::hint::black_box;
use std::time::Duration;

use aws_lc_rs::rsa::OAEP_SHA1_MGF1SHA1;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use criterion::{Criterion, criterion_group, criterion_main};
use risk_responder::config::Config;
use risk_responder::graph::credential::GraphSecrets;
use risk_responder::ingress::graph::GraphIngress;
use risk_responder::ingress::secrets::IngressSecrets;
use risk_responder::ingress::validation_tokens::{JwksCache, JwksPolicy, TokenVerifier};
use risk_responder::ingress::{sentinel, signature};

use common::{APP_ID, CLIENT_STATE, ROOT, TENANT, read};

fn basic_batch(n: usize) -> Vec<u8> {
    let value: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("n-{i}"), "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
                "subscriptionExpirationDateTime": "2026-12-24T06:00:00.000Z", "clientState": CLIENT_STATE,
                "changeType": "updated", "resource": format!("Users/6e7b768e-07e2-4810-8459-{i:012}"),
                "tenantId": TENANT, "resourceData": {"@odata.type": "#Microsoft.Graph.User", "id": format!("6e7b768e-07e2-4810-8459-{i:012}")}
            })
        })
        .collect();
    serde_json::json!({ "value": value })
        .to_string()
        .into_bytes()
}

fn rich_batch(n: usize) -> Vec<u8> {
    let mut content: serde_json::Value = serde_json::from_str(&read(
        "tests/vectors/graph-rich-notification/encrypted-content.json",
    ))
    .unwrap();
    content["encryptionCertificateId"] = "custom-id-for-testing".into();
    let value: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("r-{i}"), "subscriptionId": "9a1c7b0e-5c8e-4f7e-8a52-6a1f0d9c3b21",
                "clientState": CLIENT_STATE, "changeType": "updated",
                "resource": "Users/6e7b768e-07e2-4810-8459-485f84f8f204", "tenantId": TENANT,
                "encryptedContent": content,
            })
        })
        .collect();
    serde_json::json!({ "value": value, "validationTokens": [common::validation_token(3600)] })
        .to_string()
        .into_bytes()
}

fn ingress(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = Config::default();
    let secrets = risk_responder::vault::local::embedded_dev::<IngressSecrets>().unwrap();
    let url = rt.block_on(common::serve_jwks());
    let verifier = TokenVerifier::new(
        JwksCache::new(url, reqwest::Client::new(), JwksPolicy::default()),
        APP_ID,
        Duration::from_secs(60),
    );
    let basic = basic_batch(100);
    let rich = rich_batch(100);
    let graph = GraphIngress {
        config: &config,
        secrets: &secrets,
        tokens: Some(&verifier),
        // Keys are fetched once below and stay fresh: no batch waits for them.
        deadline: tokio::time::Instant::now() + Duration::from_secs(3600),
    };
    // Warm the JWKS cache and check the batches are accepted in full.
    assert_eq!(rt.block_on(graph.process(&rich)).unwrap().events.len(), 100);
    assert_eq!(
        rt.block_on(graph.process(&basic)).unwrap().events.len(),
        100
    );

    let mut group = c.benchmark_group("ingress");
    group.sample_size(20);
    group.bench_function("graph_basic_batch_100", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(graph.process(&basic).await.unwrap()) })
    });
    group.bench_function("graph_rich_batch_100", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(graph.process(&rich).await.unwrap()) })
    });

    let alert = read("events/sentinel/alert-identity-protection.json");
    let key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let keys = [signature::WebhookKey::parse(key).unwrap()];
    group.bench_function("sentinel_alert_hmac", |b| {
        b.iter(|| {
            let ts = time::OffsetDateTime::now_utc().unix_timestamp();
            let raw = signature::decode_key(key).unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert("webhook-id", "msg_bench".parse().unwrap());
            headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
            headers.insert(
                "webhook-signature",
                signature::sign(&raw, "msg_bench", ts, alert.as_bytes())
                    .parse()
                    .unwrap(),
            );
            signature::verify(
                &headers,
                alert.as_bytes(),
                &keys,
                time::OffsetDateTime::now_utc(),
                signature::DEFAULT_TOLERANCE,
            )
            .unwrap();
            black_box(sentinel::parse(alert.as_bytes(), &config, None).unwrap())
        })
    });
    group.finish();
}

fn replay(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let standin = rt.block_on(graph_standin::start());
    graph_standin::seed(&standin, "high", "atRisk", 3);
    let config = Config {
        graph_base_url: standin.graph_url(),
        login_authority: standin.authority(),
        ..Config::default()
    };
    let secrets = risk_responder::vault::local::embedded_dev::<GraphSecrets>().unwrap();
    let store = std::sync::Arc::new(risk_responder::vault::StaticSecretStore::new(
        risk_responder::vault::local::embedded_dev::<GraphSecrets>().unwrap(),
    ));
    let graph = risk_responder::app::graph_client(&config, &secrets, store, reqwest::Client::new())
        .unwrap();
    let ledger = risk_responder::ledger::Ledger::new(std::sync::Arc::new(
        risk_responder::ledger::sqlite::SqliteStore::in_memory().unwrap(),
    ));
    let worker = rt
        .block_on(risk_responder::app::worker(
            &config,
            graph,
            &secrets,
            ledger,
            None,
            Some(risk_responder::cases::Mode::ReportOnly),
        ))
        .unwrap();
    let mut files: Vec<(String, String)> = Vec::new();
    for dir in ["events/graph", "events/sentinel"] {
        for entry in std::fs::read_dir(format!("{ROOT}/{dir}")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            files.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    let ingress = risk_responder::vault::local::embedded_dev::<IngressSecrets>().unwrap();
    let ctx = risk_responder::replay::ReplayContext {
        config: &config,
        secrets: &ingress,
        tokens: None,
        worker: Some(&worker),
    };
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.bench_function("events_dir_report_only", |b| {
        b.to_async(&rt).iter(|| async {
            for (name, text) in &files {
                black_box(risk_responder::replay::replay_text(name, text, &ctx).await);
            }
        })
    });
    group.finish();
    assert!(
        standin.writes().is_empty(),
        "report-only replay wrote to Graph"
    );
}

fn crypto_floor(c: &mut Criterion) {
    let secrets = risk_responder::vault::local::embedded_dev::<IngressSecrets>().unwrap();
    let key = secrets.decryption_key("custom-id-for-testing").unwrap();
    let content: serde_json::Value = serde_json::from_str(&read(
        "tests/vectors/graph-rich-notification/encrypted-content.json",
    ))
    .unwrap();
    let wrapped = STANDARD
        .decode(content["dataKey"].as_str().unwrap())
        .unwrap();
    let token = common::validation_token(3600);
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&read("tests/fixtures/jwks.json")).unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[APP_ID]);
    let hmac_key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        b"0123456789abcdef0123456789abcdef",
    );
    let data = STANDARD.decode(content["data"].as_str().unwrap()).unwrap();

    let mut group = c.benchmark_group("crypto");
    group.sample_size(20);
    group.bench_function("rsa4096_oaep_decrypt", |b| {
        let mut out = vec![0u8; key.min_output_size()];
        b.iter(|| {
            black_box(
                key.decrypt(&OAEP_SHA1_MGF1SHA1, &wrapped, &mut out, None)
                    .unwrap()
                    .len(),
            )
        })
    });
    group.bench_function("jwt_rs256_verify", |b| {
        b.iter(|| {
            black_box(
                jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap(),
            )
        })
    });
    group.bench_function("hmac_sha256_content", |b| {
        b.iter(|| black_box(aws_lc_rs::hmac::sign(&hmac_key, &data)))
    });
    group.finish();
}

criterion_group!(benches, ingress, replay, crypto_floor);
criterion_main!(benches);
