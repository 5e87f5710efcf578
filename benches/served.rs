//! The served path end to end (issue 14): the release `risk-responder serve` binary as a user
//! runs it, loaded by a real HTTP load generator (wrk, with a Lua script that makes new
//! notification ids in every request), over a SQLite ledger that already holds a million
//! rows, with its local worker running against the in-process Graph simulator. HTTP in,
//! ledger and queue out. Also measures the RSA-OAEP floor of a rich batch on this machine.
//!
//! Run by `make bench` (which installs wrk first); writes `target/bench/served.md`, which
//! `scripts/bench_report.py` puts into BENCHMARKS.md. Knobs: `RR_BENCH_SECONDS` (per
//! workload, default 10), `RR_BENCH_LEDGER_ROWS` (default 1,000,000).

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::cipher::{AES_256, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{APP_ID, CLIENT_STATE, ROOT, TENANT, read};
use serde_json::json;

const SUBSCRIPTION: &str = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07";
const CERT_ID: &str = "bench-rsa-2048";
/// Distinct rich bodies the Lua script cycles through (each with 100 distinct data keys).
const RICH_POOL: usize = 16;

/// The Node.js sample's figures on this 2-core machine (issue 14), p50 / p99 in ms.
const NODE: &[(&str, &str)] = &[
    ("handshake", "1.6 / 12"),
    ("basic1_c8", "4.3 / 26"),
    // Issue 27 (the Node sample beside main on its machine, main's worker failing).
    ("basic1_c8_unreachable", "– / 23.2"),
    ("basic100_c1", "39–46 / 97"),
    ("basic100_c8", "178 / 271"),
    ("rich100_c8", "1,253–1,607 / 1,749"),
];

fn main() {
    // `cargo test --all-targets` runs bench binaries too, unoptimised: the measurement is made
    // by `cargo bench` (which passes --bench) only; a test run checks the wrk output parser.
    if !std::env::args().any(|a| a == "--bench") {
        check_parser();
        println!("served: a benchmark; run it with `make bench` (or `cargo bench --bench served`)");
        return;
    }
    let seconds: u64 = env_or("RR_BENCH_SECONDS", 10);
    let rows: usize = env_or("RR_BENCH_LEDGER_ROWS", 1_000_000);
    let wrk = which("wrk").unwrap_or_else(|| {
        eprintln!(
            "served bench: wrk not found on PATH (`make bench` installs it: apt-get install wrk)"
        );
        std::process::exit(2)
    });
    let dir = Path::new(ROOT).join("target/bench/served");
    std::fs::create_dir_all(&dir).unwrap();

    // Keys: the subscription's RSA-2048 decryption key (as Graph subscriptions use), the
    // token signing key of the test key set.
    let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = private.as_der().unwrap();
    let pem = pem("PRIVATE KEY", pkcs8.as_ref());
    let public = OaepPublicEncryptingKey::new(private.public_key()).unwrap();
    let secrets_file = dir.join("secrets.json");
    let mut secrets: serde_json::Value =
        serde_json::from_str(&read("config/local-secrets.json")).unwrap();
    secrets["decryption_keys"] = json!({ CERT_ID: pem });
    std::fs::write(&secrets_file, secrets.to_string()).unwrap();

    // The floor: opening 100 notifications (RSA-OAEP unwrap, HMAC, AES) on every core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opener = OaepPrivateDecryptingKey::new(private.clone()).unwrap();
    let floor_100 = crypto_floor(&opener, &public, cores);

    // The ledger: a million rows, made once and kept in target/bench/served.
    let ledger = dir.join(format!("ledger-{rows}.sqlite"));
    prefill_ledger(&ledger, rows);
    // Runs add to the same file: it holds at least `rows` rows.
    let rows_before = ledger_rows(&ledger);

    // JWKS and Graph (for the worker) in this process, on a runtime of their own, at the
    // lowest CPU priority: they stand in for Microsoft's servers, whose work is not ours to
    // measure, and take only what the server leaves.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| {
            // SAFETY: setpriority has no memory effects; `who` 0 is the calling thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        })
        .enable_all()
        .build()
        .unwrap();
    let (jwks_url, simulator) = runtime.block_on(async {
        // The notifications' subscription, recorded in its tenant as `subscriptions create`
        // records it: the webhook keeps notifications only from recorded subscriptions.
        risk_responder::ledger::Ledger::new(std::sync::Arc::new(
            risk_responder::ledger::sqlite::SqliteStore::open(&ledger).unwrap(),
        ))
        .record_subscriptions(TENANT, &[SUBSCRIPTION])
        .await
        .unwrap();
        let jwks_url = common::serve_jwks().await;
        let simulator = risk_responder::demo::simulator::start_with(Default::default())
            .await
            .unwrap();
        (jwks_url, simulator)
    });

    let port = free_port();
    let mut serve = start_serve(
        port,
        &dir.join("serve.log"),
        &[
            ("RR_SECRETS_FILE", secrets_file.to_string_lossy().as_ref()),
            ("RR_LEDGER_PATH", ledger.to_string_lossy().as_ref()),
            ("RR_JWKS_URL", &jwks_url),
            ("RR_GRAPH_BASE_URL", &simulator.graph_url()),
            ("RR_LOGIN_AUTHORITY", &simulator.authority()),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");

    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let token = common::validation_token(4 * 3600);
    let workloads: Vec<(&str, &str, usize, String)> = vec![
        (
            "handshake",
            "handshake, 8 concurrent",
            8,
            handshake_script(),
        ),
        (
            "basic1_c8",
            "1 basic notification, 8 concurrent",
            8,
            basic_script(1, &format!("{nonce}a")),
        ),
        (
            "basic100_c1",
            "100 basic notifications, 1 at a time",
            1,
            basic_script(100, &format!("{nonce}b")),
        ),
        (
            "basic100_c8",
            "100 basic notifications, 8 concurrent",
            8,
            basic_script(100, &format!("{nonce}c")),
        ),
        (
            "rich100_c1",
            "100 rich (RSA-2048) notifications, 1 at a time",
            1,
            rich_script(&public, &token, &format!("{nonce}d")),
        ),
        (
            "rich100_c8",
            "100 rich (RSA-2048) notifications, 8 concurrent",
            8,
            rich_script(&public, &token, &format!("{nonce}e")),
        ),
    ];

    let mut results = Vec::new();
    for (key, label, connections, script) in &workloads {
        let script_path = dir.join(format!("{key}.lua"));
        std::fs::write(&script_path, script).unwrap();
        // Warm-up (connections, caches, the key set), then the measured run.
        let _ = run_wrk(&wrk, &base, &script_path, *connections, 2);
        let result = run_wrk(&wrk, &base, &script_path, *connections, seconds);
        eprintln!(
            "served bench: {label}: p50 {:.2} ms, p99 {:.2} ms, {:.1} req/s, {} non-2xx",
            result.p50_ms, result.p99_ms, result.requests_per_s, result.non_2xx
        );
        results.push((*key, *label, *connections, result));
    }
    let rss = peak_rss_mib(serve.0.id());
    let rows_after = ledger_rows(&ledger);
    serve.stop();
    drop(simulator);

    // The worker struggling: Graph and the token endpoint refuse every connection (a port
    // nothing listens on), so every signal kept fails its work and waits for its retry, while
    // intake answers on the same two cores.
    // The runs above left gigabytes of write-ahead log for the kernel to write back: flushed
    // first, so this run measures the server, not the earlier runs' writeback.
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(5));
    let struggling_ledger = dir.join("ledger-unreachable.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", struggling_ledger.display()));
    }
    runtime.block_on(async {
        risk_responder::ledger::Ledger::new(std::sync::Arc::new(
            risk_responder::ledger::sqlite::SqliteStore::open(&struggling_ledger).unwrap(),
        ))
        .record_subscriptions(TENANT, &[SUBSCRIPTION])
        .await
        .unwrap();
    });
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let port = free_port();
    let mut struggling = start_serve(
        port,
        &dir.join("serve-unreachable.log"),
        &[
            ("RR_SECRETS_FILE", secrets_file.to_string_lossy().as_ref()),
            (
                "RR_LEDGER_PATH",
                struggling_ledger.to_string_lossy().as_ref(),
            ),
            ("RR_JWKS_URL", &jwks_url),
            ("RR_GRAPH_BASE_URL", &format!("{nowhere}/v1.0")),
            ("RR_LOGIN_AUTHORITY", &nowhere),
        ],
    );
    let script_path = dir.join("basic1_c8_unreachable.lua");
    std::fs::write(&script_path, basic_script(1, &format!("{nonce}f"))).unwrap();
    let _ = run_wrk(
        &wrk,
        &format!("http://127.0.0.1:{port}"),
        &script_path,
        8,
        2,
    );
    let result = run_wrk(
        &wrk,
        &format!("http://127.0.0.1:{port}"),
        &script_path,
        8,
        seconds,
    );
    eprintln!(
        "served bench: Graph unreachable: p50 {:.2} ms, p99 {:.2} ms, {:.1} req/s, {} non-2xx",
        result.p50_ms, result.p99_ms, result.requests_per_s, result.non_2xx
    );
    results.push((
        "basic1_c8_unreachable",
        "1 basic notification, 8 concurrent, Graph and its token endpoint unreachable",
        8,
        result,
    ));
    struggling.stop();

    let report = report(
        &results,
        floor_100,
        cores,
        (rows, rows_before, rows_after),
        rss,
        seconds,
    );
    std::fs::write(Path::new(ROOT).join("target/bench/served.md"), &report).unwrap();
    println!("{report}");
}

/// Starts the release `serve` on `port` with `env` (and the bench's fixed settings), logging
/// to `log`; returns once it answers its health check.
fn start_serve(port: u16, log: &Path, env: &[(&str, &str)]) -> ServeProcess {
    let log = std::fs::File::create(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_risk-responder"));
    command
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("RR_GRAPH_CLIENT_ID", APP_ID)
        .env("RR_ALLOWED_TENANTS", TENANT)
        .env("RR_LOCAL_QUEUE_CAPACITY", "1000000")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (name, value) in env {
        command.env(name, value);
    }
    let serve = ServeProcess(command.spawn().unwrap());
    wait_healthy(port);
    serve
}

/// Stops the server when the bench ends, however it ends.
struct ServeProcess(Child);

impl ServeProcess {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_healthy(port: u16) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ =
                stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "risk-responder serve did not answer /health within 60 s (see target/bench/served/serve.log)"
    );
}

/// Signal records as intake writes them, `rows` of them, in one file made once.
fn prefill_ledger(path: &Path, rows: usize) {
    let done = path.with_extension("ready");
    if done.exists() {
        return;
    }
    let _ = std::fs::remove_file(path);
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The store makes the schema and indexes, exactly as the server would.
    rt.block_on(async {
        risk_responder::ledger::sqlite::SqliteStore::open(path).unwrap();
    });
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO items (key, doc, version, updated_at, expires_at) VALUES (?1, ?2, 1, ?3, ?4)",
            )
            .unwrap();
        for i in 0..rows {
            let id = format!(
                "{:032x}",
                (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            );
            let doc = json!({
                "signal": {
                    "event_id": id, "tenant_id": TENANT, "source": "graph_user",
                    "subject": {"type": "user", "id": format!("6e7b768e-07e2-4810-8459-{:012}", i % 50_000)},
                    "risk_level": "unknown", "detected_at": "2026-11-29T10:00:00Z",
                    "source_id": format!("prefill-{i}"),
                },
                "received_at": "2026-11-29T10:00:00Z",
                "disposition": "Identity Protection reports no risk for the user: no case",
            })
            .to_string();
            insert
                .execute(rusqlite::params![
                    format!("signal#{id}"),
                    doc,
                    now - (rows - i) as i64,
                    now + 30 * 24 * 3600
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    std::fs::write(&done, rows.to_string()).unwrap();
    eprintln!(
        "served bench: ledger of {rows} rows made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn ledger_rows(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .and_then(|c| c.query_row("SELECT count(*) FROM items", [], |r| r.get(0)))
        .unwrap_or(-1)
}

/// Graph's rich-notification encryption of `plaintext` for `public` (a fresh data key).
fn encrypt_content(public: &OaepPublicEncryptingKey, plaintext: &[u8]) -> serde_json::Value {
    let rng = SystemRandom::new();
    let mut key = [0u8; 32];
    rng.fill(&mut key).unwrap();
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    let aes = PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, &key).unwrap())
        .unwrap();
    let mut data = plaintext.to_vec();
    aes.less_safe_encrypt(&mut data, EncryptionContext::Iv128(FixedLength::from(iv)))
        .unwrap();
    let signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &data);
    let mut wrapped = vec![0u8; public.ciphertext_size()];
    let wrapped = public
        .encrypt(&OAEP_SHA1_MGF1SHA1, &key, &mut wrapped, None)
        .unwrap();
    json!({
        "data": STANDARD.encode(&data),
        "dataKey": STANDARD.encode(wrapped),
        "dataSignature": STANDARD.encode(signature.as_ref()),
        "encryptionCertificateId": CERT_ID,
        "encryptionCertificateThumbprint": "0000000000000000000000000000000000000000",
    })
}

/// Opening 100 notifications with every core: the least time a rich batch of 100 can take.
fn crypto_floor(
    opener: &OaepPrivateDecryptingKey,
    public: &OaepPublicEncryptingKey,
    cores: usize,
) -> Duration {
    let contents: Vec<_> = (0..100)
        .map(|i| encrypt_content(public, format!("{{\"id\":\"{i}\"}}").as_bytes()))
        .collect();
    let contents: Vec<risk_responder::ingress::decrypt::EncryptedContent> = contents
        .into_iter()
        .map(|c| serde_json::from_value(c).unwrap())
        .collect();
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for share in contents.chunks(contents.len().div_ceil(cores)) {
                scope.spawn(move || {
                    for content in share {
                        risk_responder::ingress::decrypt::decrypt_content(content, opener).unwrap();
                    }
                });
            }
        });
        best = best.min(started.elapsed());
    }
    best
}

fn handshake_script() -> String {
    r#"wrk.method = "POST"
wrk.path = "/graph/notifications?validationToken=Validation%3A%20Testing%20client%20application%20reachability%20for%20subscription%20Request-Id%3A%20a1b2c3"
wrk.headers["Content-Type"] = "text/plain; charset=utf-8"
"#
    .to_owned()
}

/// A Lua `parts` table: the body split where each notification's id goes.
fn lua_parts(body: &str, marker: &str) -> String {
    let mut out = String::from("{");
    for part in body.split(marker) {
        assert!(!part.contains("]==]"));
        let _ = write!(out, "[==[{part}]==],");
    }
    out.push('}');
    out
}

const LUA_REQUEST: &str = r#"
local counter = 0
local prefix = ""
function setup(thread)
  next_tid = (next_tid or 0) + 1
  thread:set("tid", next_tid)
end
function init(args)
  prefix = nonce .. "-" .. tostring(tid or 0) .. "-"
end
function request()
  counter = counter + 1
  local parts = pools[(counter % #pools) + 1]
  local p = prefix .. counter .. "-"
  local t = {}
  for i = 1, #parts - 1 do
    t[#t + 1] = parts[i]
    t[#t + 1] = p .. i
  end
  t[#t + 1] = parts[#parts]
  return wrk.format("POST", "/graph/notifications", {["Content-Type"] = "application/json"}, table.concat(t))
end
"#;

fn basic_script(n: usize, nonce: &str) -> String {
    let value: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "id": "@@ID@@", "subscriptionId": SUBSCRIPTION,
                "subscriptionExpirationDateTime": "2026-12-24T06:00:00.000Z", "clientState": CLIENT_STATE,
                "changeType": "updated", "resource": format!("Users/6e7b768e-07e2-4810-8459-{i:012}"),
                "tenantId": TENANT,
                "resourceData": {"@odata.type": "#Microsoft.Graph.User", "@odata.id": format!("Users/6e7b768e-07e2-4810-8459-{i:012}"), "id": format!("6e7b768e-07e2-4810-8459-{i:012}"), "organizationId": TENANT}
            })
        })
        .collect();
    let body = json!({ "value": value }).to_string();
    format!(
        "nonce = \"{nonce}\"\npools = {{ {} }}\n{LUA_REQUEST}",
        lua_parts(&body, "@@ID@@")
    )
}

fn rich_script(public: &OaepPublicEncryptingKey, token: &str, nonce: &str) -> String {
    let mut pools = String::new();
    for pool in 0..RICH_POOL {
        let value: Vec<_> = (0..100)
            .map(|i| {
                let user = format!("6e7b768e-07e2-4810-8459-{:012}", pool * 100 + i);
                let resource = json!({
                    "@odata.type": "#Microsoft.Graph.User", "id": user,
                    "displayName": "Bench User", "accountEnabled": true,
                });
                json!({
                    "id": "@@ID@@", "subscriptionId": SUBSCRIPTION,
                    "subscriptionExpirationDateTime": "2026-12-24T06:00:00.000Z", "clientState": CLIENT_STATE,
                    "changeType": "updated", "resource": format!("Users/{user}"), "tenantId": TENANT,
                    "resourceData": {"@odata.type": "#Microsoft.Graph.User", "id": user},
                    "encryptedContent": encrypt_content(public, resource.to_string().as_bytes()),
                })
            })
            .collect();
        let body = json!({ "value": value, "validationTokens": [token] }).to_string();
        let _ = writeln!(pools, "{},", lua_parts(&body, "@@ID@@"));
    }
    format!("nonce = \"{nonce}\"\npools = {{ {pools} }}\n{LUA_REQUEST}")
}

#[derive(Default)]
struct WrkResult {
    p50_ms: f64,
    p99_ms: f64,
    requests_per_s: f64,
    requests: u64,
    non_2xx: u64,
}

fn run_wrk(wrk: &Path, base: &str, script: &Path, connections: usize, seconds: u64) -> WrkResult {
    let output = Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(script)
        .arg(base)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> WrkResult {
    let ms = |value: &str| -> f64 {
        let (number, unit) = value.split_at(
            value
                .find(|c: char| c.is_alphabetic())
                .unwrap_or(value.len()),
        );
        let n: f64 = number.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => f64::NAN,
        }
    };
    let mut result = WrkResult::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => result.p50_ms = ms(value),
            ["99%", value] => result.p99_ms = ms(value),
            ["Requests/sec:", value] => result.requests_per_s = value.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", value] => {
                result.non_2xx = value.parse().unwrap_or(0)
            }
            [count, "requests", "in", ..] => result.requests = count.parse().unwrap_or(0),
            _ => {}
        }
    }
    result
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = Command::new("uname")
        .arg("-sr")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let wrk = Command::new("wrk")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    format!(
        "{cpu}, {} cores, {kernel}; {wrk}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}

fn report(
    results: &[(&str, &str, usize, WrkResult)],
    floor_100: Duration,
    cores: usize,
    (rows, rows_before, rows_after): (usize, i64, i64),
    rss: f64,
    seconds: u64,
) -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut out = String::new();
    let _ = writeln!(out, "## The served path (`benches/served.rs`)\n");
    let _ = writeln!(
        out,
        "Machine: {}. Written by `make bench` on {}-{:02}-{:02} {:02}:{:02} UTC.",
        machine(),
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute()
    );
    let _ = writeln!(
        out,
        "The release `risk-responder serve` (SQLite ledger that held {rows_before} rows at the start and {rows_after} at the end, \
         local worker on at its nice 10, Graph played by the in-process simulator at nice 19), loaded by wrk (1 thread, closed loop, \
         {seconds} s per workload after a 2 s warm-up) with a Lua script that gives every notification a new id, \
         so every request keeps new events: HTTP in, ledger and queue out. Both share the machine's {cores} cores. \
         Node sample: the figures of issue 14 on the same kind of machine (not rerun here).\n"
    );
    let _ = writeln!(
        out,
        "| workload | p50 | p99 | requests/s | notifications/s | non-2xx | Node sample p50 / p99 (ms) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (key, label, _, r) in results {
        let per_request = if key.starts_with("basic1_c8") {
            1.0
        } else if *key == "handshake" {
            0.0
        } else {
            100.0
        };
        let node = NODE.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v);
        let _ = writeln!(
            out,
            "| {label} | {:.2} ms | {:.2} ms | {:.0} | {} | {} | {node} |",
            r.p50_ms,
            r.p99_ms,
            r.requests_per_s,
            if per_request > 0.0 {
                format!("{:.0}", r.requests_per_s * per_request)
            } else {
                "–".into()
            },
            r.non_2xx
        );
    }
    let floor_ms = floor_100.as_secs_f64() * 1000.0;
    let get = |key: &str| results.iter().find(|(k, ..)| *k == key).map(|(.., r)| r);
    let _ = writeln!(
        out,
        "\nRSA-OAEP floor: opening 100 notifications (RSA-2048 OAEP-SHA1 unwrap, HMAC-SHA256, AES-256-CBC) \
         on all {cores} cores takes **{floor_ms:.1} ms** (best of 20). With 8 requests in flight the cores \
         are shared, so a batch's least latency is 8 × that = {:.0} ms, and the most the machine can open is \
         {:.0} notifications/s.",
        floor_ms * 8.0,
        100.0 / floor_100.as_secs_f64()
    );
    let mut goals = Vec::new();
    let mut goal = |name: String, value: f64, limit: f64| {
        goals.push(format!(
            "| {name} | {value:.2} | {limit} | {} |",
            if value <= limit { "met" } else { "**missed**" }
        ));
    };
    if let Some(r) = get("basic1_c8") {
        goal("1 basic, c8: p50 ms".into(), r.p50_ms, 1.4);
        goal("1 basic, c8: p99 ms".into(), r.p99_ms, 8.0);
    }
    if let Some(r) = get("basic1_c8_unreachable") {
        // Issue 27: at least 3x below the Node sample's p99 (23.2 ms in that issue's run).
        goal(
            "1 basic, c8, Graph unreachable: p99 ms".into(),
            r.p99_ms,
            7.7,
        );
    }
    if let Some(r) = get("basic100_c1") {
        goal(
            format!("100 basic, c1, ledger ≥ {rows} rows: p50 ms"),
            r.p50_ms,
            13.0,
        );
    }
    if let Some(r) = get("basic100_c8") {
        goal(
            format!("100 basic, c8, ledger ≥ {rows} rows: p99 ms"),
            r.p99_ms,
            90.0,
        );
    }
    if let Some(r) = get("rich100_c8") {
        goal("100 rich, c8: p50 ms".into(), r.p50_ms, 420.0);
        goal(
            "100 rich, c8: p50 / (8 × floor)".into(),
            r.p50_ms / (floor_ms * 8.0),
            1.5,
        );
        goal(
            "100 rich, c8: floor rate / served rate".into(),
            (100.0 / floor_100.as_secs_f64()) / (r.requests_per_s * 100.0),
            1.5,
        );
    }
    let _ = writeln!(
        out,
        "\n| goal (issues 14 and 27) | measured | at most | |\n|---|---|---|---|"
    );
    for line in goals {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "\nPeak RSS of `serve` over the whole run: {rss:.1} MiB."
    );
    out
}

/// The parser against wrk 4.1's own output.
fn check_parser() {
    let sample = "Running 10s test @ http://127.0.0.1:3000
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05ms  412.11us  12.03ms   91.02%
    Req/Sec     7.71k   301.25     8.12k    80.00%
  Latency Distribution
     50%  987.00us
     75%    1.14ms
     90%    1.37ms
     99%    2.64ms
  76742 requests in 10.00s, 6.31MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   7673.91
Transfer/sec:    646.39KB
";
    let r = parse_wrk(sample);
    assert!((r.p50_ms - 0.987).abs() < 1e-9, "{}", r.p50_ms);
    assert!((r.p99_ms - 2.64).abs() < 1e-9);
    assert!((r.requests_per_s - 7673.91).abs() < 1e-9);
    assert_eq!(r.requests, 76742);
    assert_eq!(r.non_2xx, 3);
    let parts = lua_parts(r#"{"value":[{"id":"@@ID@@"},{"id":"@@ID@@"}]}"#, "@@ID@@");
    assert_eq!(parts.matches("[==[").count(), 3);
}
