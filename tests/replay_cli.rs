//! The `replay` command end to end: saved events through ingress and the pipeline, against
//! the Graph stand-in, report-only by default.

mod common;
mod graph_standin;

use graph_standin::*;

fn ledger_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("replay-{}.sqlite", uuid::Uuid::new_v4()))
}

async fn replay(s: &StandIn, args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .arg("replay")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RR_GRAPH_BASE_URL", s.graph_url())
        .env("RR_LOGIN_AUTHORITY", s.authority())
        .env("RR_LEDGER_PATH", ledger_path())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn replay_is_report_only_by_default() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let (ok, out) = replay(&s, &["events/sentinel/alert-identity-protection.json"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("completed  ReportOnly  user adele.vance@contoso.onmicrosoft.com"),
        "{out}"
    );
    assert!(
        out.contains("riskLevel high riskState atRisk; 2 sign-in(s) blocked with 53011"),
        "{out}"
    );
    assert!(
        out.contains("plan: rule(s) high risk, sign-ins already blocked: contain"),
        "{out}"
    );
    assert!(out.contains("revoke_sessions      planned"), "{out}");
    assert!(s.writes().is_empty(), "{:?}", s.writes());
}

#[tokio::test]
async fn replay_json_reports_each_file_and_fails_on_unusable_ones() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    let (ok, out) = replay(
        &s,
        &[
            "--json",
            "events/graph/users-updated.function-url.json",
            "events/sentinel/unknown-schema.json",
        ],
    )
    .await;
    assert!(!ok, "an unusable file makes the command fail");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["kind"], "graph_notifications");
    assert_eq!(lines[0]["cases"][0]["mode"], "report-only");
    assert_eq!(
        lines[0]["cases"][0]["actions"][0]["action"],
        "revoke_sessions"
    );
    assert_eq!(lines[0]["cases"][0]["actions"][0]["state"], "planned");
    assert_eq!(
        lines[0]["outcomes"][0]["case_id"],
        lines[0]["cases"][0]["case_id"]
    );
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("missing field `SystemAlertId`")
    );
}

#[tokio::test]
async fn replay_acts_only_with_enforce_and_an_enforcing_policy() {
    let s = start().await;
    seed(&s, "medium", "atRisk", 0);
    // The embedded policy is report-only: --enforce alone does not act.
    let (ok, out) = replay(
        &s,
        &[
            "--enforce",
            "events/sentinel/alert-identity-protection.json",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("ReportOnly"), "{out}");
    assert!(s.writes().is_empty());
    // A fresh ledger: the report-only case above would otherwise be the episode's case.

    let policy = std::env::temp_dir().join(format!("policy-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &policy,
        risk_responder::cases::policy::DEFAULT_POLICY
            .replace("mode = \"report-only\"", "mode = \"enforce\""),
    )
    .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .args([
            "replay",
            "--enforce",
            "events/sentinel/alert-identity-protection.json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RR_GRAPH_BASE_URL", s.graph_url())
        .env("RR_LOGIN_AUTHORITY", s.authority())
        .env("RR_POLICY_FILE", &policy)
        .env("RR_LEDGER_PATH", ledger_path())
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("completed  Enforce"), "{out}");
    assert!(out.contains("reset_password       done"), "{out}");
    assert_eq!(
        s.with(|d| d.risky_users[ADELE]["riskState"].clone()),
        "remediated"
    );
    std::fs::remove_file(policy).ok();
}
