#!/usr/bin/env bash
# Starts everything colloquy needs on local defaults and runs it (API + relay + projectors
# + the assistant in one process on http://127.0.0.1:8080). Installs what is missing; idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/services.sh all
# The local chat model answers when no provider is configured (fetched once, checked).
bash scripts/models.sh
cargo build --release --bin colloquy
# Creates the database if missing and applies the migrations.
./target/release/colloquy migrate
./target/release/colloquy topics
exec ./target/release/colloquy dev "$@"
