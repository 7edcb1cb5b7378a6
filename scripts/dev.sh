#!/usr/bin/env bash
# Starts everything colloquy needs on local defaults and runs it (API + relay + projectors
# in one process on http://127.0.0.1:8080). Installs what is missing; idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/services.sh all
# The database itself; tables come from the migrations the binary applies at start-up.
export PGPASSWORD="${PGPASSWORD:-postgres}"
if ! psql -h 127.0.0.1 -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'colloquy'" | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE colloquy" >/dev/null
fi
cargo build --release --bin colloquy
./target/release/colloquy migrate
./target/release/colloquy topics
exec ./target/release/colloquy dev "$@"
