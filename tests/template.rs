//! `infra/template.yaml` says what the README promises of a deployment: the alarms and where
//! they go, the worker's and the webhook's concurrency, the notification URL derived inside the
//! stack, parameters that refuse values the policies could never match, schedules that do not
//! collide between stacks, a sweep that is not retried, and temporary-password permissions only
//! for the deployments whose policy needs them (and whose prefix the functions check).

use std::collections::BTreeSet;
use std::sync::Arc;

use risk_responder::app;
use risk_responder::config::Config;
use risk_responder::graph::credential::GraphSecrets;
use risk_responder::support::secret::SecretDocument;
use risk_responder::vault::StaticSecretStore;
use serde_norway::Value as Yaml;

fn template() -> Yaml {
    let path = format!("{}/infra/template.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `(function, argument)` of an intrinsic function written with its short tag (`!Ref X`).
fn tagged(value: &Yaml) -> Option<(String, &Yaml)> {
    match value {
        Yaml::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            &t.value,
        )),
        _ => None,
    }
}

/// The name `!Ref` points to.
fn reference(value: &Yaml) -> Option<&str> {
    match tagged(value)? {
        (f, name) if f == "Ref" => name.as_str(),
        _ => None,
    }
}

/// `(condition, then, else)` of an `!If`.
fn if_branches(value: &Yaml) -> Option<(&str, &Yaml, &Yaml)> {
    match tagged(value)? {
        (f, Yaml::Sequence(parts)) if f == "If" && parts.len() == 3 => {
            Some((parts[0].as_str()?, &parts[1], &parts[2]))
        }
        _ => None,
    }
}

fn resources(template: &Yaml) -> Vec<(&str, &Yaml)> {
    template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(name, resource)| (name.as_str().unwrap(), resource))
        .collect()
}

fn alarms(template: &Yaml) -> Vec<(&str, &Yaml)> {
    resources(template)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .collect()
}

/// The alarms on `namespace`/`metric`.
fn alarms_on<'a>(template: &'a Yaml, namespace: &str, metric: &str) -> Vec<(&'a str, &'a Yaml)> {
    alarms(template)
        .into_iter()
        .filter(|(_, a)| {
            a["Properties"]["Namespace"].as_str() == Some(namespace)
                && a["Properties"]["MetricName"].as_str() == Some(metric)
        })
        .collect()
}

/// The value of the alarm's dimension `name`.
fn dimension<'a>(alarm: &'a Yaml, name: &str) -> &'a Yaml {
    alarm["Properties"]["Dimensions"]
        .as_sequence()
        .unwrap_or_else(|| panic!("no dimensions: {alarm:?}"))
        .iter()
        .find(|d| d["Name"].as_str() == Some(name))
        .map(|d| &d["Value"])
        .unwrap_or_else(|| panic!("no dimension {name}: {alarm:?}"))
}

fn get_att(value: &Yaml) -> Option<String> {
    match tagged(value)? {
        (f, Yaml::String(s)) if f == "GetAtt" => Some(s.clone()),
        (f, Yaml::Sequence(p)) if f == "GetAtt" => {
            Some(format!("{}.{}", p[0].as_str()?, p[1].as_str()?))
        }
        _ => None,
    }
}

#[test]
fn webhook_5xx_is_alarmed_from_the_function_url_metric() {
    let template = template();
    let found = alarms_on(&template, "AWS/Lambda", "Url5xxCount");
    assert_eq!(found.len(), 1, "one Url5xxCount alarm");
    let (_, alarm) = found[0];
    assert_eq!(
        reference(dimension(alarm, "FunctionName")),
        Some("WebhookFunction")
    );
    assert_eq!(alarm["Properties"]["Threshold"].as_i64(), Some(0));
}

#[test]
fn the_work_queue_the_dlq_and_the_worker_are_alarmed() {
    let template = template();
    let age = alarms_on(&template, "AWS/SQS", "ApproximateAgeOfOldestMessage");
    assert_eq!(age.len(), 1);
    assert_eq!(
        get_att(dimension(age[0].1, "QueueName")).as_deref(),
        Some("WorkQueue.QueueName")
    );
    let depth = alarms_on(&template, "AWS/SQS", "ApproximateNumberOfMessagesVisible");
    assert!(
        depth
            .iter()
            .any(|(_, a)| get_att(dimension(a, "QueueName")).as_deref()
                == Some("DeadLetterQueue.QueueName")),
        "a DLQ depth alarm"
    );
    let errors = alarms_on(&template, "AWS/Lambda", "Errors");
    assert!(
        errors
            .iter()
            .any(|(_, a)| reference(dimension(a, "FunctionName")) == Some("WorkerFunction")),
        "a worker errors alarm"
    );
}

/// SQS leaves a standard queue's messages received three times or more out of
/// `ApproximateAgeOfOldestMessage`, and a partial batch failure is no Lambda error: items that
/// keep failing are alarmed from the worker's own log line, whose text must be the one
/// `src/respond/worker.rs` writes.
#[test]
fn items_left_for_retry_are_counted_from_the_workers_log_and_alarmed() {
    let template = template();
    let worker_source = std::fs::read_to_string(format!(
        "{}/src/respond/worker.rs",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    for line in [
        "message left for retry",
        "unreadable message left for the DLQ",
    ] {
        assert!(
            worker_source.contains(&format!("\"{line}\"")),
            "the worker no longer logs {line:?}"
        );
    }
    let filters: Vec<&Yaml> = resources(&template)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Logs::MetricFilter"))
        .map(|(_, r)| &r["Properties"])
        .filter(|p| {
            p["FilterPattern"]
                .as_str()
                .is_some_and(|f| f.contains(r#"$.fields.message = "message left for retry""#))
        })
        .collect();
    assert_eq!(filters.len(), 1, "a metric filter on the retry log line");
    let filter = filters[0];
    assert_eq!(reference(&filter["LogGroupName"]), Some("WorkerLogs"));
    let pattern = filter["FilterPattern"].as_str().unwrap();
    assert!(
        pattern.contains(r#"$.fields.message = "unreadable message left for the DLQ""#),
        "{pattern}"
    );
    let metric = &filter["MetricTransformations"][0];
    let (namespace, name) = (
        metric["MetricNamespace"].as_str().unwrap(),
        metric["MetricName"].as_str().unwrap(),
    );
    let alarmed = alarms_on(&template, namespace, name);
    assert_eq!(alarmed.len(), 1, "an alarm on {namespace}/{name}");
    let description = alarmed[0].1["Properties"]["AlarmDescription"]
        .as_str()
        .unwrap();
    assert!(
        description.contains("queue-age alarm cannot see"),
        "{description}"
    );
    // The queue-age alarm no longer claims to see items that keep failing.
    let age = alarms_on(&template, "AWS/SQS", "ApproximateAgeOfOldestMessage")[0].1
        ["Properties"]["AlarmDescription"]
        .as_str()
        .unwrap();
    assert!(!age.contains("or keeps failing on it"), "{age}");
    assert!(age.contains("three times"), "{age}");
}

#[test]
fn every_alarm_notifies_someone() {
    let template = template();
    let all = alarms(&template);
    assert!(all.len() >= 8, "{} alarms", all.len());
    for (name, alarm) in all {
        let actions = alarm["Properties"]["AlarmActions"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has no AlarmActions"));
        assert!(!actions.is_empty(), "{name}: empty AlarmActions");
        for action in actions {
            let (condition, then, otherwise) =
                if_branches(action).unwrap_or_else(|| panic!("{name}: {action:?}"));
            assert_eq!(condition, "CreateAlarmTopic", "{name}");
            assert_eq!(reference(then), Some("AlarmTopic"), "{name}");
            assert_eq!(reference(otherwise), Some("AlarmTopicArn"), "{name}");
        }
    }
    // The stack refuses to deploy with neither a topic nor an address.
    let rule = &template["Rules"]["AlarmsNotifySomeone"]["Assertions"][0]["Assert"];
    let (f, _) = tagged(rule).unwrap();
    assert_eq!(f, "Or");
}

/// `AlarmEmail` is empty (a topic of one's own in `AlarmTopicArn`) or one address that SNS can
/// subscribe: a typo such as a missing `@`, or two addresses in one, is refused at deploy
/// rather than leaving the alarms with nobody to reach.
#[test]
fn the_alarm_email_is_an_address_or_empty() {
    let template = template();
    let parameter = &template["Parameters"]["AlarmEmail"];
    assert_eq!(parameter["Default"].as_str(), Some(""));
    let pattern = parameter["AllowedPattern"].as_str().unwrap();
    // CloudFormation matches the whole value.
    let pattern = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    for good in [
        "",
        "soc@example.com",
        "soc-alerts+risk@corp.example.co.uk",
        "First.Last@sub.example.org",
    ] {
        assert!(pattern.is_match(good), "refuses {good:?}");
    }
    for bad in [
        "soc",
        "soc@",
        "@example.com",
        "soc@example",
        "soc@example.",
        "soc @example.com",
        "soc@example.com,ops@example.com",
        "soc@example.com; ops@example.com",
        "soc@@example.com",
        " ",
    ] {
        assert!(!pattern.is_match(bad), "accepts {bad:?}");
    }
    assert!(
        parameter["ConstraintDescription"]
            .as_str()
            .is_some_and(|d| d.contains("email address")),
        "{parameter:?}"
    );
    // The parameter's description says the subscription must be confirmed.
    assert!(
        parameter["Description"]
            .as_str()
            .is_some_and(|d| d.contains("confirmation")),
        "{parameter:?}"
    );
}

fn function<'a>(template: &'a Yaml, name: &str) -> &'a Yaml {
    &template["Resources"][name]["Properties"]
}

#[test]
fn the_worker_has_a_maximum_concurrency_and_the_webhook_a_reserved_one() {
    let template = template();
    let worker = function(&template, "WorkerFunction");
    let sqs = worker["Events"]
        .as_mapping()
        .unwrap()
        .values()
        .find(|e| e["Type"].as_str() == Some("SQS"))
        .expect("the worker's SQS event");
    assert_eq!(
        reference(&sqs["Properties"]["ScalingConfig"]["MaximumConcurrency"]),
        Some("WorkerMaxConcurrency")
    );
    // Not "divides each tenant's Graph budget by it": the budget is shared through the ledger.
    let description = template["Parameters"]["WorkerMaxConcurrency"]["Description"]
        .as_str()
        .unwrap();
    assert!(!description.contains("divides"), "{description}");
    assert!(description.contains("shared"), "{description}");

    let webhook = function(&template, "WebhookFunction");
    let (condition, then, otherwise) =
        if_branches(&webhook["ReservedConcurrentExecutions"]).expect("reserved concurrency");
    assert_eq!(reference(then), Some("WebhookReservedConcurrency"));
    assert_eq!(reference(otherwise), Some("AWS::NoValue"));
    assert_eq!(condition, "ReserveWebhookConcurrency");
    let default = &template["Parameters"]["WebhookReservedConcurrency"]["Default"];
    assert_eq!(default.as_i64(), Some(10), "reserved by default");
    // The account-quota prerequisite is stated where the operator sets it.
    let description = template["Parameters"]["WebhookReservedConcurrency"]["Description"]
        .as_str()
        .unwrap();
    assert!(description.contains("111"), "{description}");
}

/// The subscriptions' notificationUrl is the webhook's own Function URL, derived in the stack,
/// so a first deploy works without a second one.
#[test]
fn the_notification_url_is_derived_from_the_webhook_function_url() {
    let template = template();
    assert_eq!(
        template["Parameters"]["NotificationUrl"]["Default"].as_str(),
        Some("")
    );
    let condition = tagged(&template["Conditions"]["DeriveNotificationUrl"]).unwrap();
    assert_eq!(condition.0, "Equals");
    assert_eq!(reference(&condition.1[0]), Some("NotificationUrl"));
    for name in ["WorkerFunction", "RenewerFunction"] {
        let variable =
            &function(&template, name)["Environment"]["Variables"]["RR_NOTIFICATION_URL"];
        let (condition, then, otherwise) =
            if_branches(variable).unwrap_or_else(|| panic!("{name}: {variable:?}"));
        assert_eq!(condition, "DeriveNotificationUrl");
        let (f, text) = tagged(then).unwrap();
        assert_eq!(f, "Sub");
        assert_eq!(
            text.as_str(),
            Some("${WebhookFunctionUrl.FunctionUrl}graph/notifications"),
            "{name}"
        );
        assert_eq!(reference(otherwise), Some("NotificationUrl"));
    }
}

/// Graph subscriptions exist once the renewer has run; its daily schedule may first fire a day
/// after the deploy, so its function name is an output for the one invocation the README asks
/// for after the first deploy.
#[test]
fn the_renewer_function_name_is_an_output_for_the_first_run() {
    let template = template();
    let output = &template["Outputs"]["RenewerFunctionName"];
    assert_eq!(reference(&output["Value"]), Some("RenewerFunction"));
    assert_eq!(
        template["Resources"]["RenewerFunction"]["Type"].as_str(),
        Some("AWS::Serverless::Function")
    );
    let readme =
        std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(
        readme.contains("aws lambda invoke --function-name <RenewerFunctionName> /dev/stdout"),
        "the README's post-deploy step"
    );
}

/// The secret parameters take only full ARNs: the policies name them exactly, and an ARN
/// without the "-" and six random characters Secrets Manager appends matches no secret.
#[test]
fn secret_arn_parameters_refuse_partial_arns() {
    let template = template();
    for parameter in ["IngressSecretArn", "GraphSecretArn"] {
        let pattern = template["Parameters"][parameter]["AllowedPattern"]
            .as_str()
            .unwrap();
        // CloudFormation matches the whole value.
        let pattern = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
        for full in [
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:risk-responder/ingress-AbC123",
            "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:rr_graph.prod@x-9zY8xW",
        ] {
            assert!(pattern.is_match(full), "{parameter} refuses {full}");
        }
        for partial in [
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:risk-responder/ingress",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rr/graph",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rr/graph-AbC12",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rr/graph-AbC12*",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:*",
            "risk-responder/ingress-AbC123",
        ] {
            assert!(!pattern.is_match(partial), "{parameter} accepts {partial}");
        }
        assert!(
            template["Parameters"][parameter]["ConstraintDescription"]
                .as_str()
                .is_some_and(|d| d.contains("six random characters")),
            "{parameter}"
        );
    }
}

/// Schedule names are unique per account (and schedule group): named after the stack, two
/// stacks in one account do not collide. The sweep is not retried, neither by the scheduler
/// nor by Lambda's own retries of an asynchronous invocation.
#[test]
fn schedules_are_named_after_the_stack_and_the_sweep_is_not_retried() {
    let template = template();
    let mut names = BTreeSet::new();
    for (function_name, event) in [
        ("SweepFunction", "Every5Minutes"),
        ("RenewerFunction", "Daily"),
    ] {
        let schedule = &function(&template, function_name)["Events"][event];
        assert_eq!(schedule["Type"].as_str(), Some("ScheduleV2"));
        let (f, name) = tagged(&schedule["Properties"]["Name"])
            .unwrap_or_else(|| panic!("{function_name}: no Name"));
        assert_eq!(f, "Sub");
        let name = name.as_str().unwrap();
        assert!(name.starts_with("${AWS::StackName}-"), "{name}");
        assert!(names.insert(name.to_owned()), "two schedules named {name}");
    }
    let sweep = function(&template, "SweepFunction");
    assert_eq!(
        sweep["Events"]["Every5Minutes"]["Properties"]["RetryPolicy"]["MaximumRetryAttempts"]
            .as_i64(),
        Some(0)
    );
    assert_eq!(
        sweep["EventInvokeConfig"]["MaximumRetryAttempts"].as_i64(),
        Some(0),
        "Lambda retries a failed asynchronous invocation twice unless told not to"
    );
}

/// The statements of a role's policy, as (condition of an `!If` around it, Sid).
fn statements(template: &Yaml, role: &str) -> Vec<(Option<String>, String)> {
    template["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|statement| match if_branches(statement) {
            Some((condition, then, otherwise)) => {
                assert_eq!(reference(otherwise), Some("AWS::NoValue"));
                (
                    Some(condition.to_owned()),
                    then["Sid"].as_str().unwrap().to_owned(),
                )
            }
            None => (None, statement["Sid"].as_str().unwrap().to_owned()),
        })
        .collect()
}

/// Temporary-password permissions only for a deployment whose policy delivers through Secrets
/// Manager (`PasswordDelivery`), under the prefix the functions are given and check.
#[test]
fn temporary_password_permissions_follow_the_password_delivery_parameter() {
    let template = template();
    let parameter = &template["Parameters"]["PasswordDelivery"];
    assert_eq!(parameter["Default"].as_str(), Some("mail"));
    // The embedded policy delivers by mail: the default deployment grants no vault.
    assert!(matches!(
        risk_responder::cases::Policy::default_policy().password_delivery,
        Some(risk_responder::cases::policy::PasswordDelivery::Mail { .. })
    ));
    let condition = tagged(&template["Conditions"]["VaultInSecretsManager"]).unwrap();
    assert_eq!(condition.0, "Equals");
    assert_eq!(reference(&condition.1[0]), Some("PasswordDelivery"));
    assert_eq!(condition.1[1].as_str(), Some("secrets-manager"));

    let vault = Some("VaultInSecretsManager".to_owned());
    let worker = statements(&template, "WorkerRole");
    assert!(
        worker.contains(&(vault.clone(), "TemporaryPasswords".into())),
        "{worker:?}"
    );
    let renewer = statements(&template, "RenewerRole");
    for sid in ["FindTemporaryPasswords", "DeleteExpiredTemporaryPasswords"] {
        assert!(
            renewer.contains(&(vault.clone(), sid.into())),
            "{renewer:?}"
        );
    }
    for name in ["WorkerFunction", "RenewerFunction"] {
        let variable =
            &function(&template, name)["Environment"]["Variables"]["RR_TEMPORARY_PASSWORD_PREFIX"];
        let (condition, then, otherwise) =
            if_branches(variable).unwrap_or_else(|| panic!("{name}: {variable:?}"));
        assert_eq!(condition, "VaultInSecretsManager");
        assert_eq!(reference(then), Some("TemporaryPasswordPrefix"));
        assert_eq!(reference(otherwise), Some("AWS::NoValue"));
    }
}

/// Secrets encrypted with a customer managed key (`SecretsKmsKeyArn`): every role that reads a
/// secret, and only such a role, may `kms:Decrypt` with that key, only through Secrets Manager
/// in the stack's region, and only when the parameter is set.
#[test]
fn a_customer_managed_secrets_key_is_granted_to_the_secret_readers_only_when_given() {
    let template = template();
    let parameter = &template["Parameters"]["SecretsKmsKeyArn"];
    assert_eq!(parameter["Default"].as_str(), Some(""));
    let pattern = parameter["AllowedPattern"].as_str().unwrap();
    let pattern = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    for good in [
        "",
        "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab",
    ] {
        assert!(pattern.is_match(good), "refuses {good:?}");
    }
    for bad in [
        "arn:aws:kms:eu-west-1:123456789012:alias/risk-responder",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:kms:eu-west-1:123456789012:key/*",
        "*",
    ] {
        assert!(!pattern.is_match(bad), "accepts {bad:?}");
    }
    let condition = tagged(&template["Conditions"]["UseSecretsKmsKey"]).unwrap();
    assert_eq!(condition.0, "Not");
    let (equals, operands) = tagged(&condition.1[0]).unwrap();
    assert_eq!(equals, "Equals");
    assert_eq!(reference(&operands[0]), Some("SecretsKmsKeyArn"));
    assert_eq!(operands[1].as_str(), Some(""));

    let roles: Vec<&str> = resources(&template)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::IAM::Role"))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(roles.len(), 4, "{roles:?}");
    for role in roles {
        let document = &template["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"];
        let all = document["Statement"].as_sequence().unwrap();
        let reads_secrets = all
            .iter()
            .any(|s| s["Action"].as_str() == Some("secretsmanager:GetSecretValue"));
        let decrypt: Vec<&Yaml> = all
            .iter()
            .filter_map(|s| match if_branches(s) {
                Some(("UseSecretsKmsKey", then, otherwise)) => {
                    assert_eq!(reference(otherwise), Some("AWS::NoValue"), "{role}");
                    Some(then)
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            decrypt.len(),
            usize::from(reads_secrets),
            "{role}: a KMS statement exactly when it reads secrets"
        );
        let Some(statement) = decrypt.first() else {
            continue;
        };
        assert_eq!(statement["Sid"].as_str(), Some("DecryptSecrets"), "{role}");
        assert_eq!(statement["Effect"].as_str(), Some("Allow"), "{role}");
        assert_eq!(statement["Action"].as_str(), Some("kms:Decrypt"), "{role}");
        assert_eq!(
            reference(&statement["Resource"]),
            Some("SecretsKmsKeyArn"),
            "{role}"
        );
        let conditions = statement["Condition"].as_mapping().unwrap();
        assert_eq!(conditions.len(), 1, "{role}");
        let equals = statement["Condition"]["StringEquals"].as_mapping().unwrap();
        assert_eq!(equals.len(), 1, "{role}");
        let (f, service) = tagged(&statement["Condition"]["StringEquals"]["kms:ViaService"])
            .unwrap_or_else(|| panic!("{role}: no kms:ViaService"));
        assert_eq!(f, "Sub");
        assert_eq!(
            service.as_str(),
            Some("secretsmanager.${AWS::Region}.amazonaws.com"),
            "{role}"
        );
    }
}

fn policy_file(channel: &str) -> tempfile_path::TempPolicy {
    let mut text =
        std::fs::read_to_string(format!("{}/config/policy.toml", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    // The table itself, not a comment that names it.
    let start = text.find("\n[password_delivery]").unwrap() + 1;
    let end = start + text[start..].find("\n\n").unwrap();
    text.replace_range(start..end, channel);
    tempfile_path::TempPolicy::new(&text)
}

/// A policy file in the system's temporary directory, removed when dropped.
mod tempfile_path {
    pub struct TempPolicy(pub std::path::PathBuf);

    impl TempPolicy {
        pub fn new(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "rr-template-policy-{}-{}.toml",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for TempPolicy {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The worker and the renewer refuse to start when the policy's vault prefix is not the one the
/// stack grants; the worker also when the policy wants a vault the stack does not grant.
#[tokio::test]
async fn the_functions_refuse_a_policy_whose_vault_the_stack_does_not_grant() {
    let vault = policy_file(
        "[password_delivery]\nchannel = \"secrets-manager\"\nname_prefix = \"rr/temporary-password/\"",
    );
    let config = |prefix: Option<&str>, in_lambda: bool| Config {
        policy_file: Some(vault.0.clone()),
        temporary_password_prefix: prefix.map(str::to_owned),
        in_lambda,
        ..Config::default()
    };
    let err = app::load_policy(&config(Some("risk-responder/temporary-password/"), true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rr/temporary-password/")
            && err.contains("risk-responder/temporary-password/"),
        "{err}"
    );
    let same = config(Some("rr/temporary-password/"), true);
    let policy = app::load_policy(&same).unwrap();
    assert!(app::password_vault(&same, &policy).await.unwrap().is_some());
    // The stack was deployed with PasswordDelivery=mail: no vault granted, the worker refuses.
    let none = config(None, true);
    let policy = app::load_policy(&none).unwrap();
    let err = app::password_vault(&none, &policy)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("PasswordDelivery=secrets-manager"), "{err}");
    // Outside Lambda (CLI, local server) there is no stack to agree with.
    let local = config(None, false);
    assert!(
        app::password_vault(&local, &policy)
            .await
            .unwrap()
            .is_some()
    );
    // A mail policy needs no vault whatever the stack grants.
    let mail = Config {
        temporary_password_prefix: Some("rr/temporary-password/".into()),
        in_lambda: true,
        ..Config::default()
    };
    let policy = app::load_policy(&mail).unwrap();
    assert!(app::password_vault(&mail, &policy).await.unwrap().is_none());
}

/// The template gives every function GraphClientId (`RR_GRAPH_CLIENT_ID`); a Graph secret
/// without `client_id` is enough, as the GraphSecretArn description says.
#[test]
fn the_graph_client_id_comes_from_configuration_when_the_secret_has_none() {
    let template = template();
    assert_eq!(
        reference(
            &template["Globals"]["Function"]["Environment"]["Variables"]["RR_GRAPH_CLIENT_ID"]
        ),
        Some("GraphClientId")
    );
    let description = template["Parameters"]["GraphSecretArn"]["Description"]
        .as_str()
        .unwrap();
    assert!(description.contains("GraphClientId"), "{description}");

    let document =
        r#"{"tenant_id":"84bd8158-6d4d-4958-8b9f-9d6445542f95","client_secret":"not-used-here"}"#;
    let secrets = GraphSecrets::from_json(document).unwrap();
    assert!(secrets.client_id.is_none());
    let store = Arc::new(StaticSecretStore::new(
        GraphSecrets::from_json(document).unwrap(),
    ));
    let without = Config::default();
    let err = app::graph_client(&without, &secrets, store.clone(), reqwest::Client::new())
        .err()
        .expect("no client id anywhere")
        .to_string();
    assert!(err.contains("RR_GRAPH_CLIENT_ID"), "{err}");
    let with = Config {
        graph_client_id: Some("11111111-2222-3333-4444-555555555555".into()),
        ..Config::default()
    };
    assert!(app::graph_client(&with, &secrets, store, reqwest::Client::new()).is_ok());
}
