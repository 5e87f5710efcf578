//! `infra/sentinel-playbook.json`: the Logic App playbook template. The test reads the
//! template, builds the request its HTTP action sends (method, URL, headers, body, Managed
//! Identity authentication for the configured audience) from the deployment parameters, and
//! sends it, with a real incident-trigger body and a token minted for that audience and the
//! playbook's managed identity, to `/sentinel/alerts` configured as the README says.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use risk_responder::config::Config;
use risk_responder::queue::MemoryQueue;
use serde_json::Value;

const TEMPLATE: &str = include_str!("../infra/sentinel-playbook.json");
/// What an operator enters when deploying (the webhook's Function URL + sentinel/alerts).
const ALERTS_URL: &str =
    "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws/sentinel/alerts";
/// Client id of the app registration that stands for risk-responder.
const RR_CLIENT_ID: &str = "5a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d";

/// The Application ID URI as the README has it: `api://<client id>`, the default Entra
/// proposes, which the default app management policy accepts.
fn app_id_uri() -> String {
    format!("api://{RR_CLIENT_ID}")
}

fn template() -> Value {
    serde_json::from_str(TEMPLATE).expect("the template is JSON")
}

fn workflow(template: &Value) -> &Value {
    let workflows: Vec<&Value> = template["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "Microsoft.Logic/workflows")
        .collect();
    assert_eq!(workflows.len(), 1);
    workflows[0]
}

/// The deployment's parameter values: the defaults, overridden by what the operator enters.
fn deployment_parameters(template: &Value, entered: &[(&str, &str)]) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for (name, definition) in template["parameters"].as_object().unwrap() {
        if let Some(default) = definition["defaultValue"].as_str() {
            values.insert(name.clone(), default.to_owned());
        }
    }
    for (name, value) in entered {
        assert!(
            template["parameters"].get(*name).is_some(),
            "no template parameter {name}"
        );
        values.insert((*name).to_owned(), (*value).to_owned());
    }
    values
}

/// `[parameters('X')]` (an ARM expression) resolved against the deployment's values.
fn arm(expression: &str, parameters: &HashMap<String, String>) -> String {
    let name = expression
        .strip_prefix("[parameters('")
        .and_then(|rest| rest.strip_suffix("')]"))
        .unwrap_or_else(|| panic!("not an ARM parameter reference: {expression}"));
    parameters
        .get(name)
        .unwrap_or_else(|| panic!("ARM parameter {name} has no value"))
        .clone()
}

/// `@parameters('X')` (a workflow expression) resolved through the workflow's parameter values,
/// which the template sets from ARM parameters.
fn workflow_parameter(
    expression: &str,
    workflow: &Value,
    parameters: &HashMap<String, String>,
) -> String {
    let name = expression
        .strip_prefix("@parameters('")
        .and_then(|rest| rest.strip_suffix("')"))
        .unwrap_or_else(|| panic!("not a workflow parameter reference: {expression}"));
    assert!(
        workflow["properties"]["definition"]["parameters"]
            .get(name)
            .is_some(),
        "the definition does not declare {name}"
    );
    let value = workflow["properties"]["parameters"][name]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("workflow parameter {name} is not set"));
    arm(value, parameters)
}

#[test]
fn the_template_references_only_its_own_parameters() {
    let template = template();
    assert_eq!(
        template["$schema"],
        "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
    );
    let declared: Vec<&String> = template["parameters"].as_object().unwrap().keys().collect();
    let mut referenced = Vec::new();
    let mut rest = TEMPLATE;
    while let Some(at) = rest.find("parameters('") {
        rest = &rest[at + "parameters('".len()..];
        let end = rest.find('\'').unwrap();
        referenced.push(rest[..end].to_owned());
    }
    for name in &referenced {
        // Workflow-level parameters ($connections, and the two passed in) are declared in the
        // definition; every other reference is an ARM parameter.
        let in_definition = workflow(&template)["properties"]["definition"]["parameters"]
            .get(name)
            .is_some();
        assert!(
            in_definition || declared.contains(&name),
            "undeclared parameter {name}"
        );
    }
    for name in declared {
        assert!(referenced.contains(name), "parameter {name} is never used");
    }
}

/// `api://risk-responder` and other bare names are not identifier URIs Entra accepts under
/// its default app management policy ("Restrictions on identifier URIs of Microsoft Entra
/// applications": they must hold the tenant id, the app id or a verified domain). The operator
/// enters the app registration's own; there is no default to deploy with by mistake.
#[test]
fn the_application_id_uri_has_no_default_and_says_which_formats_entra_accepts() {
    let template = template();
    let parameter = &template["parameters"]["AppIdUri"];
    assert!(parameter.get("defaultValue").is_none(), "{parameter}");
    let description = parameter["metadata"]["description"].as_str().unwrap();
    assert!(description.contains("api://<client id>"), "{description}");
    assert!(
        description.contains("api://<tenant id>/risk-responder"),
        "{description}"
    );
    // The README's deployment command passes it.
    let readme = include_str!("../README.md");
    assert!(
        readme.contains("AppIdUri=api://<client id>"),
        "the README's az deployment command sets AppIdUri"
    );
    assert!(!readme.contains("AppIdUri=api://risk-responder"));
}

#[test]
fn the_playbook_is_triggered_by_incidents_and_has_a_managed_identity() {
    let template = template();
    let workflow = workflow(&template);
    assert_eq!(workflow["identity"]["type"], "SystemAssigned");
    let triggers = workflow["properties"]["definition"]["triggers"]
        .as_object()
        .unwrap();
    assert_eq!(triggers.len(), 1);
    let trigger = triggers.values().next().unwrap();
    assert_eq!(trigger["type"], "ApiConnectionWebhook");
    assert_eq!(trigger["inputs"]["path"], "/incident-creation");
    assert_eq!(
        trigger["inputs"]["host"]["connection"]["name"],
        "@parameters('$connections')['azuresentinel']['connectionId']"
    );
    let connection =
        &workflow["properties"]["parameters"]["$connections"]["value"]["azuresentinel"];
    assert_eq!(
        connection["connectionProperties"]["authentication"]["type"],
        "ManagedServiceIdentity"
    );
    // The object id to put on the allow-list is an output of the deployment.
    assert!(
        template["outputs"]["PlaybookPrincipalId"]["value"]
            .as_str()
            .unwrap()
            .ends_with(".identity.principalId]")
    );
}

#[tokio::test]
async fn the_request_the_playbook_builds_is_accepted_as_the_readme_configures_it() {
    let template = template();
    let workflow = workflow(&template);
    let parameters = deployment_parameters(
        &template,
        &[
            ("RiskResponderAlertsUrl", ALERTS_URL),
            ("AppIdUri", &app_id_uri()),
        ],
    );
    let actions = workflow["properties"]["definition"]["actions"]
        .as_object()
        .unwrap();
    let http: Vec<&Value> = actions.values().filter(|a| a["type"] == "Http").collect();
    assert_eq!(http.len(), 1, "one HTTP action");
    let inputs = &http[0]["inputs"];

    // What Logic Apps sends.
    assert!(
        inputs["method"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("POST")
    );
    let url = workflow_parameter(inputs["uri"].as_str().unwrap(), workflow, &parameters);
    let url: http::Uri = url.parse().unwrap();
    assert_eq!(url.scheme_str(), Some("https"));
    assert_eq!(url.path(), "/sentinel/alerts");
    assert_eq!(inputs["body"], "@triggerBody()", "the trigger body, as is");
    let authentication = &inputs["authentication"];
    assert_eq!(authentication["type"], "ManagedServiceIdentity");
    let audience = workflow_parameter(
        authentication["audience"].as_str().unwrap(),
        workflow,
        &parameters,
    );
    assert_eq!(audience, app_id_uri());
    // Retries that survive a 503 (keys or the queue briefly unavailable).
    assert_eq!(inputs["retryPolicy"]["type"], "exponential");

    // risk-responder configured as the README says.
    let jwks = jwks_server().await;
    let config = Config::from_lookup(|name| match name {
        "RR_SENTINEL_AUDIENCE" => Some(format!("{},{RR_CLIENT_ID}", app_id_uri())),
        "RR_ALLOWED_TENANTS" => Some(TENANT.to_owned()),
        "RR_JWKS_URL" => Some(jwks.url.clone()),
        _ => None,
    })
    .unwrap();
    let secrets = serde_json::json!({
        "sentinel_callers": { "object_ids": [PLAYBOOK_OID], "app_ids": [] },
    })
    .to_string();
    let queue = Arc::new(MemoryQueue::default());
    let state = app_with_secrets(config, &secrets, queue.clone());

    // The managed identity's token for that audience, and a real incident-trigger body.
    let mut claims = entra_claims();
    claims["aud"] = audience.into();
    let token = sign_token(&claims, "jwt-test-key-1.pem", "test-kid-1");
    let trigger_body = event_body("sentinel/incident-two-accounts.json");
    let mut request = http::Request::builder()
        .method(inputs["method"].as_str().unwrap())
        .uri(url.path())
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in inputs["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    let request = request.body(axum::body::Body::from(trigger_body)).unwrap();

    let (status, _, text) = call(state, request).await;
    assert_eq!(status, 202, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["signals"].as_array().unwrap().len(), 2);
    assert_eq!(risk_events(&queue).len(), 2);
}
