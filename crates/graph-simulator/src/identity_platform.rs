//! The Microsoft identity platform's token endpoint ("Microsoft identity platform and the OAuth
//! 2.0 client credentials flow"): `POST /{tenant}/oauth2/v2.0/token` with
//! `grant_type=client_credentials`, a client secret or a certificate assertion (PS256 with
//! `x5t#S256`, "Microsoft identity platform application authentication certificate
//! credentials"), for the Graph and the Azure Resource Manager scopes; AADSTS errors as the
//! platform sends them.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::odata::lock;
use crate::{CLIENT_ID, CLIENT_SECRET, GraphSimulator};

pub(crate) async fn token(
    State(s): State<GraphSimulator>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mut dir = lock(&s.dir);
    dir.token_requests += 1;
    if dir.faults.token_down {
        return (StatusCode::SERVICE_UNAVAILABLE, "").into_response();
    }
    let invalid_client = |description: &str| {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({
                "error": "invalid_client",
                "error_description": format!("{description}\r\nTrace ID: 0000\r\nCorrelation ID: 0000\r\nTimestamp: 2026-11-25 06:00:00Z"),
                "error_codes": [7000215],
                "timestamp": "2026-11-25 06:00:00Z",
            })),
        )
            .into_response()
    };
    // Graph, or Azure Resource Manager (incident comments).
    let arm =
        form.get("scope").map(String::as_str) == Some("https://management.azure.com/.default");
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let expected_secret = if client_id == CLIENT_ID {
        Some(CLIENT_SECRET.to_owned())
    } else {
        dir.apps.get(&client_id).cloned()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || expected_secret.is_none()
        || (form.get("scope").map(String::as_str) != Some("https://graph.microsoft.com/.default")
            && !arm)
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request", "error_description": "AADSTS900144: malformed request"})),
        )
            .into_response();
    }
    if dir.faults.token_refused {
        return invalid_client("AADSTS7000215: Invalid client secret provided.");
    }
    if let Some(assertion) = form.get("client_assertion") {
        let Some(cert) = &dir.certificate else {
            return invalid_client("AADSTS700027: Client assertion contains an invalid signature.");
        };
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return invalid_client("AADSTS700025: wrong client_assertion_type.");
        }
        let Ok(header) = jsonwebtoken::decode_header(assertion) else {
            return invalid_client("AADSTS50027: Invalid JWT token.");
        };
        if header.alg != jsonwebtoken::Algorithm::PS256 {
            return invalid_client(
                "AADSTS5002738: the client assertion must be signed with PS256.",
            );
        }
        if header.x5t_s256.as_deref() != Some(cert.thumbprint_sha256_b64url.as_str()) {
            return invalid_client("AADSTS700027: unknown certificate thumbprint.");
        }
        let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(&cert.public_key_pem) else {
            return invalid_client("AADSTS700027: certificate not usable.");
        };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::PS256);
        validation.set_audience(&[format!("{}/{tenant}/oauth2/v2.0/token", s.base)]);
        validation.set_issuer(&[CLIENT_ID]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
            Ok(data) if data.claims["sub"] == CLIENT_ID && data.claims["jti"].is_string() => {}
            _ => {
                return invalid_client(
                    "AADSTS700027: Client assertion contains an invalid signature.",
                );
            }
        }
    } else if form.get("client_secret") != expected_secret.as_ref() {
        return invalid_client("AADSTS7000215: Invalid client secret provided.");
    }
    let access_token = if arm {
        let token = format!("standin-arm-token-{}-{}", tenant, uuid::Uuid::new_v4());
        dir.sentinel.issued.insert(token.clone(), tenant.clone());
        token
    } else {
        let token = format!("standin-token-{}-{}", tenant, uuid::Uuid::new_v4());
        dir.issued.insert(token.clone(), tenant.clone());
        dir.token_apps.insert(token.clone(), client_id.clone());
        token
    };
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": access_token,
    }))
    .into_response()
}
