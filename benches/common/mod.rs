//! What the benches share: the local tenant's ids, the fixtures, a Graph validation token and
//! a signing-key endpoint.

#![allow(dead_code)] // each bench uses its own part

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
pub const CLIENT_STATE: &str = "local-dev-client-state-change-me";
pub const APP_ID: &str = "11111111-2222-3333-4444-555555555555";

/// A file of the repository, by its path from the root.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(ROOT).join(path)).unwrap()
}

/// A validation token as Graph puts in rich notifications (app-only, for [`APP_ID`]), signed
/// with the test key of `tests/fixtures/jwks.json`, valid for `lifetime_s` seconds.
pub fn validation_token(lifetime_s: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "aud": APP_ID, "iss": format!("https://sts.windows.net/{TENANT}/"), "iat": now, "nbf": now,
        "exp": now + lifetime_s, "appid": "0bf30f3b-4a52-48df-9a82-234910c4a086", "tid": TENANT,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        read("tests/fixtures/jwt-test-key-1.pem").as_bytes(),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-kid-1".into());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Serves `tests/fixtures/jwks.json` on loopback (on the current runtime); returns its URL.
pub async fn serve_jwks() -> String {
    let jwks = read("tests/fixtures/jwks.json");
    let app = axum::Router::new().route("/keys", axum::routing::get(move || async move { jwks }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/keys")
}

/// The `p`th percentile (0-100) of sorted `values` (nearest rank); NaN when there are none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// A Graph call's kind: method and path with ids and mailboxes generalised.
pub fn call_kind(call: &str) -> String {
    let (method, path) = call.split_once(' ').unwrap_or(("", call));
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path
        .split('/')
        .map(|p| {
            if p.len() == 36 || p.contains('@') {
                "{id}"
            } else {
                p
            }
        })
        .collect();
    format!("{method} {}", parts.join("/"))
}

/// Sends back, after 2 s, the items of a batch whose disposition is a retry (as SQS would
/// redeliver them after their visibility timeout).
pub fn requeue_retries(
    queue: &std::sync::Arc<risk_responder::queue::MemoryQueue>,
    items: Vec<risk_responder::queue::WorkItem>,
    dispositions: Vec<risk_responder::respond::Disposition>,
) {
    use risk_responder::queue::WorkQueue;
    let retry: Vec<_> = items
        .into_iter()
        .zip(dispositions)
        .filter(|(_, d)| d.is_retry())
        .map(|(i, _)| i)
        .collect();
    if !retry.is_empty() {
        let queue = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let _ = queue.send(&retry).await;
        });
    }
}

/// Prints, on stderr, each kind of Graph call the stand-in received: how many, and from when
/// to when after `started`.
pub fn trace_call_spans(calls: &[(String, std::time::Instant)], started: std::time::Instant) {
    let mut spans: std::collections::BTreeMap<String, (f64, f64, usize)> = Default::default();
    for (call, at) in calls {
        let t = at.duration_since(started).as_secs_f64();
        let e = spans.entry(call_kind(call)).or_insert((t, t, 0));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
        e.2 += 1;
    }
    for (k, (a, b, n)) in spans {
        eprintln!("TRACE {k}: {n} from {a:.1} s to {b:.1} s");
    }
}
