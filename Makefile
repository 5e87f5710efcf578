# risk-responder: the README's commands, and what CI runs.
.PHONY: run test lint ci

# Local server on 127.0.0.1:3000 with the embedded development defaults.
run:
	cargo run --bin risk-responder -- serve

VENV := .venv

# Python tools the tests drive (independent signer; later moto server).
$(VENV)/ready: requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements-test.txt
	touch $@

# The project's tests (what CI runs).
test: $(VENV)/ready
	RR_TEST_PYTHON=$(CURDIR)/$(VENV)/bin/python cargo test --locked --all-targets

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

ci: test lint
