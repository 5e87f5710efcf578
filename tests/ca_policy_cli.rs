//! `ca-policy create` refuses what could lock every administrator out, and a tenant the
//! deployment does not serve: before any Conditional Access request.

mod graph_standin;

use graph_standin::{StandIn, start};

async fn cli(s: &StandIn, args: &[&str], policy_text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("rr-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_risk-responder"))
        .args(args)
        .env("RR_LEDGER_PATH", dir.join("ledger.sqlite"))
        .env("RR_GRAPH_BASE_URL", s.graph_url())
        .env("RR_LOGIN_AUTHORITY", s.authority())
        .env("RR_POLICY_FILE", &policy)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// The embedded policy without any protected account or group.
fn policy_without_protection() -> String {
    risk_responder::cases::policy::DEFAULT_POLICY
        .split("\n[safety]")
        .next()
        .unwrap()
        .to_owned()
        + "\n[safety]\nprotected_user_ids = []\nprotected_group_ids = []\n"
}

#[tokio::test]
async fn a_policy_that_would_exclude_no_break_glass_account_is_not_created() {
    let s = start().await;
    let (ok, out) = cli(&s, &["ca-policy", "create"], &policy_without_protection()).await;
    assert!(!ok, "{out}");
    assert!(out.contains("no protected (break-glass) account"), "{out}");
    assert!(s.with(|d| d.ca_policies.is_empty()), "nothing created");

    // Said explicitly, it is created (still report-only).
    let (ok, out) = cli(
        &s,
        &["ca-policy", "create", "--without-exclusions"],
        &policy_without_protection(),
    )
    .await;
    assert!(ok, "{out}");
    let created = s.with(|d| d.ca_policies[0].clone());
    assert_eq!(created["state"], "enabledForReportingButNotEnforced");
}

#[tokio::test]
async fn a_tenant_outside_the_allow_list_is_refused() {
    let s = start().await;
    let (ok, out) = cli(
        &s,
        &[
            "ca-policy",
            "--tenant",
            "00000000-0000-0000-0000-00000000dead",
            "check",
        ],
        risk_responder::cases::policy::DEFAULT_POLICY,
    )
    .await;
    assert!(!ok && out.contains("not in RR_ALLOWED_TENANTS"), "{out}");
}
