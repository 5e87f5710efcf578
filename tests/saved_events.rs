//! The saved events of `events/` and what the webhook answers to each, as
//! `events/expected-status.json` (shared with `make lambda-check` and
//! `tests/iam_least_privilege.rs`) says: no saved event may be left without an expectation or
//! an explicit exclusion, and the router, configured as `make lambda-check` configures the
//! webhook (development tenant and ingress secrets, no Entra ID audience), gives each the
//! status expected.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::*;
use risk_responder::config::Config;
use risk_responder::queue::MemoryQueue;

const EXPECTATIONS: &str = "expected-status.json";
/// How a saved event is sent (see `_about` in the expectations).
const KINDS: [&str; 3] = ["lambda_http_event", "signed_body", "graph_body"];

struct Expectations {
    /// File (relative to `events/`) → (kind, status).
    expected: BTreeMap<String, (String, u16)>,
    /// File → why it is not sent.
    excluded: BTreeMap<String, String>,
}

fn events_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("events")
}

fn expectations() -> Expectations {
    let text = std::fs::read_to_string(events_dir().join(EXPECTATIONS)).unwrap();
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut expected = BTreeMap::new();
    let mut excluded = BTreeMap::new();
    for (file, value) in map {
        if file == "_excluded" {
            let reasons = value.as_object().expect("_excluded is an object");
            for (file, reason) in reasons {
                let reason = reason.as_str().unwrap_or_default().trim();
                assert!(!reason.is_empty(), "{file}: an exclusion needs its reason");
                excluded.insert(file.clone(), reason.to_owned());
            }
            continue;
        }
        if file.starts_with('_') {
            continue;
        }
        let entry = value.as_object().expect("an expectation is an object");
        assert_eq!(entry.len(), 1, "{file}: one way of sending it: {value}");
        let (kind, status) = entry.iter().next().unwrap();
        assert!(
            KINDS.contains(&kind.as_str()),
            "{file}: unknown kind {kind}"
        );
        let status = status.as_u64().and_then(|s| u16::try_from(s).ok());
        expected.insert(file, (kind.clone(), status.expect("a status")));
    }
    Expectations { expected, excluded }
}

/// Every `.json` file under `dir`, relative to `events/`.
fn saved_events(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            saved_events(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            let relative = path.strip_prefix(events_dir()).unwrap();
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn every_saved_event_has_an_expectation_or_an_explicit_exclusion() {
    let Expectations { expected, excluded } = expectations();
    let mut files = Vec::new();
    saved_events(&events_dir(), &mut files);
    files.retain(|f| f != EXPECTATIONS);
    assert!(files.len() >= 26, "the saved events were found: {files:?}");
    let unaccounted: Vec<&String> = files
        .iter()
        .filter(|f| !expected.contains_key(*f) && !excluded.contains_key(*f))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "saved events with neither an expectation nor an exclusion in events/{EXPECTATIONS}: {unaccounted:?}"
    );
    for file in expected.keys().chain(excluded.keys()) {
        assert!(files.contains(file), "{file} is named but not saved");
        assert!(
            !(expected.contains_key(file) && excluded.contains_key(file)),
            "{file} is both expected and excluded"
        );
    }
}

#[tokio::test]
async fn every_expected_event_gets_its_status_from_the_webhook() {
    let Expectations { expected, .. } = expectations();
    let queue = Arc::new(MemoryQueue::default());
    // Configured as `make lambda-check` configures the webhook: the development tenant and
    // ingress secrets, no Entra ID audience; no key set is needed by any saved event.
    let config = Config {
        jwks_url: "http://127.0.0.1:9/keys".into(),
        ..Config::default()
    };
    let state = app_with(config, queue.clone()).await;
    let mut wrong = Vec::new();
    for (n, (file, (kind, status))) in expected.iter().enumerate() {
        let (got, _, body) = match kind.as_str() {
            "lambda_http_event" => call(state.clone(), lambda_event(file)).await,
            "signed_body" => {
                let body = event_body(file);
                let headers = signed_headers(WEBHOOK_KEY, &format!("msg_saved_{n}"), &body);
                call(state.clone(), post_sentinel(&body, &headers)).await
            }
            "graph_body" => {
                call(
                    state.clone(),
                    post_json("/graph/notifications", event_body(file)),
                )
                .await
            }
            other => panic!("{file}: unknown kind {other}"),
        };
        let kept = risk_events(&queue).len();
        if got != *status {
            wrong.push(format!("{file}: {got}, expected {status}: {body}"));
        }
        // The demo events are meant to be kept: a 202 that dropped everything would pass a
        // status check and show nothing.
        if file.starts_with("demo/") && kept == 0 {
            wrong.push(format!("{file}: {got} but no signal kept: {body}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
