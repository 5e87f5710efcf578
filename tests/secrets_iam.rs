//! The secrets cache against moto with IAM enforcement: a principal that may only call
//! `secretsmanager:GetSecretValue` keeps working past the TTL (nothing else is called), and
//! when even that is denied, the last good value is served within the grace period while the
//! log line carries AWS's error code and message (`AccessDenied...: User ... is not
//! authorized to perform: secretsmanager:GetSecretValue`), never a secret value.
//!
//! This binary turns IAM enforcement on for its own moto server: keep other tests out of it.

mod common;

use std::process::Command;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use common::moto;
use risk_responder::ingress::secrets::IngressSecrets;
use risk_responder::vault::{SecretStore, SecretsManagerStore};

/// Runs a boto3 script against moto with the given credentials; returns its stdout.
fn boto3(script: &str, key: &str, secret: &str) -> String {
    let output = Command::new(common::test_python())
        .args(["-c", script, &moto::endpoint()])
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

const SETUP: &str = r#"
import sys, json, boto3
ep = sys.argv[1]
sm = boto3.client("secretsmanager", endpoint_url=ep)
iam = boto3.client("iam", endpoint_url=ep)
sm.create_secret(Name="risk-responder/iam-test", SecretString=json.dumps({"client_states": ["iam-state-value-v1"]}))
keys = {}
for user in ["rr-webhook", "rr-admin"]:
    iam.create_user(UserName=user)
    k = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = [k["AccessKeyId"], k["SecretAccessKey"]]
iam.put_user_policy(UserName="rr-admin", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
iam.put_user_policy(UserName="rr-webhook", PolicyName="secrets", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}))
print(json.dumps(keys))
"#;

/// Replaces the webhook's policy: `action` is what it may do.
const SET_POLICY: &str = r#"
import sys, json, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1])
iam.put_user_policy(UserName="rr-webhook", PolicyName="secrets", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": sys.argv[2], "Resource": "*"}]}))
"#;

fn set_policy(admin: &[String], action: &str) {
    let output = Command::new(common::test_python())
        .args(["-c", SET_POLICY, &moto::endpoint(), action])
        .env("AWS_ACCESS_KEY_ID", &admin[0])
        .env("AWS_SECRET_ACCESS_KEY", &admin[1])
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn only_get_secret_value_is_needed_and_a_denial_is_logged_with_its_aws_code() {
    let (logs, _guard) = common::Logs::capture();
    let keys: serde_json::Value =
        serde_json::from_str(&boto3(SETUP, "testing", "testing")).unwrap();
    let key = |user: &str| -> Vec<String> {
        keys[user]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let (webhook, admin) = (key("rr-webhook"), key("rr-admin"));

    // From now on moto checks every request against the caller's IAM policies.
    let http = reqwest::Client::new();
    http.post(format!("{}/moto-api/reset-auth", moto::endpoint()))
        .body("0")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(moto::endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            &webhook[0],
            &webhook[1],
            None,
            None,
            "webhook",
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let ttl = Duration::from_millis(300);
    let store = SecretsManagerStore::<IngressSecrets>::with_grace(
        client,
        "risk-responder/iam-test",
        ttl,
        Duration::from_secs(3),
    );

    // GetSecretValue alone suffices, at cold start and past the TTL.
    let first = store.load().await.expect("GetSecretValue is allowed");
    assert_eq!(first.client_states[0].expose(), "iam-state-value-v1");
    for _ in 0..2 {
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        store.load().await.expect("refresh past the TTL");
    }
    assert!(!logs.text().contains("refresh failed"), "{}", logs.text());

    // Access revoked: the last good value is served, the denial is logged with AWS's words.
    set_policy(&admin, "secretsmanager:DescribeSecret");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let stale = store
        .load()
        .await
        .expect("last good value within the grace");
    assert_eq!(stale.client_states[0].expose(), "iam-state-value-v1");
    let mut text = logs.text();
    for _ in 0..50 {
        if text.contains("serving the last good value") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = logs.text();
    }
    let line = text
        .lines()
        .find(|l| l.contains("serving the last good value"))
        .unwrap_or_else(|| panic!("no refresh failure logged: {text}"));
    assert!(line.contains("AccessDeniedException: User: "), "{line}");
    assert!(
        line.contains("is not authorized to perform: secretsmanager:GetSecretValue"),
        "{line}"
    );
    assert!(line.contains("rr-webhook"), "{line}");
    assert!(!text.contains("iam-state-value-v1"), "secret value logged");

    // Access restored: the next refresh after the back-off reads the secret again.
    set_policy(&admin, "secretsmanager:GetSecretValue");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    store.load().await.unwrap();
    // The refresh runs in the background: wait for its log line (not for a guessed time).
    let logged = tokio::time::timeout(Duration::from_secs(30), async {
        while !logs.text().contains("refreshed after a failure") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(logged.is_ok(), "{}", logs.text());
}
