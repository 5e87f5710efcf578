"""moto server whose IAM enforcement evaluates what tests/iam_least_privilege.rs needs.

moto checks a request's action against the caller's policies but, for DynamoDB and Secrets
Manager, against the resource "*" and without conditions: a statement scoped to a table ARN or
to `dynamodb:LeadingKeys` would be refused (or, written with "*", granted) whatever the request.
This wrapper replaces that check with an evaluator of the policy elements the template uses:

- Effect Allow/Deny (an explicit Deny wins), Action and Resource with `*`/`?` wildcards;
- the request's resources: the table ARN (each table of a batch), the secret ARN (CreateSecret:
  the ARN the new secret will have, up to its random suffix), the queue ARN; `*` for ListSecrets;
- conditions StringEquals/StringLike, with ForAllValues:/ForAnyValue:, on `dynamodb:LeadingKeys`
  (the partition-key values of every item the request touches). Stricter than IAM, never more
  lenient: an operator or element it does not know, or a key the request lacks, never grants.

It also runs requests one at a time and rewrites moto's XML AccessDenied for JSON-protocol
services to the JSON error AWS sends (as tests/common/moto.rs does). Prints its port, stops when
stdin closes. Enforcement starts when the test posts 0 to /moto-api/reset-auth.
"""

import json
import re
import sys
import threading

from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.iam import access_control
from moto.dynamodb.models import dynamodb_backends
from moto.secretsmanager.models import secretsmanager_backends
from moto.iam.models import Policy

DENIALS = []  # (user arn, action, resource) of every denied request, for the test to read

# API operations authorised by another action (Amazon SQS batch actions: "setting permissions
# for SendMessage, DeleteMessage, or ChangeMessageVisibility sets permissions for the
# corresponding batch versions"); moto checks them under their own names.
IAM_ACTION = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


def wildcard(pattern: str, value: str, case_sensitive: bool = True) -> bool:
    regex = "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + "$"
    return re.match(regex, value, 0 if case_sensitive else re.I) is not None


def as_list(value):
    return value if isinstance(value, list) else [value]


def documents(access_key):
    for policy in access_key.collect_policies():
        if isinstance(policy, Policy):
            doc = next(v.document for v in policy.versions if v.is_default)
        elif isinstance(policy, str):
            doc = policy
        else:
            doc = policy["policy_document"]
        yield json.loads(doc) if isinstance(doc, str) else doc


def condition_holds(condition: dict, context: dict) -> bool:
    for operator, keys in condition.items():
        qualifier = None
        for prefix in ("ForAllValues:", "ForAnyValue:"):
            if operator.startswith(prefix):
                qualifier, operator = prefix[:-1], operator[len(prefix):]
        compare = {"StringEquals": lambda p, v: p == v, "StringLike": wildcard}.get(operator)
        if compare is None:
            return False
        for key, patterns in keys.items():
            values = context.get(key)
            if not values:
                return False
            patterns = as_list(patterns)
            matches = [any(compare(p, v) for p in patterns) for v in values]
            if qualifier == "ForAnyValue":
                if not any(matches):
                    return False
            elif not all(matches):  # ForAllValues, or a single-valued key
                return False
    return True


def statement_applies(statement: dict, action: str, resource: str, context: dict) -> bool:
    if set(statement) - {"Sid", "Effect", "Action", "Resource", "Condition"}:
        return False  # NotAction, NotResource, Principal...: not evaluated here
    if not any(wildcard(a, action, case_sensitive=False) for a in as_list(statement.get("Action", []))):
        return False
    if not any(wildcard(r, resource) for r in as_list(statement.get("Resource", []))):
        return False
    return condition_holds(statement.get("Condition", {}), context)


def allowed(access_key, action: str, resource: str, context: dict) -> bool:
    allow = False
    for doc in documents(access_key):
        for statement in as_list(doc.get("Statement", [])):
            if statement_applies(statement, action, resource, context):
                if statement.get("Effect") == "Deny":
                    return False
                allow = allow or statement.get("Effect") == "Allow"
    return allow


def request_scope(request, moto_resource: str):
    """(resources, condition context) of a request."""
    service, operation = request._action.split(":", 1)
    account, region = request.account_id, request._region
    try:
        body = json.loads(request._body or b"{}")
    except ValueError:
        body = {}
    if service == "dynamodb":
        backend = dynamodb_backends[account][region]
        if operation in ("BatchWriteItem", "BatchGetItem"):
            tables = body.get("RequestItems", {})
        else:
            tables = {body.get("TableName", ""): body}
        resources, keys = [], []
        for table, part in tables.items():
            resources.append(f"arn:aws:dynamodb:{region}:{account}:table/{table}")
            try:
                hash_key = backend.get_table(table).hash_key_attr
            except Exception:
                continue
            items = []
            if operation == "BatchWriteItem":
                for write in part:
                    items.append((write.get("PutRequest") or {}).get("Item") or (write.get("DeleteRequest") or {}).get("Key") or {})
            elif operation == "BatchGetItem":
                items.extend(part.get("Keys", []))
            else:
                items.append(part.get("Key") or part.get("Item") or {})
            for item in items:
                value = item.get(hash_key, {})
                keys.append(value.get("S") or value.get("N") or value.get("B") or "")
        return resources, ({"dynamodb:LeadingKeys": keys} if keys else {})
    if service == "secretsmanager":
        if operation == "ListSecrets":
            return ["*"], {}
        backend = secretsmanager_backends[account][region]
        if operation == "CreateSecret":
            return [f"arn:aws:secretsmanager:{region}:{account}:secret:{body.get('Name', '')}-AbCdEf"], {}
        secret_id = body.get("SecretId", "")
        if secret_id.startswith("arn:"):
            return [secret_id], {}
        try:
            return [backend.describe_secret(secret_id).arn], {}
        except Exception:
            return [f"arn:aws:secretsmanager:{region}:{account}:secret:{secret_id}"], {}
    return [moto_resource], {}


def check_action_permitted(self, resource: str) -> None:
    if self._action == "sts:GetCallerIdentity":
        return
    resources, context = request_scope(self, resource)
    action = IAM_ACTION.get(self._action, self._action)
    for r in resources:
        if not allowed(self._access_key, action, r, context):
            DENIALS.append((self._access_key.arn, action, r))
            self._raise_access_denied()


access_control.IAMRequestBase.check_action_permitted = check_action_permitted

inner = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/test-api/denials":
        body = json.dumps(DENIALS).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    captured = {}

    def capture(status, headers, exc_info=None):
        captured["status"], captured["headers"] = status, headers

    with lock:
        body = b"".join(inner(environ, capture))
    status, headers = captured["status"], captured["headers"]
    if environ.get("HTTP_X_AMZ_TARGET") and status.startswith("403") and b"<Code>AccessDenied</Code>" in body:
        found = re.search(rb"<Message>(.*?)</Message>", body, re.S)
        message = found.group(1).decode() if found else "Access denied"
        body = json.dumps({"__type": "AccessDeniedException", "Message": message}).encode()
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", "AccessDeniedException"),
                   ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body]


server = make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_address[1], flush=True)
sys.stdin.read()
server.shutdown()
