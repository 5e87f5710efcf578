"""moto server whose IAM enforcement evaluates what tests/iam_least_privilege.rs needs.

moto checks a request's action against the caller's policies but, for DynamoDB and Secrets
Manager, against the resource "*" and without conditions: a statement scoped to a table ARN or
to `dynamodb:LeadingKeys` would be refused (or, written with "*", granted) whatever the request.
This wrapper replaces that check with an evaluator of the policy elements the template uses:

- Effect Allow/Deny (an explicit Deny wins), Action and Resource with `*`/`?` wildcards;
- the request's resources: the table ARN (each table of a batch), the secret ARN (CreateSecret:
  the ARN the new secret will have, up to its random suffix), the queue ARN; `*` for ListSecrets;
- DynamoDB transactions as IAM authorises them: each member of TransactWriteItems /
  TransactGetItems under the action of its underlying operation (Put -> dynamodb:PutItem, Update
  -> UpdateItem, Delete -> DeleteItem, ConditionCheck -> ConditionCheckItem, Get -> GetItem),
  with that member's table and key ("Using IAM with DynamoDB transactions");
- conditions StringEquals/StringLike, with ForAllValues:/ForAnyValue:, on `dynamodb:LeadingKeys`
  (the partition-key values of every item the request touches). Stricter than IAM, never more
  lenient: an operator or element it does not know, or a key the request lacks, never grants.

It records every denial (GET /test-api/denials: user ARN, action, resource, leading keys) and,
for every allowed request, which statements (by Sid) allowed it; POST /test-api/unused with
{"user": name, "policies": {name: document}} answers the elements of those documents that no
allowed request of that user needed: (Sid, action, resource, leading-key pattern or null). That
is how the test tells a grant nobody uses from one the code needs.

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

DENIALS = []  # (user arn, action, resource, leading keys) of every denied request
ALLOWED = []  # (user arn, action, resource, leading keys, Sids of the statements that allowed it)

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


def allowed(access_key, action: str, resource: str, context: dict) -> list | None:
    """The Sids of the Allow statements that grant the request, or None if it is denied."""
    sids = []
    for doc in documents(access_key):
        for statement in as_list(doc.get("Statement", [])):
            if statement_applies(statement, action, resource, context):
                if statement.get("Effect") == "Deny":
                    return None
                if statement.get("Effect") == "Allow":
                    sids.append(statement.get("Sid"))
    return sids or None


# Members of a DynamoDB transaction: the IAM action each one is authorised under.
TRANSACTION_MEMBERS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                       "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}


def leading_keys(backend, table: str, items: list) -> list:
    try:
        hash_key = backend.get_table(table).hash_key_attr
    except Exception:
        return []
    keys = []
    for item in items:
        value = item.get(hash_key, {})
        keys.append(value.get("S") or value.get("N") or value.get("B") or "")
    return keys


def request_checks(request, moto_resource: str):
    """[(IAM action, resource, condition context)] a request must be allowed for."""
    service, operation = request._action.split(":", 1)
    action = IAM_ACTION.get(request._action, request._action)
    account, region = request.account_id, request._region
    try:
        body = json.loads(request._body or b"{}")
    except ValueError:
        body = {}
    if service == "dynamodb":
        backend = dynamodb_backends[account][region]
        arn = lambda table: f"arn:aws:dynamodb:{region}:{account}:table/{table}"
        context = lambda keys: {"dynamodb:LeadingKeys": keys} if keys else {}
        if operation in ("TransactWriteItems", "TransactGetItems"):
            checks = []
            for member in body.get("TransactItems", []):
                for kind, part in member.items():
                    table = part.get("TableName", "")
                    keys = leading_keys(backend, table, [part.get("Key") or part.get("Item") or {}])
                    checks.append((f"dynamodb:{TRANSACTION_MEMBERS.get(kind, kind)}", arn(table), context(keys)))
            return checks or [(action, arn(""), {})]
        if operation in ("BatchWriteItem", "BatchGetItem"):
            tables = body.get("RequestItems", {})
        else:
            tables = {body.get("TableName", ""): body}
        resources, keys = [], []
        for table, part in tables.items():
            resources.append(arn(table))
            items = []
            if operation == "BatchWriteItem":
                for write in part:
                    items.append((write.get("PutRequest") or {}).get("Item") or (write.get("DeleteRequest") or {}).get("Key") or {})
            elif operation == "BatchGetItem":
                items.extend(part.get("Keys", []))
            else:
                items.append(part.get("Key") or part.get("Item") or {})
            keys.extend(leading_keys(backend, table, items))
        return [(action, r, context(keys)) for r in resources]
    if service == "secretsmanager":
        if operation == "ListSecrets":
            return [(action, "*", {})]
        backend = secretsmanager_backends[account][region]
        if operation == "CreateSecret":
            return [(action, f"arn:aws:secretsmanager:{region}:{account}:secret:{body.get('Name', '')}-AbCdEf", {})]
        secret_id = body.get("SecretId", "")
        if secret_id.startswith("arn:"):
            return [(action, secret_id, {})]
        try:
            return [(action, backend.describe_secret(secret_id).arn, {})]
        except Exception:
            return [(action, f"arn:aws:secretsmanager:{region}:{account}:secret:{secret_id}", {})]
    return [(action, moto_resource, {})]


def check_action_permitted(self, resource: str) -> None:
    if self._action == "sts:GetCallerIdentity":
        return
    checks = request_checks(self, resource)
    granted = []
    for action, r, context in checks:
        sids = allowed(self._access_key, action, r, context)
        keys = context.get("dynamodb:LeadingKeys", [])
        if sids is None:
            DENIALS.append((self._access_key.arn, action, r, keys))
            self._raise_access_denied()
        granted.append((self._access_key.arn, action, r, keys, sids))
    ALLOWED.extend(granted)


def unused(user: str, policies: dict) -> list:
    """Elements of `policies` (Allow statements) that no allowed request of `user` needed."""
    mine = [a for a in ALLOWED if a[0].endswith(f":user/{user}")]
    out = []
    for document in policies.values():
        for statement in as_list(document.get("Statement", [])):
            if statement.get("Effect") != "Allow":
                continue
            sid = statement.get("Sid")
            condition = statement.get("Condition", {})
            patterns = [p for keys in condition.values() for name, values in keys.items()
                        if name == "dynamodb:LeadingKeys" for p in as_list(values)] or [None]
            for action in as_list(statement.get("Action", [])):
                for resource in as_list(statement.get("Resource", [])):
                    for pattern in patterns:
                        if not any(sid in sids and wildcard(action, a, case_sensitive=False) and wildcard(resource, r)
                                   and (pattern is None or any(wildcard(pattern, k) for k in keys))
                                   for _, a, r, keys, sids in mine):
                            out.append((sid, action, resource, pattern))
    return out


access_control.IAMRequestBase.check_action_permitted = check_action_permitted

inner = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()


def app(environ, start_response):
    path = environ.get("PATH_INFO")
    if path in ("/test-api/denials", "/test-api/unused"):
        with lock:
            if path == "/test-api/denials":
                body = json.dumps(DENIALS).encode()
            else:
                request = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
                body = json.dumps(unused(request["user"], request["policies"])).encode()
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
