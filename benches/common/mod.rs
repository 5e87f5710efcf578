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
