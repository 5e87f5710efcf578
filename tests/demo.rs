//! Demo mode reaches nothing real and touches nothing of the operator's: every outbound URL
//! (Graph, the token endpoint, signing keys, Azure Resource Manager) is the in-process
//! simulator's whatever the environment says, and the demo's ledger is its own file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// Addresses the environment names: a dead TEST-NET host, never contacted by the demo.
const ELSEWHERE: [(&str, &str); 4] = [
    ("RR_GRAPH_BASE_URL", "http://graph-elsewhere.invalid:9/v1.0"),
    ("RR_LOGIN_AUTHORITY", "http://graph-elsewhere.invalid:9"),
    ("RR_ARM_BASE_URL", "http://graph-elsewhere.invalid:9"),
    ("RR_JWKS_URL", "http://graph-elsewhere.invalid:9/keys"),
];

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn demo_events() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("events/demo"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
    files.sort();
    files
}

#[tokio::test]
async fn an_enforced_demo_comments_on_the_simulated_incident_and_leaves_the_operators_ledger_alone()
{
    let dir = scratch();
    let operator_ledger = dir.join("operator.sqlite");
    std::fs::write(&operator_ledger, b"the operator's ledger").unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .arg("replay")
        .arg("--demo")
        .arg("--enforce")
        .args(demo_events())
        .current_dir(&dir)
        .envs(ELSEWHERE)
        .env("RR_LEDGER_PATH", &operator_ledger)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{out}{err}");
    assert_eq!(
        std::fs::read(&operator_ledger).unwrap(),
        b"the operator's ledger"
    );
    assert!(dir.join("risk-responder-demo.sqlite").exists());
    // The incident of events/demo/03 gets its comment, from the simulator's ARM.
    assert!(out.contains("comment written via arm"), "{out}");
    assert!(
        !out.contains("graph-elsewhere.invalid") && !err.contains("graph-elsewhere.invalid"),
        "{out}{err}"
    );
    assert!(!out.contains("comment failed"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn serve_demo_takes_a_notification_and_works_it_on_the_simulated_tenant() {
    let dir = scratch();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .args(["serve", "--demo", "--bind", &format!("127.0.0.1:{port}")])
        .current_dir(&dir)
        .envs(ELSEWHERE)
        .env("RR_LEDGER_PATH", dir.join("operator.sqlite"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();
    let banner = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    assert!(
        banner.contains("DEMO MODE") && banner.contains("no request can reach Microsoft"),
        "{banner}"
    );

    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "serve --demo did not come up");
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("events/demo/02-graph-users-alex.json"),
    )
    .unwrap();
    let answer = client
        .post(format!("{base}/graph/notifications"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);

    // The local worker opens Alex's case on the simulated tenant.
    let mut listed = String::new();
    for _ in 0..100 {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
            .args(["cases", "list", "--json"])
            .env("RR_LEDGER_PATH", dir.join("risk-responder-demo.sqlite"))
            .output()
            .await
            .unwrap();
        listed = String::from_utf8_lossy(&output.stdout).into_owned();
        if listed.contains("2a1f6c3e-5b4d-4e8f-9a0b-1c2d3e4f5a6b") && listed.contains("completed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        listed.contains("2a1f6c3e-5b4d-4e8f-9a0b-1c2d3e4f5a6b"),
        "no case for Alex: {listed}"
    );
    assert!(!dir.join("operator.sqlite").exists());
    server.kill().await.ok();
    std::fs::remove_dir_all(&dir).ok();
}
