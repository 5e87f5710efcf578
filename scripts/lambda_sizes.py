#!/usr/bin/env python3
"""Sizes of the Lambda artifacts that `make build` made (target/lambda/NAME/bootstrap), checked
against the budget and recorded in BENCHMARKS.md (the block between the lambda-sizes markers;
`scripts/bench_report.py` keeps that block when it rewrites the file).

Usage: lambda_sizes.py NAME...   (exit status 1 if a bootstrap is missing or over budget)
"""

import os
import platform
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAMBDA = ROOT / "target" / "lambda"
BENCHMARKS = ROOT / "BENCHMARKS.md"
BUDGET = 12_000_000  # bytes per arm64 bootstrap (issue 12)
BEGIN, END = "<!-- lambda-sizes -->", "<!-- /lambda-sizes -->"


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()} {platform.machine()}"


def version(*cmd: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def fmt(value) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')


def release_profile() -> str:
    profile = tomllib.loads((ROOT / "Cargo.toml").read_text()).get("profile", {}).get("release", {})
    settings = ", ".join(f"{k} = {fmt(v)}" for k, v in profile.items() if not isinstance(v, dict))
    overrides = ", ".join(f"{name}: opt-level {v.get('opt-level')}"
                          for name, v in profile.get("package", {}).items())
    return settings + (f" (per package: {overrides})" if overrides else "")


def block(rows: list[tuple[str, int]]) -> str:
    lines = [
        BEGIN,
        "## Lambda artifacts (`make build`)",
        "",
        f"Machine: {machine()}; {version('rustc', '--version')}; "
        f"{' '.join(version('cargo-lambda', 'lambda', '--version').split()[:2])}, "
        f"zig {version(sys.executable, '-m', 'ziglang', 'version')}.",
        f"Written by `make build` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"`cargo lambda build --release --arm64`, release profile: {release_profile()}.",
        "",
        f"| arm64 `bootstrap` | bytes | MiB | budget {BUDGET / 1e6:.0f} MB |",
        "|---|---|---|---|",
    ]
    for name, size in rows:
        lines.append(f"| `{name}` | {size:,} | {size / 2**20:.2f} | {'ok' if size <= BUDGET else '**over**'} |")
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    args = sys.argv[1:]
    rows, failed = [], False
    for name in args:
        path = LAMBDA / name / "bootstrap"
        if not path.exists():
            print(f"{path} is missing", file=sys.stderr)
            failed = True
            continue
        rows.append((name, path.stat().st_size))
    text = block(rows)
    print(text)
    current = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if BEGIN in current and END in current:
        current = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, current, flags=re.S)
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    BENCHMARKS.write_text(current)
    over = [name for name, size in rows if size > BUDGET]
    if over:
        print(f"over the {BUDGET:,}-byte budget: {', '.join(over)}", file=sys.stderr)
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
