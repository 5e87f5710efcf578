#!/usr/bin/env python3
"""`make lambda-check`: the Lambda binaries under cargo-lambda's runtime emulator (`cargo lambda
watch`), driven with `cargo lambda invoke --data-file`, against moto (DynamoDB table, SQS work
queue with its dead-letter queue, the two Secrets Manager secrets), with the environment the
template gives each function. Graph and the token endpoint are a closed port: Microsoft cannot
run here, so what is checked is that an outage loses nothing.

1. webhook: every saved event, with the status the README promises (events/expected-status.json;
   tests/saved_events.rs makes sure no saved event is left out unless excluded there with a
   reason): Lambda HTTP events as they are; raw Sentinel bodies wrapped in a Function URL event
   and signed now with the development key; raw Graph batches wrapped in a Function URL event to
   /graph/notifications. Then once more past the secrets TTL (1 s here). Every accepted
   signal must be in the ledger (a `signal#` item whose `doc` is the signal record, not yet
   merged into a case) and on the queue.
2. worker: an SQS event made of what the webhook enqueued, plus one unreadable message. With
   Graph unreachable every item that needs Graph must come back in `batchItemFailures` (kept for
   retry, as the README says of a Graph outage), the unreadable one too; only a legacy security
   alert, which names no user (its API is retired), is settled without Graph, its signal
   recorded as such. Every signal of the batch must still be in the ledger, in no case or in one
   that is still open: none lost, none merged into a closed case.
3. sweep: a scheduled event, after a sweep an hour ago left its watermarks
   (`tenant#<tenant>#sweep`). With Graph unreachable the invocation must fail, naming the
   tenant (its error alarm fires); the watermarks must not move and no signal be added.
4. renewer: a scheduled event. With Graph unreachable the invocation must fail, naming the
   tenant, so the renewer's error alarm fires.

Needs the venv of `make lambda-check` (moto, boto3, cargo-lambda, zig) first on PATH.
Exit status 0 when every check passed; one line per check.
"""

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
VENV_BIN = Path(sys.executable).parent
TENANT = "84bd8158-6d4d-4958-8b9f-9d6445542f95"  # tenant of the saved events
APP_ID = "11111111-2222-3333-4444-555555555555"
FIXTURE_SUBSCRIPTIONS = ("7f105c7d-2dc5-4530-97cd-4e7ae6534c07", "9a1c7b0e-5c8e-4f7e-8a52-6a1f0d9c3b21",
                         "0b7b5a3c-1d0e-4b0a-9f43-2a6f1c3e8d11")
INGRESS_FIELDS = ("client_states", "webhook_hmac_keys", "decryption_keys")
GRAPH_FIELDS = ("tenant_id", "client_id", "client_secret", "certificate_private_key", "certificate_thumbprint",
                "intent_sealing_key")
FIRST_INVOKE_TIMEOUT = 1500  # the emulator compiles a function on its first invocation

results: list[tuple[bool, str]] = []


def check(ok: bool, what: str) -> bool:
    results.append((ok, what))
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    return ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


def start(cmd: list[str], env: dict | None = None, log=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def invoke(port: int, function: str, payload: dict, timeout: int = 300) -> tuple[dict | None, str]:
    """(response, error text) of one invocation through the emulator."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(payload, f)
    try:
        out = subprocess.run(["cargo", "lambda", "invoke", function, "--invoke-port", str(port),
                              "--data-file", f.name, "--output-format", "json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        return None, (out.stderr or out.stdout).strip()
    return json.loads(out.stdout), ""


def signed_function_url_event(body: str, template: dict) -> dict:
    """A Function URL event POSTing `body` to /sentinel/alerts, signed now (Standard Webhooks)."""
    secrets = json.loads((ROOT / "config" / "local-secrets.json").read_text())
    key = base64.b64decode(secrets["webhook_hmac_keys"][0].removeprefix("whsec_"))
    msg_id, ts = f"msg_lambda_check_{time.time_ns()}", str(int(time.time()))
    signature = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.{body}".encode(), hashlib.sha256).digest()).decode()
    event = json.loads(json.dumps(template))
    event["headers"].update({"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": f"v1,{signature}",
                             "content-length": str(len(body.encode()))})
    event["body"], event["isBase64Encoded"] = body, False
    return event


def graph_function_url_event(body: str, template: dict) -> dict:
    """A Function URL event POSTing the raw Graph batch `body` to /graph/notifications."""
    event = json.loads(json.dumps(template))
    event["headers"]["content-length"] = str(len(body.encode()))
    event["body"], event["isBase64Encoded"] = body, False
    return event


def ledger_items(ddb) -> dict:
    """Every item of the ledger table, by `pk`."""
    items = {}
    for page in ddb.get_paginator("scan").paginate(TableName="rr-ledger"):
        for item in page["Items"]:
            items[item["pk"]["S"]] = item
    return items


def ledger_signals(ddb) -> dict:
    """The ledger's signal records (the `doc` of `signal#` items), by signal id."""
    return {pk.removeprefix("signal#"): json.loads(item["doc"]["S"])
            for pk, item in ledger_items(ddb).items() if pk.startswith("signal#")}


def main() -> int:
    expected = {k: v for k, v in json.loads((EVENTS / "expected-status.json").read_text()).items()
                if not k.startswith("_")}
    moto_port, watch_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{moto_port}"
    logs = tempfile.NamedTemporaryFile("w+", prefix="lambda-check-", suffix=".log", delete=False)
    moto = start([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)])
    watch = None
    try:
        wait_for_port(moto_port, 30)
        aws = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        ddb, sqs, sm = (aws.client(s, endpoint_url=endpoint) for s in ("dynamodb", "sqs", "secretsmanager"))
        ddb.create_table(TableName="rr-ledger", BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
        # The subscriptions of the saved Graph events, recorded in their tenant as the renewer
        # records what it creates: the webhook keeps notifications only from those.
        for subscription in FIXTURE_SUBSCRIPTIONS:
            doc = json.dumps({"tenant_id": TENANT, "subscription_id": subscription,
                              "recorded_at": "2026-12-01T00:00:00Z"})
            ddb.put_item(TableName="rr-ledger", Item={
                "pk": {"S": f"subscription#{TENANT}#{subscription}"}, "doc": {"S": doc},
                "version": {"N": "1"}, "updated_at": {"N": str(int(time.time()))}})
        dlq = sqs.create_queue(QueueName="rr-dead-letters")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue = sqs.create_queue(QueueName="rr-work", Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})})["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        dev = json.loads((ROOT / "config" / "local-secrets.json").read_text())
        ingress = sm.create_secret(Name="rr/ingress", SecretString=json.dumps({k: dev[k] for k in INGRESS_FIELDS}))
        graph = sm.create_secret(Name="rr/graph", SecretString=json.dumps({k: dev[k] for k in GRAPH_FIELDS if k in dev}))

        # What the template sets, pointed at moto; Graph and the token endpoint at a closed port.
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
                   RR_ALLOWED_TENANTS=TENANT, RR_GRAPH_CLIENT_ID=APP_ID, RR_LEDGER_TABLE="rr-ledger",
                   RR_QUEUE_URL=queue, RR_INGRESS_SECRET_ID=ingress["ARN"], RR_GRAPH_SECRET_ID=graph["ARN"],
                   RR_NOTIFICATION_URL="https://example.lambda-url.us-east-1.on.aws/graph/notifications",
                   RR_IDENTITY_PROTECTION_SHARE="0.5", RR_INCIDENT_COMMENTS="arm", RR_SECRETS_TTL_SECONDS="1",
                   RR_GRAPH_BASE_URL=f"http://127.0.0.1:{free_port()}/v1.0",
                   RR_LOGIN_AUTHORITY=f"http://127.0.0.1:{free_port()}", RUST_LOG="info")
        watch = start(["cargo", "lambda", "watch", "--ignore-changes", "--no-default-features",
                       "--invoke-port", str(watch_port)], env=env, log=logs)
        wait_for_port(watch_port, 600)

        # ---- webhook ----
        template = json.loads((EVENTS / "sentinel" / "alert.function-url.json").read_text())
        graph_template = json.loads((EVENTS / "graph" / "users-updated.function-url.json").read_text())
        for round_name in ("cold", "past the secrets TTL"):
            for file, want in expected.items():
                if "lambda_http_event" in want:
                    payload, status = json.loads((EVENTS / file).read_text()), want["lambda_http_event"]
                elif "graph_body" in want:
                    payload = graph_function_url_event((EVENTS / file).read_text(), graph_template)
                    status = want["graph_body"]
                else:
                    payload = signed_function_url_event((EVENTS / file).read_text(), template)
                    status = want["signed_body"]
                response, error = invoke(watch_port, "webhook", payload, FIRST_INVOKE_TIMEOUT)
                got = response.get("statusCode") if response else None
                check(got == status, f"webhook {file} ({round_name}): {got or error[-300:]}, expected {status}")
            time.sleep(1.5)

        # Accepted signals are kept: in the ledger (not yet worked), and on the queue.
        signals = ledger_signals(ddb)
        check(len(signals) > 0 and all(r.get("case_id") is None and r.get("disposition") is None
                                       for r in signals.values()),
              f"ledger: {len(signals)} signals kept, none worked yet")
        messages = []
        while True:
            batch = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=600,
                                        AttributeNames=["All"]).get("Messages", [])
            if not batch:
                break
            messages += batch
        queued = {json.loads(m["Body"])["body"]["event_id"] for m in messages
                  if json.loads(m["Body"]).get("type") == "risk"}
        check(set(signals) <= queued, f"queue: {len(messages)} work items, every kept signal among them "
                                      f"({len(set(signals) - queued)} missing)")

        # ---- worker: what the webhook enqueued (at most 10 a batch, as the event source sends) ----
        records = [{
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": m.get("Attributes", {}), "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1",
        } for m in messages[:9]]
        records.append(dict(records[0], messageId="unreadable-message", body="{not json"))
        response, error = invoke(watch_port, "worker", {"Records": records}, FIRST_INVOKE_TIMEOUT)
        failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
        # A legacy security alert names no user and its API is retired: the worker settles its
        # signal without Graph (the ledger says why). Everything else needs Graph.
        legacy = {r["messageId"] for r in records[:-1]
                  if json.loads(r["body"])["body"].get("subject", {}).get("kind") == "security_alert"}
        check(response is not None and failed == {r["messageId"] for r in records} - legacy,
              f"worker: {len(failed)} of {len(records)} items kept for retry (Graph unreachable), "
              f"{len(legacy)} legacy security alert(s) settled {error[-300:]}")
        risk = {json.loads(r["body"])["body"]["event_id"] for r in records[:-1]
                if json.loads(r["body"]).get("type") == "risk"}
        after = ledger_signals(ddb)
        settled = {json.loads(r["body"])["body"]["event_id"] for r in records if r["messageId"] in legacy}
        check(all(after.get(i, {}).get("disposition") and after[i].get("case_id") is None for i in settled),
              f"worker: {len(settled)} legacy security-alert signal(s) recorded as settled, in no case")
        cases = {pk.removeprefix("case#"): json.loads(item["doc"]["S"]) for pk, item in ledger_items(ddb).items()
                 if pk.startswith("case#")}
        closed = {case_id for case_id, case in cases.items() if case.get("status") in ("completed", "skipped")}
        lost = risk - set(after)
        merged_closed = {i for i in risk & set(after) if after[i].get("case_id") in closed}
        check(bool(risk) and not lost and not merged_closed,
              f"worker: the batch's {len(risk)} signals kept ({len(lost)} lost, {len(merged_closed)} in a closed case; "
              f"{len(cases)} case(s): {', '.join(sorted(c.get('status', '?') for c in cases.values())) or 'none'})")

        # ---- sweep: the 5-minute schedule ----
        # The watermarks a sweep an hour ago left (as DynamoStore writes them).
        watermark = f"tenant#{TENANT}#sweep"
        hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        ddb.put_item(TableName="rr-ledger", Item={
            "pk": {"S": watermark}, "version": {"N": "1"}, "updated_at": {"N": str(int(time.time()) - 3600)},
            "doc": {"S": json.dumps({"risk_watermark": hour_ago, "sign_in_watermark": hour_ago, "last_run": hour_ago})}})
        before = ledger_items(ddb).get(watermark)
        response, error = invoke(watch_port, "sweep", {"source": "aws.scheduler", "detail-type": "Scheduled Event"},
                                 FIRST_INVOKE_TIMEOUT)
        named = next((line.strip(" │") for line in error.splitlines() if TENANT in line), "")
        check(response is None and f"{TENANT}: " in error,
              f"sweep: invocation fails naming the tenant (Graph unreachable): {named or response or error[-300:]}")
        items = ledger_items(ddb)
        check(items.get(watermark) == before and set(ledger_signals(ddb)) == set(after),
              f"sweep: watermarks unmoved (still {hour_ago}, version {items.get(watermark, {}).get('version', {}).get('N')}), "
              f"no signal added")

        # ---- renewer: the daily schedule ----
        response, error = invoke(watch_port, "renewer", {"source": "aws.scheduler", "detail-type": "Scheduled Event"},
                                 FIRST_INVOKE_TIMEOUT)
        named = next((line.strip(" │") for line in error.splitlines() if "ensure" in line), "")
        check(response is None and f"{TENANT}: ensure" in error,
              f"renewer: invocation fails naming the tenant (Graph unreachable): {named or response or error[-300:]}")
    finally:
        if watch:
            stop(watch)
        stop(moto)
    passed = sum(ok for ok, _ in results)
    print(f"{passed} passed, {len(results) - passed} failed")
    if passed < len(results):
        print(f"emulator log: {logs.name}")
    return 0 if results and passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
