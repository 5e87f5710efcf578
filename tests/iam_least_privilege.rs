//! The template grants what the code calls, and nothing more: each function's handler code runs
//! against moto with IAM enforcement, as an IAM user holding exactly the policy statements that
//! `infra/template.yaml` gives the function's role (`!Ref`/`!GetAtt`/`!Sub` resolved to the moto
//! resources). The secrets TTL is 1 s (no grace) and requests are sent past it, so a call made
//! only on refresh is covered too. Denied calls are checked to be denied, and at the end every
//! denial moto recorded must be one this test provoked on purpose.
//!
//! moto's own IAM check ignores resources for DynamoDB and Secrets Manager and ignores
//! `dynamodb:LeadingKeys`; `tests/iam/moto_iam.py` evaluates them (see its doc). This binary
//! runs its own moto server, with enforcement on: keep other tests out of it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use common::{call, lambda_event, post_sentinel, signed_headers};
use risk_responder::config::Config;
use risk_responder::http::{AppState, Intake};
use risk_responder::ledger::dynamodb::DynamoLedger;
use risk_responder::ledger::{Claim, Ledger};
use risk_responder::queue::{SqsQueue, WorkItem};
use risk_responder::remediate::PasswordVault;
use risk_responder::secrets::{
    GraphSecrets, IngressSecrets, SecretStore, SecretString, SecretsManagerPasswordVault,
    SecretsManagerStore,
};
use serde_json::{Value as Json, json};
use serde_norway::Value as Yaml;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";
const SECRETS_TTL: Duration = Duration::from_secs(1);
const PAST_TTL: Duration = Duration::from_millis(1300);

struct Moto {
    endpoint: String,
    _child: Mutex<Child>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// This binary's moto server (IAM evaluation of `tests/iam/moto_iam.py`).
fn endpoint() -> String {
    MOTO.get_or_init(|| {
        let script = format!("{}/tests/iam/moto_iam.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(common::test_python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("moto port");
        let port: u16 = line.trim().parse().expect("moto printed its port");
        std::mem::forget(child.stdin.take());
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: Mutex::new(child),
        }
    })
    .endpoint
    .clone()
}

/// Runs a boto3 script (argv: endpoint, then `args`) with the given credentials; its stdout.
fn boto3(script: &str, args: &[&str], key: (&str, &str)) -> String {
    let output = Command::new(common::test_python())
        .args(["-c", script, &endpoint()])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", key.0)
        .env("AWS_SECRET_ACCESS_KEY", key.1)
        .env("AWS_DEFAULT_REGION", REGION)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The resources the template names, created in moto (no IAM enforcement yet). The two
/// secrets hold the parts of the development secrets document.
const SETUP: &str = r#"
import sys, json, boto3
ep, secrets_file = sys.argv[1], sys.argv[2]
dev = json.load(open(secrets_file))
ingress = {k: dev[k] for k in ("client_states", "webhook_hmac_keys", "decryption_keys")}
graph = {k: dev[k] for k in ("tenant_id", "client_id", "client_secret", "certificate_private_key", "certificate_thumbprint") if k in dev}
ddb = boto3.client("dynamodb", endpoint_url=ep)
sqs = boto3.client("sqs", endpoint_url=ep)
sm = boto3.client("secretsmanager", endpoint_url=ep)
table = ddb.create_table(TableName="rr-ledger", BillingMode="PAY_PER_REQUEST",
    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])["TableDescription"]
queue = sqs.create_queue(QueueName="rr-work")["QueueUrl"]
dlq = sqs.create_queue(QueueName="rr-dead-letters")["QueueUrl"]
arn = lambda url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
print(json.dumps({
    "table": table["TableName"], "table_arn": table["TableArn"],
    "queue_url": queue, "queue_arn": arn(queue), "dlq_url": dlq, "dlq_arn": arn(dlq),
    "ingress_arn": sm.create_secret(Name="rr/ingress", SecretString=json.dumps(ingress))["ARN"],
    "graph_arn": sm.create_secret(Name="rr/graph", SecretString=json.dumps(graph))["ARN"],
}))
"#;

/// IAM users with the given inline policies (argv[2]: {user: {policy name: document}}); their keys.
const USERS: &str = r#"
import sys, json, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1])
keys = {}
for user, policies in json.loads(sys.argv[2]).items():
    iam.create_user(UserName=user)
    for name, document in policies.items():
        iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=json.dumps(document))
    k = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = [k["AccessKeyId"], k["SecretAccessKey"]]
print(json.dumps(keys))
"#;

/// What `!Ref`, `!GetAtt` and `!Sub` resolve to.
struct Names {
    refs: HashMap<String, String>,
    attributes: HashMap<String, String>,
}

impl Names {
    fn reference(&self, name: &str) -> String {
        self.refs
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("the test does not know what !Ref {name} is in moto"))
    }

    fn attribute(&self, name: &str) -> String {
        self.attributes
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("the test does not know what !GetAtt {name} is in moto"))
    }

    fn sub(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("closed ${") + start;
            let name = &rest[start + 2..end];
            out.push_str(&if name.contains('.') {
                self.attribute(name)
            } else {
                self.reference(name)
            });
            rest = &rest[end + 1..];
        }
        out + rest
    }

    /// The template value as JSON, intrinsic functions resolved.
    fn resolve(&self, value: &Yaml) -> Json {
        match value {
            Yaml::Null => Json::Null,
            Yaml::Bool(b) => json!(b),
            Yaml::Number(n) => serde_json::to_value(n).unwrap(),
            Yaml::String(s) => json!(s),
            Yaml::Sequence(items) => Json::Array(items.iter().map(|v| self.resolve(v)).collect()),
            Yaml::Mapping(map) => {
                if map.len() == 1 {
                    let (key, inner) = map.iter().next().unwrap();
                    match key.as_str() {
                        Some("Ref") => return json!(self.reference(inner.as_str().unwrap())),
                        Some(f) if f.starts_with("Fn::") => {
                            return self.function(&f[4..], inner);
                        }
                        _ => {}
                    }
                }
                Json::Object(
                    map.iter()
                        .map(|(k, v)| (k.as_str().unwrap().to_owned(), self.resolve(v)))
                        .collect(),
                )
            }
            Yaml::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                let name = tag.trim_start_matches('!');
                if name == "Ref" {
                    return json!(self.reference(tagged.value.as_str().unwrap()));
                }
                self.function(name, &tagged.value)
            }
        }
    }

    fn function(&self, name: &str, argument: &Yaml) -> Json {
        match name {
            "GetAtt" => match argument {
                Yaml::String(s) => json!(self.attribute(s)),
                Yaml::Sequence(parts) => json!(self.attribute(&format!(
                    "{}.{}",
                    parts[0].as_str().unwrap(),
                    parts[1].as_str().unwrap()
                ))),
                other => panic!("!GetAtt {other:?}"),
            },
            "Sub" => json!(self.sub(argument.as_str().expect("!Sub with a string"))),
            other => panic!("the test cannot resolve Fn::{other} in a policy statement"),
        }
    }
}

/// {function: {policy name: policy document}} for the webhook, worker and renewer, as the
/// template declares them: the function's `Role` and that role's inline policies.
fn template_policies(names: &Names) -> BTreeMap<String, BTreeMap<String, Json>> {
    let path = format!("{}/infra/template.yaml", env!("CARGO_MANIFEST_DIR"));
    let template: Yaml = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let resources = &template["Resources"];
    let mut out = BTreeMap::new();
    for function in ["WebhookFunction", "WorkerFunction", "RenewerFunction"] {
        let properties = &resources[function]["Properties"];
        assert!(
            properties.get("Policies").is_none(),
            "{function}: policies belong on its role, where this test reads them"
        );
        let Yaml::Tagged(role) = &properties["Role"] else {
            panic!("{function}: Role must be !GetAtt <Role>.Arn");
        };
        let role = role.value.as_str().unwrap().trim_end_matches(".Arn");
        let mut documents = BTreeMap::new();
        for policy in resources[role]["Properties"]["Policies"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{role} has no inline policies"))
        {
            documents.insert(
                policy["PolicyName"].as_str().unwrap().to_owned(),
                names.resolve(&policy["PolicyDocument"]),
            );
        }
        out.insert(function.to_owned(), documents);
    }
    // Managed policies would be granted without this test seeing them.
    for role in ["WebhookRole", "WorkerRole", "RenewerRole"] {
        assert!(
            resources[role]["Properties"]
                .get("ManagedPolicyArns")
                .is_none()
        );
    }
    out
}

fn parameter_default(name: &str) -> String {
    let path = format!("{}/infra/template.yaml", env!("CARGO_MANIFEST_DIR"));
    let template: Yaml = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    template["Parameters"][name]["Default"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn sdk(key: &[String]) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new(REGION))
        .credentials_provider(aws_credential_types::Credentials::new(
            &key[0], &key[1], None, None, "iam-test",
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await
}

/// Every request moto refused so far: (user ARN, action, resource).
async fn denials() -> Vec<(String, String, String)> {
    reqwest::get(format!("{}/test-api/denials", endpoint()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn is_denied<E: std::fmt::Debug>(result: Result<impl std::fmt::Debug, E>) -> bool {
    match result {
        Ok(_) => false,
        Err(e) => format!("{e:?}").contains("AccessDenied"),
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

/// Expected status of each saved Lambda HTTP event (shared with `make lambda-check`).
fn expected_statuses() -> BTreeMap<String, u16> {
    let path = format!("{}/events/expected-status.json", env!("CARGO_MANIFEST_DIR"));
    let map: BTreeMap<String, Json> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    map.into_iter()
        .filter_map(|(file, v)| Some((file, v.get("lambda_http_event")?.as_u64()? as u16)))
        .collect()
}

#[tokio::test]
async fn each_function_works_with_exactly_its_template_policy_and_no_more() {
    let (logs, _guard) = common::Logs::capture();
    let admin_setup = ("testing", "testing");
    let dev_secrets = format!("{}/config/local-secrets.json", env!("CARGO_MANIFEST_DIR"));
    let r: Json =
        serde_json::from_str(&boto3(SETUP, &[dev_secrets.as_str()], admin_setup)).unwrap();
    let get = |k: &str| r[k].as_str().unwrap().to_owned();
    let prefix = parameter_default("TemporaryPasswordPrefix");

    let mut refs: HashMap<String, String> = [
        ("IngressSecretArn", get("ingress_arn")),
        ("GraphSecretArn", get("graph_arn")),
        ("LedgerTable", get("table")),
        ("WorkQueue", get("queue_url")),
        ("DeadLetterQueue", get("dlq_url")),
        ("TemporaryPasswordPrefix", prefix.clone()),
        ("AWS::Region", REGION.to_owned()),
        ("AWS::AccountId", ACCOUNT.to_owned()),
        ("AWS::Partition", "aws".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    refs.insert("AWS::URLSuffix".into(), "amazonaws.com".into());
    let mut attributes: HashMap<String, String> = [
        ("LedgerTable.Arn", get("table_arn")),
        ("WorkQueue.Arn", get("queue_arn")),
        ("DeadLetterQueue.Arn", get("dlq_arn")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for logs_group in ["WebhookLogs", "WorkerLogs", "RenewerLogs"] {
        attributes.insert(
            format!("{logs_group}.Arn"),
            format!("arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{logs_group}:*"),
        );
    }
    let policies = template_policies(&Names { refs, attributes });

    let users = json!({
        "rr-webhook": policies["WebhookFunction"],
        "rr-worker": policies["WorkerFunction"],
        "rr-renewer": policies["RenewerFunction"],
        "rr-admin": {"all": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}},
    });
    let keys: Json =
        serde_json::from_str(&boto3(USERS, &[&users.to_string()], admin_setup)).unwrap();
    let key = |user: &str| -> Vec<String> {
        keys[user]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };

    // From here on moto checks every request against the caller's policies.
    reqwest::Client::new()
        .post(format!("{}/moto-api/reset-auth", endpoint()))
        .body("0")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let admin = sdk(&key("rr-admin")).await;
    let admin_ddb = aws_sdk_dynamodb::Client::new(&admin);
    let table = get("table");

    // ---- webhook: every saved Lambda HTTP event, then again past the secrets TTL ----
    let webhook = sdk(&key("rr-webhook")).await;
    let webhook_ddb = aws_sdk_dynamodb::Client::new(&webhook);
    let webhook_state = |queue_url: String| {
        let ledger = Arc::new(DynamoLedger::new(webhook_ddb.clone(), table.clone()));
        let config = Config {
            secrets_ttl: SECRETS_TTL,
            secrets_grace: Duration::ZERO,
            ledger_table: Some(table.clone()),
            queue_url: Some(queue_url.clone()),
            graph_client_id: Some(common::APP_ID.to_owned()),
            ..Config::default()
        };
        let store = Arc::new(SecretsManagerStore::<IngressSecrets>::with_grace(
            aws_sdk_secretsmanager::Client::new(&webhook),
            get("ingress_arn"),
            SECRETS_TTL,
            Duration::ZERO,
        ));
        let intake = Intake {
            ledger: ledger.clone(),
            queue: Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&webhook), queue_url)),
            replay_guard: ledger,
        };
        AppState::new(config, store, intake, reqwest::Client::new())
    };
    let state = webhook_state(get("queue_url"));
    let expected = expected_statuses();
    assert!(expected.len() >= 10, "{expected:?}");
    for round in ["cold", "past the secrets TTL"] {
        for (file, status) in &expected {
            let (got, _, body) = call(state.clone(), lambda_event(file)).await;
            assert_eq!(
                got,
                *status,
                "{file} ({round}): {body}; denials {:?}",
                denials().await
            );
        }
        tokio::time::sleep(PAST_TTL).await;
    }

    // A signed Sentinel alert: replay guard (webhook#), ledger, queue; its replay is answered as
    // a duplicate, not kept again.
    let body = common::event_body("sentinel/alert-identity-protection.json");
    let headers = signed_headers(common::WEBHOOK_KEY, "msg_iam_1", &body);
    let (status, _, text) = call(state.clone(), post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "{text}");
    let (status, _, text) = call(state.clone(), post_sentinel(&body, &headers)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("duplicate"), "{text}");

    // A delivery that cannot be kept (this queue is not the webhook's to send to) is answered
    // 503 and forgotten (DeleteItem of its webhook# item), so the retry goes through.
    let cut_off = webhook_state(get("dlq_url"));
    let headers = signed_headers(common::WEBHOOK_KEY, "msg_iam_2", &body);
    let (status, _, _) = call(cut_off, post_sentinel(&body, &headers)).await;
    assert_eq!(status, 503);
    let guard = admin_ddb
        .get_item()
        .table_name(&table)
        .key("pk", s("webhook#msg_iam_2"))
        .send()
        .await
        .unwrap();
    assert!(guard.item.is_none(), "the unkept delivery is forgotten");
    let (status, _, text) = call(state.clone(), post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "retry after 503: {text}");

    // Denied: deleting anything but webhook# items, writing case state, the Graph credential.
    let delete = |pk: &str| {
        webhook_ddb
            .delete_item()
            .table_name(&table)
            .key("pk", s(pk))
            .send()
    };
    assert!(is_denied(delete("event#some-event").await));
    assert!(is_denied(delete("signal#some-signal").await));
    assert!(!is_denied(delete("webhook#msg_unknown").await));
    assert!(is_denied(
        webhook_ddb
            .put_item()
            .table_name(&table)
            .item("pk", s("case#c1"))
            .send()
            .await
    ));
    let batch = |pk: &str| {
        webhook_ddb
            .batch_write_item()
            .request_items(
                &table,
                vec![
                    WriteRequest::builder()
                        .put_request(PutRequest::builder().item("pk", s(pk)).build().unwrap())
                        .build(),
                ],
            )
            .send()
    };
    assert!(!is_denied(batch("signal#batched").await));
    assert!(is_denied(batch("event#batched").await));
    let webhook_sm = aws_sdk_secretsmanager::Client::new(&webhook);
    assert!(is_denied(
        webhook_sm
            .get_secret_value()
            .secret_id(get("graph_arn"))
            .send()
            .await
    ));
    // What `aws_secretsmanager_caching` called to refresh a secret past its TTL: not granted,
    // so a secrets cache calling it fails here as it would in AWS.
    assert!(is_denied(
        webhook_sm
            .describe_secret()
            .secret_id(get("ingress_arn"))
            .send()
            .await
    ));

    // ---- worker: secrets past the TTL, work from the queue, claim and complete, passwords ----
    let worker = sdk(&key("rr-worker")).await;
    let graph_store = SecretsManagerStore::<GraphSecrets>::with_grace(
        aws_sdk_secretsmanager::Client::new(&worker),
        get("graph_arn"),
        SECRETS_TTL,
        Duration::ZERO,
    );
    let ingress_store = SecretsManagerStore::<IngressSecrets>::with_grace(
        aws_sdk_secretsmanager::Client::new(&worker),
        get("ingress_arn"),
        SECRETS_TTL,
        Duration::ZERO,
    );
    for _ in 0..2 {
        assert!(graph_store.load().await.unwrap().credential().is_some());
        assert!(!ingress_store.load().await.unwrap().client_states.is_empty());
        tokio::time::sleep(PAST_TTL).await;
    }
    let sqs = aws_sdk_sqs::Client::new(&worker);
    let ledger = DynamoLedger::new(aws_sdk_dynamodb::Client::new(&worker), table.clone());
    let mut completed = 0;
    for _ in 0..20 {
        let received = sqs
            .receive_message()
            .queue_url(get("queue_url"))
            .max_number_of_messages(10)
            .send()
            .await
            .expect("the worker may receive its work");
        if received.messages().is_empty() {
            break;
        }
        for message in received.messages() {
            if let Ok(WorkItem::Risk(event)) = serde_json::from_str(message.body().unwrap()) {
                match ledger
                    .claim(&event, Duration::from_secs(900))
                    .await
                    .unwrap()
                {
                    Claim::Acquired { .. } => {
                        let report = serde_json::from_value(json!({
                            "event_id": event.event_id, "tenant_id": event.tenant_id,
                            "retryable": false, "needs_operator": false
                        }))
                        .unwrap();
                        ledger.complete(&event.event_id, &report).await.unwrap();
                        completed += 1;
                    }
                    Claim::Completed(_) => {}
                    other => panic!("unexpected claim {other:?}"),
                }
            }
            sqs.delete_message()
                .queue_url(get("queue_url"))
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .expect("the worker may delete its work");
        }
    }
    assert!(
        completed >= 2,
        "events the webhook kept were completed: {completed}"
    );
    let vault = SecretsManagerPasswordVault::new(aws_sdk_secretsmanager::Client::new(&worker));
    let password = SecretString::new("Tmp-Pass-1234!abcd");
    let kept = format!("{prefix}iam-test/kept");
    vault.store(&kept, &password, 24).await.unwrap();
    vault
        .store(&format!("{prefix}iam-test/expired"), &password, 0)
        .await
        .unwrap();
    let outside = vault.store("elsewhere/iam-test", &password, 24).await;
    assert!(outside.unwrap_err().contains("AccessDenied"));
    let worker_ddb = aws_sdk_dynamodb::Client::new(&worker);
    assert!(is_denied(
        worker_ddb
            .delete_item()
            .table_name(&table)
            .key("pk", s("event#x"))
            .send()
            .await
    ));
    assert!(is_denied(
        worker_ddb
            .get_item()
            .table_name(&table)
            .key("pk", s("webhook#msg_iam_1"))
            .send()
            .await
    ));

    // ---- renewer: secrets past the TTL, the temporary-password sweep ----
    let renewer = sdk(&key("rr-renewer")).await;
    let renewer_sm = aws_sdk_secretsmanager::Client::new(&renewer);
    let graph_store = SecretsManagerStore::<GraphSecrets>::with_grace(
        renewer_sm.clone(),
        get("graph_arn"),
        SECRETS_TTL,
        Duration::ZERO,
    );
    let ingress_store = SecretsManagerStore::<IngressSecrets>::with_grace(
        renewer_sm.clone(),
        get("ingress_arn"),
        SECRETS_TTL,
        Duration::ZERO,
    );
    for _ in 0..2 {
        graph_store.load().await.unwrap();
        ingress_store.load().await.unwrap();
        tokio::time::sleep(PAST_TTL).await;
    }
    let sweeper = SecretsManagerPasswordVault::new(renewer_sm.clone());
    assert_eq!(sweeper.sweep_expired(&prefix).await.unwrap(), 1);
    let admin_sm = aws_sdk_secretsmanager::Client::new(&admin);
    let listed = admin_sm.list_secrets().send().await.unwrap();
    let names: Vec<&str> = listed
        .secret_list()
        .iter()
        .filter_map(|s| s.name())
        .collect();
    assert!(names.contains(&kept.as_str()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.ends_with("iam-test/expired")),
        "{names:?}"
    );
    assert!(is_denied(
        renewer_sm
            .delete_secret()
            .secret_id(get("graph_arn"))
            .send()
            .await
    ));
    assert!(is_denied(
        aws_sdk_dynamodb::Client::new(&renewer)
            .get_item()
            .table_name(&table)
            .key("pk", s("event#x"))
            .send()
            .await
    ));

    // Every denial was one provoked above: nothing the handlers call was refused.
    let denials = denials().await;
    let provoked = [
        ("rr-webhook", "sqs:SendMessage", get("dlq_arn")),
        ("rr-webhook", "dynamodb:DeleteItem", get("table_arn")),
        ("rr-webhook", "dynamodb:PutItem", get("table_arn")),
        ("rr-webhook", "dynamodb:BatchWriteItem", get("table_arn")),
        (
            "rr-webhook",
            "secretsmanager:GetSecretValue",
            get("graph_arn"),
        ),
        (
            "rr-webhook",
            "secretsmanager:DescribeSecret",
            get("ingress_arn"),
        ),
        ("rr-worker", "secretsmanager:CreateSecret", String::new()),
        ("rr-worker", "dynamodb:DeleteItem", get("table_arn")),
        ("rr-worker", "dynamodb:GetItem", get("table_arn")),
        (
            "rr-renewer",
            "secretsmanager:DeleteSecret",
            get("graph_arn"),
        ),
        ("rr-renewer", "dynamodb:GetItem", get("table_arn")),
    ];
    for (user, action, resource) in &denials {
        assert!(
            provoked
                .iter()
                .any(|(u, a, r)| user.ends_with(&format!("user/{u}"))
                    && action == a
                    && (r.is_empty() || resource == r)),
            "unexpected denial: {user} {action} {resource}; all: {denials:?}"
        );
    }
    assert!(denials.len() >= provoked.len(), "{denials:?}");
    let text = logs.text();
    assert!(!text.contains("Tmp-Pass-1234"), "password in logs");
}
