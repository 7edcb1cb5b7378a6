#!/usr/bin/env bash
# Builds colloquy-bench in release mode and runs it; arguments pass through, e.g.
#   bench/run.sh --seconds 15
#   bench/run.sh --retrieval      # search quality and latency of the knowledge base
#   bench/run.sh --help
# Needs PostgreSQL (trust auth for user postgres on 127.0.0.1) and Redis running
# (scripts/services.sh starts both); the bench starts the Kafka broker itself.
# --retrieval needs only PostgreSQL with pgvector, and all-MiniLM-L6-v2 in the models
# directory (scripts/models.sh; COLLOQUY_STATE_DIR or COLLOQUY_MODELS_DIR to point elsewhere).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The colloquy binary too: `--layout split` runs it as child processes.
cargo build --release -p colloquy-bench -p colloquy
# `cargo run` finds the binary wherever the target directory is (CARGO_TARGET_DIR).
exec cargo run --quiet --release -p colloquy-bench -- "$@"
