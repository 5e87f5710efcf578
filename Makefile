# risk-responder: the README's commands, and what CI runs.
.PHONY: run test lint ci

# Local server on 127.0.0.1:3000 with the embedded development defaults.
run:
	cargo run --bin risk-responder -- serve

# The project's tests (what CI runs).
test:
	cargo test --locked --all-targets

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

ci: test lint
