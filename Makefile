# risk-responder: the README's commands, and what CI runs.
.PHONY: run test lint ci build deploy bench

VENV := .venv
PYTHON := $(CURDIR)/$(VENV)/bin/python
# Tools installed into the venv (cargo-lambda, zig, cargo-audit) come first on PATH.
TOOLS_PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
LAMBDA_BINS := webhook worker renewer

# Local server on 127.0.0.1:3000 with the embedded development defaults.
run:
	cargo run --bin risk-responder -- serve

# Python tools the tests drive: moto server (AWS stand-in), the standardwebhooks signer, cfn-lint.
$(VENV)/ready: requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements-test.txt
	touch $@

# cargo-lambda and zig (PyPI, pinned) and the arm64 standard library.
$(VENV)/build-tools: requirements-build.txt $(VENV)/ready
	$(VENV)/bin/python -m pip install --quiet -r requirements-build.txt
	if command -v rustup >/dev/null; then rustup target add aarch64-unknown-linux-gnu; fi
	touch $@

# The project's tests (what CI runs).
test: $(VENV)/ready
	RR_TEST_PYTHON=$(PYTHON) cargo test --locked --all-targets

lint: $(VENV)/ready
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	$(VENV)/bin/cfn-lint infra/template.yaml

ci: test lint

# Criterion benches, then cold start, RSS and binary sizes; writes BENCHMARKS.md.
bench:
	cargo bench --locked --bench pipeline
	cargo build --locked --release --bins
	python3 scripts/bench_report.py

# Lambda artifacts: target/lambda/{webhook,worker,renewer}/bootstrap (arm64, release profile),
# then their sizes against the 12 MB budget, recorded in BENCHMARKS.md.
build: $(VENV)/build-tools
	PATH=$(TOOLS_PATH) cargo lambda build --locked --release --arm64 $(addprefix --bin ,$(LAMBDA_BINS))
	PATH=$(TOOLS_PATH) $(PYTHON) scripts/lambda_sizes.py $(LAMBDA_BINS)

# Build with SAM's cargo-lambda builder and deploy (needs the AWS SAM CLI and credentials).
deploy: $(VENV)/build-tools
	PATH=$(TOOLS_PATH) sam build --template-file infra/template.yaml --beta-features
	sam deploy --guided
