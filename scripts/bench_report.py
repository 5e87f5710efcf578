#!/usr/bin/env python3
"""Measures cold start (process start to ready), peak RSS and release binary sizes, reads the
criterion estimates of `cargo bench --bench pipeline`, and writes BENCHMARKS.md.
Run by `make bench` after the benches; needs release binaries in target/release."""

import json
import os
import re
import platform
import socket
import statistics
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
CRITERION = ROOT / "target" / "criterion"
BINARIES = ["risk-responder", "webhook", "worker", "renewer"]
RUNS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def batch(n: int) -> bytes:
    value = [
        {
            "id": f"n-{i}", "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "clientState": "local-dev-client-state-change-me", "changeType": "updated",
            "resource": f"Users/6e7b768e-07e2-4810-8459-{i:012}",
            "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        }
        for i in range(n)
    ]
    return json.dumps({"value": value}).encode()


def cold_start(tmp: Path):
    """Start `serve` RUNS times; time to the first 200 from /health; RSS at ready and after load."""
    ready_ms, rss_ready, rss_loaded = [], [], []
    for run in range(RUNS):
        port = free_port()
        env = dict(os.environ, RUST_LOG="error", RR_LEDGER_PATH=str(tmp / f"ledger-{run}.sqlite"),
                   RR_GRAPH_BASE_URL="http://127.0.0.1:9/v1.0", RR_LOGIN_AUTHORITY="http://127.0.0.1:9")
        start = time.perf_counter()
        proc = subprocess.Popen([str(RELEASE / "risk-responder"), "serve", "--bind", f"127.0.0.1:{port}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.0005)
                if time.perf_counter() - start > 10:
                    raise RuntimeError("server did not become ready")
            ready_ms.append((time.perf_counter() - start) * 1000)
            rss_ready.append(peak_rss_kib(proc.pid))
            if run == 0:
                body = batch(100)
                for _ in range(100):
                    assert post(f"http://127.0.0.1:{port}/graph/notifications", body) == 202
                rss_loaded.append(peak_rss_kib(proc.pid))
        finally:
            proc.terminate()
            proc.wait()
    return ready_ms, rss_ready, rss_loaded


def estimate_ns(group: str, name: str) -> float:
    data = json.loads((CRITERION / group / name / "new" / "estimates.json").read_text())
    return data["median"]["point_estimate"]


def fmt_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def main():
    tmp = ROOT / "target" / "bench-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    ready_ms, rss_ready, rss_loaded = cold_start(tmp)
    # Hand-written sections of the current file that a rewrite keeps.
    previous = (ROOT / "BENCHMARKS.md").read_text() if (ROOT / "BENCHMARKS.md").exists() else ""
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()

    basic = estimate_ns("ingress", "graph_basic_batch_100")
    rich = estimate_ns("ingress", "graph_rich_batch_100")
    sentinel = estimate_ns("ingress", "sentinel_alert_hmac")
    replay = estimate_ns("replay", "events_dir_report_only")
    rsa = estimate_ns("crypto", "rsa4096_oaep_decrypt")
    jwt = estimate_ns("crypto", "jwt_rs256_verify")
    hmac = estimate_ns("crypto", "hmac_sha256_content")
    floor = 100 * (rsa + hmac) + jwt  # 100 key unwraps and MACs, one token, per rich batch
    events = len(list((ROOT / "events").rglob("*.json")))

    lines = [
        "# Benchmarks",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()} {platform.machine()}; {rustc}.",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Medians of criterion runs.",
        "",
        "| measurement | median | per item |",
        "|---|---|---|",
        f"| Graph batch of 100 basic notifications (parse, clientState, tenant, classify) | {fmt_ns(basic)} | {fmt_ns(basic / 100)} |",
        f"| Graph batch of 100 rich notifications (1 validation token, 100 RSA-4096 unwraps, HMAC, AES) | {fmt_ns(rich)} | {fmt_ns(rich / 100)} |",
        f"| Sentinel alert: sign + verify HMAC, parse | {fmt_ns(sentinel)} | |",
        f"| Replay of events/ ({events} files) report-only, against the Graph stand-in on loopback | {fmt_ns(replay)} | {fmt_ns(replay / events)} |",
        f"| crypto floor: RSA-4096 OAEP-SHA1 decrypt | {fmt_ns(rsa)} | |",
        f"| crypto floor: JWT RS256 verify | {fmt_ns(jwt)} | |",
        f"| crypto floor: HMAC-SHA256 of the content | {fmt_ns(hmac)} | |",
        "",
        f"Rich batch vs its one-core crypto floor (100 × (RSA + HMAC) + 1 JWT = {fmt_ns(floor)}): **{rich / floor:.2f}×**;",
        f"the batch's unwraps are spread over the machine's {os.cpu_count()} cores, so this is below 1 (the",
        "served bench below compares with the floor on all cores).",
        "",
        "These criterion figures are the ingress checks alone, in process: no HTTP, no ledger, no",
        "queue. What a sender sees is the served path, below.",
        "",
        "| process | value |",
        "|---|---|",
        f"| cold start, `risk-responder serve` exec to first 200 on /health ({RUNS} runs) | median {statistics.median(ready_ms):.1f} ms, max {max(ready_ms):.1f} ms |",
        f"| peak RSS at ready | median {statistics.median(rss_ready) / 1024:.1f} MiB |",
        f"| peak RSS after 100 batches of 100 notifications (inline queue, SQLite ledger) | {rss_loaded[0] / 1024:.1f} MiB |",
    ]
    release = tomllib.loads((ROOT / "Cargo.toml").read_text()).get("profile", {}).get("release", {})
    profile = ", ".join(f"{k} {v}".lower() for k, v in release.items() if not isinstance(v, dict))
    for name in BINARIES:
        path = RELEASE / name
        if path.exists():
            lines.append(f"| release binary `{name}` ({platform.machine()}; {profile}) | {path.stat().st_size / 1024 / 1024:.1f} MiB |")
    lines += [
        "",
        "Cold start is measured on the local server, which builds the same state as the webhook's",
        "Lambda cold start (configuration, secrets, ledger, router); Lambda's own init is not",
        "measured here. The arm64 Lambda artifacts are measured by `make build` (below).",
        "",
    ]
    # `cargo bench --bench served` writes its own section (issue 14: the served path under wrk).
    served = ROOT / "target" / "bench" / "served.md"
    if served.exists():
        lines += [served.read_text().rstrip(), ""]
    served_notes = re.search(r"<!-- served-notes -->.*?<!-- /served-notes -->", previous, re.S)
    if served_notes:
        lines += [served_notes.group(0), ""]
    # Keep what `make build` recorded (scripts/lambda_sizes.py): arm64 Lambda artifact sizes.
    # The burst (issue 10): what `cargo bench --bench burst` just wrote, or else the section
    # BENCHMARKS.md already has, so that this rewrite never drops it.
    burst = ROOT / "target" / "bench" / "burst.md"
    if burst.exists():
        lines += [burst.read_text().rstrip(), ""]
    else:
        kept_burst = re.search(r"<!-- burst -->.*?<!-- /burst -->", previous, re.S)
        if kept_burst:
            lines += [kept_burst.group(0), ""]
    # Hand-written notes on the burst's history stay as they are.
    notes = re.search(r"<!-- burst-notes -->.*?<!-- /burst-notes -->", previous, re.S)
    if notes:
        lines += [notes.group(0), ""]
    kept = re.search(r"<!-- lambda-sizes -->.*?<!-- /lambda-sizes -->.*", previous, re.S)
    if kept:
        lines += [kept.group(0).rstrip("\n"), ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
