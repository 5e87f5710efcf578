//! Conditional Access ("List policies", "Create conditionalAccessPolicy"): the documented
//! shape, checked as Graph checks it.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Directory;
use crate::odata::{error, now_iso};

/// The Conditional Access area's paths.
pub(crate) fn route(r: &crate::Request<'_>, dir: &mut Directory) -> Option<Response> {
    Some(match (r.method.clone(), r.segments.as_slice()) {
        (Method::GET, ["identity", "conditionalAccess", "policies"]) => axum::Json(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#identity/conditionalAccess/policies",
            "value": dir.ca_policies,
        }))
        .into_response(),
        (Method::POST, ["identity", "conditionalAccess", "policies"]) => {
            create_ca_policy(dir, r.body.clone())
        }
        _ => return None,
    })
}

/// `POST /identity/conditionalAccess/policies`: the documented shape, checked as Graph checks
/// it (display name, state, conditions with users and applications, grant controls).
pub(crate) fn create_ca_policy(dir: &mut Directory, body: Value) -> Response {
    let bad = |message: &str| error(StatusCode::BAD_REQUEST, "BadRequest", message);
    if body["displayName"].as_str().is_none_or(str::is_empty) {
        return bad("displayName is required.");
    }
    let state = body["state"].as_str().unwrap_or("");
    if !matches!(
        state,
        "enabled" | "disabled" | "enabledForReportingButNotEnforced"
    ) {
        return bad("Invalid state.");
    }
    let conditions = &body["conditions"];
    if !conditions["users"].is_object() || !conditions["applications"].is_object() {
        return bad("conditions.users and conditions.applications are required.");
    }
    let levels = conditions["userRiskLevels"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if levels
        .iter()
        .any(|l| !matches!(l.as_str(), Some("low" | "medium" | "high")))
    {
        return bad("Invalid userRiskLevels.");
    }
    let controls = &body["grantControls"];
    let built_in: Vec<&str> = controls["builtInControls"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if built_in.contains(&"passwordChange")
        && (controls["operator"] != "AND" || !built_in.contains(&"mfa"))
    {
        return bad("passwordChange must be combined with mfa using the AND operator.");
    }
    let mut policy = body.clone();
    policy["id"] = uuid::Uuid::new_v4().to_string().into();
    policy["createdDateTime"] = now_iso().into();
    dir.ca_policies.push(policy.clone());
    (StatusCode::CREATED, axum::Json(policy)).into_response()
}
