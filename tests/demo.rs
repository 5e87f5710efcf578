//! Demo mode reaches nothing real and touches nothing of the operator's: every outbound URL
//! (Graph, the token endpoint, signing keys, Azure Resource Manager) is the in-process
//! simulator's whatever the environment says, and the demo's ledger is its own file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// Addresses the environment names: a dead TEST-NET host, never contacted by the demo.
const ELSEWHERE: [(&str, &str); 4] = [
    (
        "RR_GRAPH_BASE_URL",
        "https://graph-elsewhere.invalid:9/v1.0",
    ),
    ("RR_LOGIN_AUTHORITY", "https://graph-elsewhere.invalid:9"),
    ("RR_ARM_BASE_URL", "https://graph-elsewhere.invalid:9"),
    ("RR_JWKS_URL", "https://graph-elsewhere.invalid:9/keys"),
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
    // A free port can be taken again before `serve` binds it (by the simulator `serve --demo`
    // starts first, among others): the server is up when it logs that it listens on our port;
    // if it stops instead, another port is tried.
    let mut started = None;
    for _ in 0..3 {
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
        // The server's log (JSON lines on its standard output) says where it listens.
        let mut stdout = BufReader::new(server.stdout.take().unwrap()).lines();
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = stdout.next_line().await {
                if line.contains("listening") && line.contains(&format!("127.0.0.1:{port}")) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if listening {
            // Keep reading what it writes, so a full pipe never stalls it.
            tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
            tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
            started = Some((server, port));
            break;
        }
        server.kill().await.ok();
    }
    let (mut server, port) = started.expect("serve --demo did not come up");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
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
        if alex_settled(&listed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        alex_settled(&listed),
        "Alex's case was not worked to a settled state: {listed}"
    );
    assert!(!dir.join("operator.sqlite").exists());
    server.kill().await.ok();
    std::fs::remove_dir_all(&dir).ok();
}

/// Whether `cases list --json` shows Alex's case worked to a settled state (the demo policy is
/// report-only: completed with its plan recorded, or waiting for a person).
fn alex_settled(listed: &str) -> bool {
    // One JSON object a line.
    let cases: Vec<serde_json::Value> = listed
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    cases.iter().any(|c| {
        c["user_id"] == "2a1f6c3e-5b4d-4e8f-9a0b-1c2d3e4f5a6b"
            && matches!(
                c["status"].as_str(),
                Some("completed" | "awaiting_approval")
            )
    })
}

/// Runs the CLI in `dir` with the environment pointing elsewhere; returns stdout, or panics
/// with both streams.
async fn cli(dir: &Path, args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .args(args)
        .current_dir(dir)
        .envs(ELSEWHERE)
        .env("RR_LEDGER_PATH", dir.join("operator.sqlite"))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {out}{err}");
    assert!(!err.contains("graph-elsewhere.invalid"), "{err}");
    out
}

/// The case of `user_id` among `cases list --json` lines.
fn case_of(listed: &str, user_id: &str) -> serde_json::Value {
    listed
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|case| case["user_id"] == user_id)
        .unwrap_or_else(|| panic!("no case for {user_id}: {listed}"))
}

#[tokio::test]
async fn the_operator_commands_work_on_the_demo_ledger_after_a_replay() {
    use risk_responder::demo::tenant::{ADELE, BREAK_GLASS};
    let dir = scratch();
    let mut replay = vec!["replay", "--demo"];
    let events = demo_events();
    replay.extend(events.iter().map(|p| p.to_str().unwrap()));
    cli(&dir, &replay).await;

    // `cases list --demo` reads the demo's ledger, not RR_LEDGER_PATH.
    let listed = cli(&dir, &["cases", "list", "--json", "--demo"]).await;
    let glass = case_of(&listed, BREAK_GLASS.0);
    assert_eq!(glass["status"], "awaiting_approval", "{glass}");
    let adele = case_of(&listed, ADELE.0);
    let adele_signals = adele["signals"]["count"].as_u64().unwrap();
    assert!(!dir.join("operator.sqlite").exists());

    // The sweep finds the same users and merges its signals into their cases.
    cli(&dir, &["sweep", "--demo"]).await;
    let listed = cli(&dir, &["cases", "list", "--json", "--demo"]).await;
    let adele_after = case_of(&listed, ADELE.0);
    assert_eq!(adele_after["case_id"], adele["case_id"]);
    assert!(
        adele_after["signals"]["count"].as_u64().unwrap() > adele_signals,
        "{adele_after}"
    );

    // A person approves the held break-glass case: it is carried out on the simulated tenant.
    let case_id = glass["case_id"].as_str().unwrap();
    let shown = cli(
        &dir,
        &[
            "cases",
            "approve",
            case_id,
            "--plan-version",
            "1",
            "--reason",
            "checked",
            "--by",
            "alice",
            "--demo",
        ],
    )
    .await;
    assert!(shown.contains("approve recorded by alice"), "{shown}");
    let shown = cli(&dir, &["cases", "show", case_id, "--json", "--demo"]).await;
    let case: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(case["status"], "completed", "{case}");
    let audit = cli(&dir, &["audit", "--demo"]).await;
    assert!(
        audit.contains(&format!("case {case_id}  status completed")),
        "{audit}"
    );
    assert!(!dir.join("operator.sqlite").exists());
    std::fs::remove_dir_all(&dir).ok();
}
