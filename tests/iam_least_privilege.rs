//! The template grants what the code calls, and nothing more: each function's code runs against
//! moto with IAM enforcement, as an IAM user holding exactly the policy statements that
//! `infra/template.yaml` gives the function's role (`!Ref`/`!GetAtt`/`!Sub` resolved to the moto
//! resources), with Microsoft Graph played by the in-process simulator (`crates/graph-simulator`):
//!
//! - webhook: every saved Lambda HTTP event through the router, a signed Sentinel alert and its
//!   replay, a delivery that cannot be queued (503, replay guard forgotten);
//! - worker: `Worker::handle_sqs`, as the Lambda runs it, on what the webhook enqueued, received
//!   and deleted as the SQS event source mapping does; the policy in enforce mode with
//!   temporary passwords in Secrets Manager; a Graph outage during the password reset leaves the
//!   case for retry (nothing stored: a password is stored only once set), the redelivery sets
//!   and stores it and completes the case, and a store for the same case again (a retry after a
//!   lost outcome) replaces it (PutSecretValue, TagResource);
//! - sweep: `Sweeper::run`, built as the Lambda builds it, over risky users and 53011 sign-ins;
//! - renewer: subscription renewal and the temporary-password clean-up.
//!
//! The secrets TTL is 1 s (no grace) and requests are sent past it, so a call made only on
//! refresh is covered too. After each function's code ran, every element of its policy
//! (statement, action, resource, `dynamodb:LeadingKeys` pattern) must have been needed by some
//! request (log statements aside: the Lambda runtime writes logs, not this code). Calls a
//! function must not make are checked to be denied, and at the end every denial moto recorded
//! must be one this test provoked on purpose: any other denial is a call the code makes and the
//! template does not grant.
//!
//! moto's own IAM check ignores resources for DynamoDB and Secrets Manager, ignores
//! `dynamodb:LeadingKeys` and does not look into transactions; `tests/iam/moto_iam.py`
//! evaluates them (see its doc). This binary runs its own moto server, with enforcement on:
//! keep other tests out of it.

mod common;
mod graph_standin;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use common::{call, lambda_event, post_sentinel, signed_headers};
use graph_standin::{ADELE, GraphSimulator, TENANT};
use risk_responder::app;
use risk_responder::cases::policy::PasswordDelivery;
use risk_responder::cases::{Action, CaseStatus, Mode, Policy};
use risk_responder::config::Config;
use risk_responder::event::{RiskLevel, Subject};
use risk_responder::graph::credential::GraphSecrets;
use risk_responder::http::{AppState, Intake};
use risk_responder::ingress::secrets::IngressSecrets;
use risk_responder::ledger::dynamodb::DynamoStore;
use risk_responder::ledger::{Ledger, NewItem, SignalRecord, Store};
use risk_responder::queue::{SqsQueue, WorkItem};
use risk_responder::respond::Worker;
use risk_responder::respond::sweep::Sweeper;
use risk_responder::support::secret::SecretString;
use risk_responder::vault::secrets_manager::EXPIRES_AT_TAG;
use risk_responder::vault::{PasswordVault, SecretsManagerPasswordVault};
use risk_responder::vault::{SecretStore, SecretsManagerStore};
use serde_json::{Value as Json, json};
use serde_norway::Value as Yaml;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";
const SECRETS_TTL: Duration = Duration::from_secs(1);
const PAST_TTL: Duration = Duration::from_millis(1300);
/// Where subscriptions send notifications (the worker and the renewer manage them).
const NOTIFICATION_URL: &str = "https://abcdefghij.lambda-url.us-east-1.on.aws/graph/notifications";
/// The subscription of the saved `reauthorizationRequired` lifecycle event.
const SUBSCRIPTION_ID: &str = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07";
/// Statements the code does not call: the Lambda runtime writes the function's logs.
const RUNTIME_STATEMENTS: &[&str] = &["Logs"];

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
graph = {k: dev[k] for k in ("tenant_id", "client_id", "client_secret", "certificate_private_key", "certificate_thumbprint", "intent_sealing_key") if k in dev}
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

/// What `!Ref`, `!GetAtt` and `!Sub` resolve to, and the template's conditions that `!If`
/// chooses by (`!Ref AWS::NoValue` leaves the element out).
struct Names {
    refs: HashMap<String, String>,
    attributes: HashMap<String, String>,
    conditions: HashMap<String, bool>,
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
        self.resolve_or_none(value)
            .expect("!Ref AWS::NoValue where a value is required")
    }

    /// As [`Names::resolve`]; `None` for `!Ref AWS::NoValue`, which sequences and mappings
    /// leave out.
    fn resolve_or_none(&self, value: &Yaml) -> Option<Json> {
        Some(match value {
            Yaml::Null => Json::Null,
            Yaml::Bool(b) => json!(b),
            Yaml::Number(n) => serde_json::to_value(n).unwrap(),
            Yaml::String(s) => json!(s),
            Yaml::Sequence(items) => Json::Array(
                items
                    .iter()
                    .filter_map(|v| self.resolve_or_none(v))
                    .collect(),
            ),
            Yaml::Mapping(map) => {
                if map.len() == 1 {
                    let (key, inner) = map.iter().next().unwrap();
                    match key.as_str() {
                        Some("Ref") => return self.reference_or_none(inner.as_str().unwrap()),
                        Some(f) if f.starts_with("Fn::") => {
                            return self.function(&f[4..], inner);
                        }
                        _ => {}
                    }
                }
                Json::Object(
                    map.iter()
                        .filter_map(|(k, v)| {
                            Some((k.as_str().unwrap().to_owned(), self.resolve_or_none(v)?))
                        })
                        .collect(),
                )
            }
            Yaml::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                let name = tag.trim_start_matches('!');
                if name == "Ref" {
                    return self.reference_or_none(tagged.value.as_str().unwrap());
                }
                return self.function(name, &tagged.value);
            }
        })
    }

    fn reference_or_none(&self, name: &str) -> Option<Json> {
        (name != "AWS::NoValue").then(|| json!(self.reference(name)))
    }

    fn function(&self, name: &str, argument: &Yaml) -> Option<Json> {
        Some(match name {
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
            "If" => {
                let branches = argument.as_sequence().expect("!If [condition, then, else]");
                let condition = branches[0].as_str().unwrap();
                let holds = *self.conditions.get(condition).unwrap_or_else(|| {
                    panic!("the test does not know whether condition {condition} holds")
                });
                return self.resolve_or_none(&branches[if holds { 1 } else { 2 }]);
            }
            other => panic!("the test cannot resolve Fn::{other} in a policy statement"),
        })
    }
}

/// {function: {policy name: policy document}} for every function, as the template declares
/// them: the function's `Role` and that role's inline policies.
fn template_policies(names: &Names) -> BTreeMap<String, BTreeMap<String, Json>> {
    let path = format!("{}/infra/template.yaml", env!("CARGO_MANIFEST_DIR"));
    let template: Yaml = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let resources = &template["Resources"];
    let mut out = BTreeMap::new();
    let functions: Vec<&str> = resources
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(name, _)| name.as_str().unwrap())
        .collect();
    assert_eq!(
        functions,
        [
            "WebhookFunction",
            "WorkerFunction",
            "SweepFunction",
            "RenewerFunction"
        ],
        "a function this test does not run"
    );
    for function in functions {
        let properties = &resources[function]["Properties"];
        assert!(
            properties.get("Policies").is_none(),
            "{function}: policies belong on its role, where this test reads them"
        );
        let Yaml::Tagged(role) = &properties["Role"] else {
            panic!("{function}: Role must be !GetAtt <Role>.Arn");
        };
        let role = role.value.as_str().unwrap().trim_end_matches(".Arn");
        // Managed policies would be granted without this test seeing them.
        assert!(
            resources[role]["Properties"]
                .get("ManagedPolicyArns")
                .is_none(),
            "{role}: inline policies only"
        );
        let mut documents = BTreeMap::new();
        for policy in resources[role]["Properties"]["Policies"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{role} has no inline policies"))
        {
            let document = names.resolve(&policy["PolicyDocument"]);
            for statement in document["Statement"].as_array().unwrap() {
                assert!(
                    statement["Sid"].is_string(),
                    "{role}: every statement needs a Sid (the usage check names it): {statement}"
                );
            }
            documents.insert(policy["PolicyName"].as_str().unwrap().to_owned(), document);
        }
        out.insert(function.to_owned(), documents);
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

/// Every request moto refused so far: (user ARN, action, resource, DynamoDB leading keys).
async fn denials() -> Vec<(String, String, String, Vec<String>)> {
    reqwest::get(format!("{}/test-api/denials", endpoint()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The elements of `policies` no allowed request of `user` needed so far, log statements
/// aside: (Sid, action, resource, leading-key pattern).
async fn unused(user: &str, policies: &BTreeMap<String, Json>) -> Vec<Json> {
    let unused: Vec<Json> = reqwest::Client::new()
        .post(format!("{}/test-api/unused", endpoint()))
        .json(&json!({"user": user, "policies": policies}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    unused
        .into_iter()
        .filter(|e| !RUNTIME_STATEMENTS.contains(&e[0].as_str().unwrap_or_default()))
        .collect()
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

/// The worker's SQS event source mapping: reads the queue's attributes, receives with the
/// worker's credentials, hands the batch to the function and deletes every message the
/// function did not report failed (`ReportBatchItemFailures`).
struct SqsEventSource {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
}

impl SqsEventSource {
    async fn new(sqs: aws_sdk_sqs::Client, queue_url: String) -> Self {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("the worker may read its queue's attributes");
        let queue_arn = attributes.attributes().unwrap()[&QueueAttributeName::QueueArn].clone();
        Self {
            sqs,
            queue_url,
            queue_arn,
        }
    }

    /// Every visible message as one SQS event, as Lambda sends it (hidden for `visibility`
    /// seconds); and each message's receipt handle.
    async fn receive(&self, visibility: i32) -> (SqsEvent, BTreeMap<String, String>) {
        let mut records = Vec::new();
        let mut receipts = BTreeMap::new();
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(visibility)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .expect("the worker may receive its work");
            if received.messages().is_empty() {
                break;
            }
            for m in received.messages() {
                let attributes: serde_json::Map<String, Json> = m
                    .attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(json!({
                    "messageId": m.message_id(), "receiptHandle": m.receipt_handle(),
                    "body": m.body(), "attributes": attributes, "messageAttributes": {},
                    "md5OfBody": m.md5_of_body(), "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn, "awsRegion": REGION,
                }));
                receipts.insert(
                    m.message_id().unwrap().to_owned(),
                    m.receipt_handle().unwrap().to_owned(),
                );
            }
        }
        let event = serde_json::from_value(json!({ "Records": records })).unwrap();
        (event, receipts)
    }

    /// Deletes the messages of a batch that were not reported failed.
    async fn settle(&self, receipts: &BTreeMap<String, String>, failed: &BTreeSet<String>) {
        let done: Vec<&String> = receipts
            .iter()
            .filter(|(id, _)| !failed.contains(*id))
            .map(|(_, receipt)| receipt)
            .collect();
        for chunk in done.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt.as_str())
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("the worker may delete its work");
            assert!(out.failed().is_empty(), "{:?}", out.failed());
        }
    }

    /// Messages sent to be delivered later (the cases' watchdogs).
    async fn delayed(&self) -> usize {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .expect("the worker may read its queue's attributes");
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessagesDelayed))
            .map_or(0, |v| v.parse::<usize>().unwrap())
    }

    /// Messages waiting or in flight.
    async fn depth(&self) -> usize {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("the worker may read its queue's attributes");
        out.attributes()
            .unwrap()
            .values()
            .map(|v| v.parse::<usize>().unwrap())
            .sum()
    }
}

/// The message ids of an SQS event, and what each one carries.
fn work_items(event: &SqsEvent) -> BTreeMap<String, WorkItem> {
    event
        .records
        .iter()
        .map(|r| {
            let item = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
            (r.message_id.clone().unwrap(), item)
        })
        .collect()
}

fn is_about_adele(item: &WorkItem) -> bool {
    matches!(item, WorkItem::Risk(signal)
        if matches!(&signal.subject, Subject::User { id: Some(id), .. } if id == ADELE))
}

/// Every item of the ledger table (read with the admin's credentials).
async fn table_items(
    admin: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<HashMap<String, AttributeValue>> {
    let mut items = Vec::new();
    let mut pages = admin
        .scan()
        .table_name(table)
        .into_paginator()
        .items()
        .send();
    while let Some(item) = pages.next().await {
        items.push(item.unwrap());
    }
    items
}

fn pk(item: &HashMap<String, AttributeValue>) -> &str {
    item["pk"].as_s().unwrap()
}

/// What the worker and the sweep are configured with in the template, pointed at moto and at
/// the Graph simulator.
fn function_config(table: &str, queue_url: &str, graph: &GraphSimulator) -> Config {
    Config {
        allowed_tenants: vec![TENANT.to_owned()],
        secrets_ttl: SECRETS_TTL,
        secrets_grace: Duration::ZERO,
        ledger_table: Some(table.to_owned()),
        queue_url: Some(queue_url.to_owned()),
        graph_base_url: graph.graph_url(),
        login_authority: graph.authority(),
        notification_url: Some(NOTIFICATION_URL.to_owned()),
        ..Config::default()
    }
}

/// The secrets stores a function builds at cold start, over its own credentials.
fn secret_stores(
    sm: &aws_sdk_secretsmanager::Client,
    graph_arn: &str,
    ingress_arn: &str,
) -> (
    Arc<dyn SecretStore<GraphSecrets>>,
    Arc<dyn SecretStore<IngressSecrets>>,
) {
    (
        Arc::new(SecretsManagerStore::<GraphSecrets>::with_grace(
            sm.clone(),
            graph_arn,
            SECRETS_TTL,
            Duration::ZERO,
        )),
        Arc::new(SecretsManagerStore::<IngressSecrets>::with_grace(
            sm.clone(),
            ingress_arn,
            SECRETS_TTL,
            Duration::ZERO,
        )),
    )
}

/// The worker as `src/bin/worker.rs` builds it (its clients over `aws`), with the policy in
/// enforce mode and temporary passwords delivered as Secrets Manager secrets under `prefix`.
async fn worker_for(aws: &SdkConfig, config: &Config, ids: &Names, prefix: &str) -> Worker {
    let sm = aws_sdk_secretsmanager::Client::new(aws);
    let (graph_store, ingress_store) = secret_stores(
        &sm,
        &ids.reference("GraphSecretArn"),
        &ids.reference("IngressSecretArn"),
    );
    let secrets = graph_store.load().await.unwrap();
    let ingress = ingress_store.load().await.unwrap();
    let store = Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(aws),
        ids.reference("LedgerTable"),
    ));
    let ledger = Ledger::new(store);
    let graph = app::shared_graph_client(
        config,
        &secrets,
        graph_store,
        reqwest::Client::new(),
        &ledger,
    )
    .unwrap();
    let subscriptions = app::subscriptions(config, &ingress, graph.clone(), Some(ledger.clone()));
    assert!(subscriptions.is_some());
    let mut policy = Policy::default_policy();
    policy.mode = Mode::Enforce;
    policy.password_delivery = Some(PasswordDelivery::SecretsManager {
        name_prefix: prefix.to_owned(),
        ttl_hours: 24,
    });
    let vault: Arc<dyn PasswordVault> = Arc::new(SecretsManagerPasswordVault::new(sm));
    let mut worker = Worker::new(
        ledger,
        graph,
        Arc::new(policy),
        Some(vault),
        subscriptions,
        config.allowed_tenants.clone(),
    );
    // As `app::worker` builds it: temporary passwords sealed until delivered (intent#), and
    // each leased case's watchdog sent to the work queue, delivered after the lease.
    worker.sealer = secrets.intent_sealer.clone();
    // (`app::watchdog_queue`, with this function's credentials)
    worker.watchdog = Some(Arc::new(SqsQueue::new(
        aws_sdk_sqs::Client::new(aws),
        config.queue_url.clone().expect("the worker's RR_QUEUE_URL"),
    )));
    worker
}

/// `n` users at risk (medium, updated a minute ago), each with a sign-in blocked by 53011.
fn risky_population(graph: &GraphSimulator, n: usize) -> Vec<String> {
    let now = time::OffsetDateTime::now_utc();
    let iso = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let ids: Vec<String> = (0..n)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    graph.with(|d| {
        for (i, id) in ids.iter().enumerate() {
            let upn = format!("user{i}@contoso.onmicrosoft.com");
            d.users.push(json!({"id": id, "userPrincipalName": upn, "accountEnabled": true}));
            d.risky_users.insert(id.clone(), json!({"id": id, "userPrincipalName": upn,
                "isDeleted": false, "isProcessing": false, "riskDetail": "none",
                "riskLevel": "medium", "riskState": "atRisk",
                "riskLastUpdatedDateTime": iso(now - time::Duration::minutes(1))}));
            d.sign_ins.push(json!({"id": format!("si-sweep-{i}"),
                "createdDateTime": iso(now - time::Duration::seconds(30)),
                "userId": id, "userPrincipalName": upn, "appDisplayName": "Office 365 Exchange Online",
                "ipAddress": "203.0.113.77", "clientAppUsed": "Browser",
                "status": {"errorCode": 53011, "failureReason": "User blocked due to risk on home tenant."}}));
        }
    });
    ids
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
    for logs_group in ["WebhookLogs", "WorkerLogs", "SweepLogs", "RenewerLogs"] {
        attributes.insert(
            format!("{logs_group}.Arn"),
            format!("arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{logs_group}:*"),
        );
    }
    // Secrets Manager delivery of temporary passwords (the policy below uses it): the stack is
    // deployed with PasswordDelivery=secrets-manager, whose statements this test checks.
    // moto's secrets use the default key (SecretsKmsKeyArn empty): no KMS statement, which
    // tests/template.rs checks for a customer managed key.
    let with_vault = |vault: bool| Names {
        refs: refs.clone(),
        attributes: attributes.clone(),
        conditions: HashMap::from([
            ("VaultInSecretsManager".to_owned(), vault),
            ("UseSecretsKmsKey".to_owned(), false),
        ]),
    };
    let ids = with_vault(true);
    let policies = template_policies(&ids);
    // With PasswordDelivery=mail (the embedded policy's channel), no function may create, list
    // or delete secrets.
    let mail_only = template_policies(&with_vault(false));
    for (function, documents) in &policies {
        let text = serde_json::to_string(documents).unwrap();
        assert!(
            !text.contains("kms:"),
            "{function} may use KMS without SecretsKmsKeyArn: {text}"
        );
    }
    for function in ["WorkerFunction", "RenewerFunction"] {
        let text = serde_json::to_string(&mail_only[function]).unwrap();
        for action in [
            "CreateSecret",
            "PutSecretValue",
            "TagResource",
            "ListSecrets",
            "DeleteSecret",
        ] {
            assert!(
                !text.contains(action),
                "{function} may {action} with PasswordDelivery=mail: {text}"
            );
        }
    }

    let users = json!({
        "rr-webhook": policies["WebhookFunction"],
        "rr-worker": policies["WorkerFunction"],
        "rr-sweep": policies["SweepFunction"],
        "rr-renewer": policies["RenewerFunction"],
        "rr-admin": {"all": {"Version": "2012-10-17", "Statement": [{"Sid": "All", "Effect": "Allow", "Action": "*", "Resource": "*"}]}},
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

    // The simulated tenant: Adele (the user of the saved events) at high risk, her manager, a
    // 53011 sign-in of the manager's; the subscription of the saved lifecycle event, expiring
    // within the renewer's three days.
    let graph = graph_standin::start().await;
    graph_standin::seed(&graph, "high", "atRisk", 0);
    graph.with(|d| {
        d.page_size = 100;
        let expires = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        d.subscriptions.push(json!({
            "id": SUBSCRIPTION_ID, "resource": "users", "changeType": "updated",
            "notificationUrl": NOTIFICATION_URL,
            "lifecycleNotificationUrl": NOTIFICATION_URL.replace("/notifications", "/lifecycle"),
            "expirationDateTime": expires.format(&time::format_description::well_known::Rfc3339).unwrap(),
            "clientState": "set-by-the-subscription-manager",
        }));
    });

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
    let admin_sm = aws_sdk_secretsmanager::Client::new(&admin);
    let admin_ledger = Ledger::new(Arc::new(DynamoStore::new(admin_ddb.clone(), get("table"))));
    let table = get("table");

    // ---- webhook: every saved Lambda HTTP event, then again past the secrets TTL ----
    let webhook = sdk(&key("rr-webhook")).await;
    let webhook_ddb = aws_sdk_dynamodb::Client::new(&webhook);
    let webhook_store = Arc::new(DynamoStore::new(webhook_ddb.clone(), table.clone()));
    let webhook_state = |queue_url: String| {
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
            ledger: Ledger::new(webhook_store.clone()),
            queue: Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&webhook), queue_url)),
            replay_guard: webhook_store.clone(),
        };
        AppState::new(config, store, intake, reqwest::Client::new())
    };
    // The subscriptions of the saved Graph events, as the renewer records them when it creates
    // or lists them: the webhook keeps a notification only for a subscription recorded in the
    // tenant it names.
    admin_ledger
        .record_subscriptions(TENANT, common::FIXTURE_SUBSCRIPTIONS)
        .await
        .unwrap();
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
        .key("pk", s("webhook#swh:msg_iam_2"))
        .send()
        .await
        .unwrap();
    assert!(guard.item.is_none(), "the unkept delivery is forgotten");
    let (status, _, text) = call(state.clone(), post_sentinel(&body, &headers)).await;
    assert_eq!(status, 202, "retry after 503: {text}");

    // What the webhook kept: signal# items (pk, doc: the SignalRecord as JSON, version,
    // updated_at, expires_at), not yet worked; the replay guard's webhook# items.
    let items = table_items(&admin_ddb, &table).await;
    let mut kept = Vec::new();
    for item in &items {
        let attributes: BTreeSet<&str> = item.keys().map(String::as_str).collect();
        if pk(item).starts_with("signal#") {
            assert_eq!(
                attributes,
                BTreeSet::from(["pk", "doc", "version", "updated_at", "expires_at"]),
                "{item:?}"
            );
            assert_eq!(item["version"].as_n().unwrap(), "1");
            let record: SignalRecord = serde_json::from_str(item["doc"].as_s().unwrap()).unwrap();
            assert_eq!(pk(item), format!("signal#{}", record.signal.event_id));
            assert_eq!(record.signal.tenant_id, TENANT);
            assert!(record.case_id.is_none() && record.disposition.is_none());
            kept.push(record);
        } else if !pk(item).starts_with("subscription#") {
            assert!(pk(item).starts_with("webhook#"), "{item:?}");
            assert_eq!(attributes, BTreeSet::from(["pk", "expires_at"]));
        }
    }
    assert!(kept.len() >= 3, "{kept:?}");
    assert!(kept.iter().any(|r| matches!(&r.signal.subject,
        Subject::User { id: Some(id), .. } if id == ADELE)));

    // Every element of the webhook's policy was needed.
    assert_eq!(
        unused("rr-webhook", &policies["WebhookFunction"]).await,
        Vec::<Json>::new()
    );

    // Denied: deleting anything but webhook# items, reading or batch-writing the ledger,
    // writing case state (directly or in a transaction), the Graph credential.
    let delete = |pk: &str| {
        webhook_ddb
            .delete_item()
            .table_name(&table)
            .key("pk", s(pk))
            .send()
    };
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
    assert!(is_denied(
        webhook_store
            .create_all(&[NewItem {
                key: "case#forged".into(),
                doc: "{}".into(),
                expires_at: None,
            }])
            .await
    ));
    assert!(is_denied(
        webhook_ddb
            .get_item()
            .table_name(&table)
            .key("pk", s(&format!("signal#{}", kept[0].signal.event_id)))
            .send()
            .await
    ));
    assert!(is_denied(
        webhook_ddb
            .batch_write_item()
            .request_items(
                &table,
                vec![
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .item("pk", s("signal#batched"))
                                .build()
                                .unwrap()
                        )
                        .build()
                ],
            )
            .send()
            .await
    ));
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

    // ---- worker: Worker::handle_sqs on what the webhook enqueued ----
    let worker = sdk(&key("rr-worker")).await;
    let worker_sm = aws_sdk_secretsmanager::Client::new(&worker);
    let (graph_store, ingress_store) =
        secret_stores(&worker_sm, &get("graph_arn"), &get("ingress_arn"));
    for _ in 0..2 {
        assert!(graph_store.load().await.unwrap().credential().is_some());
        assert!(!ingress_store.load().await.unwrap().client_states.is_empty());
        tokio::time::sleep(PAST_TTL).await;
    }
    let config = function_config(&table, &get("queue_url"), &graph);
    let source = SqsEventSource::new(aws_sdk_sqs::Client::new(&worker), get("queue_url")).await;

    // First delivery, while Graph refuses user updates (503): setting the temporary password
    // fails, so nothing is stored, and the case is kept for retry with its messages.
    graph.with(|d| {
        d.faults
            .unavailable_paths
            .push((http::Method::PATCH, "/users/".into()))
    });
    let first_worker = worker_for(&worker, &config, &ids, &prefix).await;
    let (event, receipts) = source.receive(3).await;
    let items = work_items(&event);
    let about_adele: BTreeSet<String> = items
        .iter()
        .filter(|(_, item)| is_about_adele(item))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(about_adele.len() >= 3, "{items:?}");
    assert!(
        items.values().any(|i| matches!(i, WorkItem::Lifecycle(_))),
        "{items:?}"
    );
    let response = first_worker.handle_sqs(event).await;
    let failed: BTreeSet<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(
        failed,
        about_adele,
        "Adele's signals are kept for retry, the rest is done; denials {:?}",
        denials().await
    );
    source.settle(&receipts, &failed).await;
    // Each case the worker leased sent its watchdog with the worker's own grant: delivered
    // once the lease ran out, it resumes a case whose worker died.
    assert!(
        source.delayed().await >= 1,
        "the case's watchdog is in the queue, delayed"
    );
    let (adele, _) = admin_ledger.user(TENANT, ADELE).await.unwrap();
    let case_id = adele.current_case.expect("a case for Adele");
    let (case, _) = admin_ledger.case(&case_id).await.unwrap().unwrap();
    assert_eq!(case.status, CaseStatus::Retry, "{case:?}");
    let state_of = |case: &risk_responder::cases::Case, action: Action| {
        case.actions
            .iter()
            .find(|a| a.action == action)
            .map(|a| a.state.word())
    };
    assert_eq!(state_of(&case, Action::RevokeSessions), Some("done"));
    assert_eq!(state_of(&case, Action::ResetPassword), Some("failed"));
    let secret_name = format!("{prefix}{TENANT}/{ADELE}/{case_id}");
    let versions = |name: String| {
        let admin_sm = admin_sm.clone();
        async move {
            admin_sm
                .list_secret_version_ids()
                .secret_id(name)
                .send()
                .await
                .unwrap()
                .versions()
                .len()
        }
    };
    assert!(
        admin_sm
            .describe_secret()
            .secret_id(&secret_name)
            .send()
            .await
            .is_err(),
        "nothing stored before it was set"
    );
    assert_eq!(graph_standin::resets(&graph), 0);
    assert!(graph.with(|d| d.reauthorized.contains(&SUBSCRIPTION_ID.to_owned())));

    // Graph is back; SQS delivers the kept messages again after their visibility timeout, to
    // another worker (a new Lambda container): the password is set, then stored (CreateSecret),
    // and the case completes.
    graph.with(|d| d.faults.unavailable_paths.clear());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let second_worker = worker_for(&worker, &config, &ids, &prefix).await;
    let (event, receipts) = source.receive(30).await;
    assert_eq!(
        work_items(&event).into_keys().collect::<BTreeSet<_>>(),
        failed
    );
    let response = second_worker.handle_sqs(event).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}; denials {:?}",
        response.batch_item_failures,
        denials().await
    );
    source.settle(&receipts, &BTreeSet::new()).await;
    assert_eq!(source.depth().await, 0, "every message deleted");
    let (case, _) = admin_ledger.case(&case_id).await.unwrap().unwrap();
    assert_eq!(case.status, CaseStatus::Completed, "{case:?}");
    assert_eq!(state_of(&case, Action::ResetPassword), Some("done"));
    assert_eq!(graph_standin::resets(&graph), 1);
    assert_eq!(
        versions(secret_name.clone()).await,
        1,
        "stored once, after it was set"
    );
    let described = admin_sm
        .describe_secret()
        .secret_id(&secret_name)
        .send()
        .await
        .unwrap();
    assert!(
        described
            .tags()
            .iter()
            .any(|t| t.key() == Some(EXPIRES_AT_TAG)),
        "{described:?}"
    );
    let password = admin_sm
        .get_secret_value()
        .secret_id(&secret_name)
        .send()
        .await
        .unwrap()
        .secret_string()
        .unwrap()
        .to_owned();
    let set = graph.with(|d| {
        d.users.iter().find(|u| u["id"] == ADELE).unwrap()["passwordProfile"]["password"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    assert_eq!(
        set, password,
        "the helpdesk reads the password Entra ID holds"
    );
    for record in admin_ledger.signals(1000).await.unwrap() {
        if is_about_adele(&WorkItem::Risk(record.signal.clone())) {
            assert_eq!(
                record.case_id.as_deref(),
                Some(case_id.as_str()),
                "{record:?}"
            );
            assert!(record.disposition.is_some(), "{record:?}");
        }
    }

    // The race a worker loses when another worker opens the user's case first
    // (`Worker::merge`): its own new case is saved, the user's record refuses it, and the
    // worker discards the case. A race cannot be provoked reliably; its ledger calls can.
    let worker_ledger = &second_worker.ledger;
    assert_eq!(
        worker_ledger
            .store()
            .put("case#lost-race", "{}", 0, None)
            .await
            .unwrap(),
        Some(1)
    );
    assert!(worker_ledger.discard_case("lost-race", 1).await.unwrap());

    // A retry of a reset whose earlier store succeeded but whose outcome was lost (a worker
    // that stopped before recording it) stores the case's new password under the same name:
    // CreateSecret finds it, PutSecretValue, TagResource. Not provoked reliably; its calls are.
    let again = SecretsManagerPasswordVault::new(worker_sm.clone());
    again
        .store(&secret_name, &SecretString::new("Tmp-Pass-5678!efgh"), 24)
        .await
        .unwrap();
    assert_eq!(
        versions(secret_name.clone()).await,
        2,
        "the retry replaced the value"
    );

    // Graph removed a subscription (subscriptionRemoved): the worker lists the tenant's
    // subscriptions (recording each with its tenant) and recreates what is missing.
    let removed = WorkItem::Lifecycle(risk_responder::ingress::graph::LifecycleNotice {
        tenant_id: TENANT.into(),
        subscription_id: SUBSCRIPTION_ID.into(),
        kind: risk_responder::ingress::graph::LifecycleKind::SubscriptionRemoved,
    });
    assert!(
        !first_worker.handle(&removed).await.is_retry(),
        "denials {:?}",
        denials().await
    );

    // A temporary-password secret already past its expiry, for the renewer to delete.
    let vault = SecretsManagerPasswordVault::new(worker_sm.clone());
    let stale = SecretString::new("Tmp-Pass-1234!abcd");
    vault
        .store(&format!("{prefix}iam-test/expired"), &stale, 0)
        .await
        .unwrap();

    assert_eq!(
        unused("rr-worker", &policies["WorkerFunction"]).await,
        Vec::<Json>::new(),
        "denials {:?}",
        denials().await
    );

    // Denied: deleting signals (directly or in a batch), reading the replay guard, updates
    // and scans, temporary passwords outside the prefix, reading a temporary password back.
    let worker_ddb = aws_sdk_dynamodb::Client::new(&worker);
    assert!(is_denied(
        worker_ddb
            .delete_item()
            .table_name(&table)
            .key("pk", s(&format!("signal#{}", kept[0].signal.event_id)))
            .send()
            .await
    ));
    assert!(is_denied(
        worker_ddb
            .batch_write_item()
            .request_items(
                &table,
                vec![
                    WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .key("pk", s(&format!("signal#{}", kept[0].signal.event_id)))
                                .build()
                                .unwrap()
                        )
                        .build()
                ],
            )
            .send()
            .await
    ));
    assert!(is_denied(
        worker_ddb
            .get_item()
            .table_name(&table)
            .key("pk", s("webhook#swh:msg_iam_1"))
            .send()
            .await
    ));
    assert!(is_denied(
        worker_ddb
            .update_item()
            .table_name(&table)
            .key("pk", s(&format!("case#{case_id}")))
            .update_expression("SET version = :v")
            .expression_attribute_values(":v", AttributeValue::N("99".into()))
            .send()
            .await
    ));
    assert!(is_denied(worker_ledger.signals(10).await));
    let outside = vault.store("elsewhere/iam-test", &stale, 24).await;
    assert!(outside.unwrap_err().contains("AccessDenied"));
    assert!(is_denied(
        worker_sm
            .get_secret_value()
            .secret_id(&secret_name)
            .send()
            .await
    ));

    // ---- sweep: risky users and 53011 sign-ins become signals, as the scheduled Lambda ----
    let swept_users = risky_population(&graph, 3);
    let sweep = sdk(&key("rr-sweep")).await;
    let sweep_config = function_config(&table, &get("queue_url"), &graph);
    let sweep_store = Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sweep),
        table.clone(),
    ));
    let intake = Intake {
        ledger: Ledger::new(sweep_store.clone()),
        queue: Arc::new(SqsQueue::new(
            aws_sdk_sqs::Client::new(&sweep),
            get("queue_url"),
        )),
        replay_guard: sweep_store.clone(),
    };
    let sweep_sm = aws_sdk_secretsmanager::Client::new(&sweep);
    let (sweep_graph_store, _) = secret_stores(&sweep_sm, &get("graph_arn"), &get("ingress_arn"));
    let secrets = sweep_graph_store.load().await.unwrap();
    let sweep_graph = app::shared_graph_client(
        &sweep_config,
        &secrets,
        sweep_graph_store,
        reqwest::Client::new(),
        &intake.ledger,
    )
    .unwrap();
    let sweeper = Sweeper {
        graph: &sweep_graph,
        ledger: &intake.ledger,
        intake: &intake,
        first_lookback: time::Duration::hours(i64::from(Policy::default_policy().lookback_hours)),
    };
    let (before, version) = sweeper.state(TENANT).await.unwrap();
    assert!(before.risk_watermark.is_none() && before.sign_in_watermark.is_none());
    assert_eq!(version, 0);
    let first = sweeper.run(TENANT, None).await.unwrap();
    for user in &swept_users {
        for kind in [RiskLevel::Medium, RiskLevel::Unknown] {
            assert!(
                first.signals.iter().any(|s| s.risk_level == kind
                    && matches!(&s.subject, Subject::User { id: Some(id), .. } if id == user)),
                "a risk signal and a sign-in signal for {user}: {:?}",
                first.signals
            );
        }
    }
    assert!(first.blocked_sign_ins >= swept_users.len());
    for signal in &first.signals {
        let record = admin_ledger.signal(&signal.event_id).await.unwrap();
        assert!(record.is_some(), "signal {} kept", signal.event_id);
    }
    let admin_sqs = aws_sdk_sqs::Client::new(&admin);
    let mut queued = BTreeSet::new();
    loop {
        let received = admin_sqs
            .receive_message()
            .queue_url(get("queue_url"))
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .send()
            .await
            .unwrap();
        if received.messages().is_empty() {
            break;
        }
        for m in received.messages() {
            if let Ok(WorkItem::Risk(signal)) = serde_json::from_str(m.body().unwrap()) {
                queued.insert(signal.event_id);
            }
        }
    }
    for signal in &first.signals {
        assert!(
            queued.contains(&signal.event_id),
            "signal {} enqueued",
            signal.event_id
        );
    }
    let (after, moved) = sweeper.state(TENANT).await.unwrap();
    assert!(moved > version);
    let sign_in_watermark = after.sign_in_watermark.expect("the watermark moved");
    assert!(after.risk_watermark.is_some());
    tokio::time::sleep(PAST_TTL).await;
    let second = sweeper.run(TENANT, None).await.unwrap();
    assert_eq!(
        second.sign_ins_since,
        sign_in_watermark - risk_responder::respond::sweep::SIGN_IN_OVERLAP,
        "the next sweep starts from the watermark"
    );
    assert!(second.sign_ins_since > first.sign_ins_since);
    assert!(sweeper.state(TENANT).await.unwrap().1 > moved);

    assert_eq!(
        unused("rr-sweep", &policies["SweepFunction"]).await,
        Vec::<Json>::new()
    );

    // Denied: the ingress secret, case state, deletes, reading signals back, updates.
    assert!(is_denied(
        sweep_sm
            .get_secret_value()
            .secret_id(get("ingress_arn"))
            .send()
            .await
    ));
    let sweep_ddb = aws_sdk_dynamodb::Client::new(&sweep);
    for key in [format!("case#{case_id}"), format!("user#{TENANT}#{ADELE}")] {
        assert!(is_denied(
            sweep_ddb
                .put_item()
                .table_name(&table)
                .item("pk", s(&key))
                .send()
                .await
        ));
    }
    for key in [
        format!("signal#{}", first.signals[0].event_id),
        format!("tenant#{TENANT}#sweep"),
    ] {
        assert!(is_denied(
            sweep_ddb
                .delete_item()
                .table_name(&table)
                .key("pk", s(&key))
                .send()
                .await
        ));
    }
    assert!(is_denied(
        sweep_ddb
            .batch_write_item()
            .request_items(
                &table,
                vec![
                    WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .key("pk", s(&format!("signal#{}", first.signals[0].event_id)))
                                .build()
                                .unwrap()
                        )
                        .build()
                ],
            )
            .send()
            .await
    ));
    assert!(is_denied(
        sweep_ddb
            .get_item()
            .table_name(&table)
            .key("pk", s(&format!("signal#{}", first.signals[0].event_id)))
            .send()
            .await
    ));
    assert!(is_denied(
        sweep_ddb
            .update_item()
            .table_name(&table)
            .key("pk", s(&format!("tenant#{TENANT}#sweep")))
            .update_expression("SET version = :v")
            .expression_attribute_values(":v", AttributeValue::N("99".into()))
            .send()
            .await
    ));

    // ---- renewer: secrets past the TTL, subscriptions, the temporary-password clean-up ----
    let renewer = sdk(&key("rr-renewer")).await;
    let renewer_sm = aws_sdk_secretsmanager::Client::new(&renewer);
    let (graph_store, ingress_store) =
        secret_stores(&renewer_sm, &get("graph_arn"), &get("ingress_arn"));
    for _ in 0..2 {
        graph_store.load().await.unwrap();
        ingress_store.load().await.unwrap();
        tokio::time::sleep(PAST_TTL).await;
    }
    let secrets = graph_store.load().await.unwrap();
    let ingress = ingress_store.load().await.unwrap();
    let renewer_graph =
        app::graph_client(&config, &secrets, graph_store, reqwest::Client::new()).unwrap();
    let renewer_ledger = Ledger::new(Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&renewer),
        get("table"),
    )));
    let manager =
        app::subscriptions(&config, &ingress, renewer_graph, Some(renewer_ledger)).unwrap();
    assert!(
        manager.ensure(TENANT).await.unwrap().is_empty(),
        "the subscription exists"
    );
    assert_eq!(
        manager
            .renew(TENANT, Duration::from_secs(3 * 24 * 3600))
            .await
            .unwrap(),
        1
    );
    let cleaner = SecretsManagerPasswordVault::new(renewer_sm.clone());
    assert_eq!(cleaner.sweep_expired(&prefix).await.unwrap(), 1);
    let listed = admin_sm.list_secrets().send().await.unwrap();
    let names: Vec<&str> = listed
        .secret_list()
        .iter()
        .filter_map(|s| s.name())
        .collect();
    assert!(names.contains(&secret_name.as_str()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.ends_with("iam-test/expired")),
        "{names:?}"
    );

    assert_eq!(
        unused("rr-renewer", &policies["RenewerFunction"]).await,
        Vec::<Json>::new()
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
            .key("pk", s(&format!("case#{case_id}")))
            .send()
            .await
    ));

    // Every denial was one provoked above: nothing the code calls was refused. (user, action,
    // resource or "" for any, prefix of every leading key or "" for any)
    let denials = denials().await;
    let case_secret_arn = described.arn().unwrap().to_owned();
    let outside_arn =
        format!("arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:elsewhere/iam-test-AbCdEf");
    let table_arn = get("table_arn");
    let provoked: Vec<(&str, &str, String, &str)> = vec![
        ("rr-webhook", "sqs:SendMessage", get("dlq_arn"), ""),
        (
            "rr-webhook",
            "dynamodb:DeleteItem",
            table_arn.clone(),
            "signal#",
        ),
        ("rr-webhook", "dynamodb:PutItem", table_arn.clone(), "case#"),
        (
            "rr-webhook",
            "dynamodb:GetItem",
            table_arn.clone(),
            "signal#",
        ),
        (
            "rr-webhook",
            "dynamodb:BatchWriteItem",
            table_arn.clone(),
            "signal#",
        ),
        (
            "rr-webhook",
            "secretsmanager:GetSecretValue",
            get("graph_arn"),
            "",
        ),
        (
            "rr-webhook",
            "secretsmanager:DescribeSecret",
            get("ingress_arn"),
            "",
        ),
        (
            "rr-worker",
            "dynamodb:DeleteItem",
            table_arn.clone(),
            "signal#",
        ),
        (
            "rr-worker",
            "dynamodb:BatchWriteItem",
            table_arn.clone(),
            "signal#",
        ),
        (
            "rr-worker",
            "dynamodb:GetItem",
            table_arn.clone(),
            "webhook#",
        ),
        (
            "rr-worker",
            "dynamodb:UpdateItem",
            table_arn.clone(),
            "case#",
        ),
        ("rr-worker", "dynamodb:Scan", table_arn.clone(), ""),
        ("rr-worker", "secretsmanager:CreateSecret", outside_arn, ""),
        (
            "rr-worker",
            "secretsmanager:GetSecretValue",
            case_secret_arn,
            "",
        ),
        (
            "rr-sweep",
            "secretsmanager:GetSecretValue",
            get("ingress_arn"),
            "",
        ),
        ("rr-sweep", "dynamodb:PutItem", table_arn.clone(), "case#"),
        ("rr-sweep", "dynamodb:PutItem", table_arn.clone(), "user#"),
        (
            "rr-sweep",
            "dynamodb:DeleteItem",
            table_arn.clone(),
            "signal#",
        ),
        (
            "rr-sweep",
            "dynamodb:DeleteItem",
            table_arn.clone(),
            "tenant#",
        ),
        (
            "rr-sweep",
            "dynamodb:BatchWriteItem",
            table_arn.clone(),
            "signal#",
        ),
        ("rr-sweep", "dynamodb:GetItem", table_arn.clone(), "signal#"),
        (
            "rr-sweep",
            "dynamodb:UpdateItem",
            table_arn.clone(),
            "tenant#",
        ),
        (
            "rr-renewer",
            "secretsmanager:DeleteSecret",
            get("graph_arn"),
            "",
        ),
        ("rr-renewer", "dynamodb:GetItem", table_arn.clone(), "case#"),
    ];
    let matches = |(user, action, resource, keys): &(String, String, String, Vec<String>),
                   (u, a, r, prefix): &(&str, &str, String, &str)| {
        user.ends_with(&format!("user/{u}"))
            && action == a
            && (r.is_empty() || resource == r)
            && keys.iter().all(|k| k.starts_with(prefix))
    };
    for denial in &denials {
        assert!(
            provoked.iter().any(|p| matches(denial, p)),
            "unexpected denial: {denial:?}; all: {denials:?}"
        );
    }
    for p in &provoked {
        assert!(
            denials.iter().any(|d| matches(d, p)),
            "not denied: {p:?}; all: {denials:?}"
        );
    }

    // No password and no Graph credential in a log line or in the ledger.
    let text = logs.text();
    let ledger_text = format!("{:?}", table_items(&admin_ddb, &table).await);
    for secret in [
        password.as_str(),
        stale.expose(),
        graph_standin::CLIENT_SECRET,
    ] {
        assert!(!text.contains(secret), "a secret in the logs");
        assert!(!ledger_text.contains(secret), "a secret in the ledger");
    }
}
