#!/usr/bin/env bash
# Installs (where missing) and starts (where stopped) what colloquy runs on locally:
# PostgreSQL and Redis from Debian's packages, and Tansu, a Kafka-compatible broker, from
# crates.io. Idempotent: run it twice and the second run changes nothing.
#
#   scripts/services.sh            # all three
#   scripts/services.sh kafka      # only the broker
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${COLLOQUY_STATE_DIR:-$ROOT/.colloquy}"
KAFKA_PORT="${COLLOQUY_KAFKA_PORT:-9092}"
mkdir -p "$STATE"

log() { echo "[services] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 150); do
        port_open "$port" && return 0
        sleep 0.2
    done
    log "$what did not start listening on port $port"; return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    log "installing $* from Debian's packages"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then apt_install postgresql; fi
    if ! port_open 5432; then
        local version
        version="$(ls /etc/postgresql | sort -V | tail -1)"
        log "starting PostgreSQL $version"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_port 5432 PostgreSQL
    fi
    # colloquy's local default is postgres:postgres@127.0.0.1. Servers with trust auth accept
    # it as is; on a fresh Debian install (password auth over TCP) the role gets that password.
    if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -Atc 'select 1' >/dev/null 2>&1; then
        log "giving the postgres role its local development password"
        as_root su postgres -c "psql -qAtc \"ALTER ROLE postgres PASSWORD 'postgres'\"" >/dev/null
    fi
}

ensure_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then apt_install redis-server; fi
    if ! port_open 6379; then
        log "starting Redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
        wait_port 6379 Redis
    fi
}

ensure_kafka() {
    if port_open "$KAFKA_PORT"; then return 0; fi
    # One starter at a time (parallel test binaries may all ask).
    exec 9>"$STATE/kafka.lock"
    flock 9
    if port_open "$KAFKA_PORT"; then return 0; fi
    local tansu
    tansu="$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")"
    if [ ! -x "$tansu" ]; then
        log "installing the Tansu broker from crates.io (about 10 minutes, once)"
        cargo install tansu --locked --features dynostore >&2
    fi
    log "starting Tansu on 127.0.0.1:$KAFKA_PORT (in-memory storage; log: $STATE/tansu.log)"
    nohup "$tansu" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine memory://tansu/ \
        >"$STATE/tansu.log" 2>&1 </dev/null 9>&- &
    echo $! >"$STATE/tansu.pid"
    wait_port "$KAFKA_PORT" Tansu
}

case "${1:-all}" in
    all) ensure_postgres; ensure_redis; ensure_kafka ;;
    postgres) ensure_postgres ;;
    redis) ensure_redis ;;
    kafka) ensure_kafka ;;
    *) echo "usage: $0 [all|postgres|redis|kafka]" >&2; exit 2 ;;
esac
