# risk-responder: the README's commands, and what CI runs.
.PHONY: run test lint ci build deploy bench

VENV := .venv

# Local server on 127.0.0.1:3000 with the embedded development defaults.
run:
	cargo run --bin risk-responder -- serve

# Python tools the tests drive: moto server (AWS stand-in), the standardwebhooks signer, cfn-lint.
$(VENV)/ready: requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements-test.txt
	touch $@

# The project's tests (what CI runs).
test: $(VENV)/ready
	RR_TEST_PYTHON=$(CURDIR)/$(VENV)/bin/python cargo test --locked --all-targets

lint: $(VENV)/ready
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	$(VENV)/bin/cfn-lint infra/template.yaml

ci: test lint

# Criterion benches, then cold start, RSS and binary sizes; writes BENCHMARKS.md.
bench:
	cargo bench --locked --bench pipeline
	cargo bench --locked --bench burst
	cargo build --locked --release --bins
	python3 scripts/bench_report.py

# Lambda artifacts (needs cargo-lambda and zig): target/lambda/{webhook,worker,renewer}/bootstrap
build:
	cargo lambda build --release --arm64

# Build with SAM's cargo-lambda builder and deploy (needs the AWS SAM CLI and credentials).
deploy:
	sam build --template-file infra/template.yaml --beta-features
	sam deploy --guided
