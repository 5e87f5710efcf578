//! A moto server (AWS stand-in from PyPI `moto[server]`) on 127.0.0.1, one per test process,
//! stopped when the test process exits (it watches its stdin).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use aws_config::{BehaviorVersion, Region, SdkConfig};

struct Moto {
    endpoint: String,
    _child: Mutex<Child>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// moto's backends are not atomic under concurrent requests (two conditional writes on one
/// item can both pass), whereas DynamoDB serialises writes to an item. Requests are therefore
/// run one at a time behind a lock, so concurrency tests exercise our conditions, not moto's
/// races. With IAM enforcement on, moto answers a denied call to a JSON-protocol service
/// (`X-Amz-Target`: Secrets Manager, DynamoDB, SQS) with the XML error of query-protocol
/// services; AWS answers `x-amzn-ErrorType: AccessDeniedException` and a JSON body, which
/// is what the SDK parses, so the answer is rewritten to that. The server stops when stdin
/// closes.
const SCRIPT: &str = r#"
import sys, threading, json, re
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
inner = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def app(environ, start_response):
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
"#;

/// The moto endpoint, starting the server on first use.
pub fn endpoint() -> String {
    MOTO.get_or_init(|| {
        let mut child = Command::new(super::test_python())
            .args(["-c", SCRIPT])
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
        // Keep stdin open for the life of the process: moto stops when it closes.
        std::mem::forget(child.stdin.take());
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: Mutex::new(child),
        }
    })
    .endpoint
    .clone()
}

/// AWS SDK configuration pointing at moto, with test credentials.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// AWS SDK configuration for an endpoint nobody listens on, with a single attempt.
pub async fn unreachable_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:9")
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "t", "t", None, None, "t",
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await
}
