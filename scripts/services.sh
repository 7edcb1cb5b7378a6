#!/usr/bin/env bash
# Installs (where missing) and starts (where stopped) what colloquy runs on locally:
# PostgreSQL and Redis from Debian's packages, and Tansu, a Kafka-compatible broker, from
# crates.io (with SQLite storage in the data directory, so its topics survive a restart).
# Idempotent: run it twice and the second run changes nothing.
#
#   scripts/services.sh            # all three
#   scripts/services.sh kafka      # only the broker
#   scripts/services.sh stop-kafka # stop the broker this data directory started
#   scripts/services.sh tansu-path # print the broker binary's path (installing it if missing)
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

# Tansu with its SQLite storage, so a broker restart loses nothing. Installed once, outside
# any checkout, into a folder named after the version and build (an older install elsewhere
# on PATH is left alone and not used). Built with panic=abort: Tansu 0.6's SQLite engine
# panics inside its storage task on some requests about a partition it does not hold (a
# topic just deleted or not yet created: ListOffsets, an idempotent produce; "more or less
# than one row"), which leaves the process up but unable to serve anything;
# aborting instead lets the supervisor below restart it at once, losing nothing.
TANSU_VERSION=0.6.0
TANSU_ROOT="${COLLOQUY_TOOLS_DIR:-$HOME/.local/share/colloquy}/tansu-$TANSU_VERSION-libsql-abort"
TANSU="$TANSU_ROOT/bin/tansu"

# A broker started by an earlier version of this script keeps its topics only in memory:
# stop it, so the durable one takes its place (what it held is gone either way at its next
# restart; colloquy re-creates its topics at start-up and the relay re-sends from the event
# store only what it has not yet published, so run `colloquy verify` after migrating).
stop_memory_broker() {
    local pid
    for pid in $(pgrep -f "tansu broker" || true); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "memory://"; then
            log "stopping the in-memory Tansu broker (pid $pid) to restart it with SQLite storage"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
    for _ in $(seq 1 100); do port_open "$KAFKA_PORT" || return 0; sleep 0.1; done
}

install_tansu() {
    if [ ! -x "$TANSU" ]; then
        log "installing the Tansu broker $TANSU_VERSION with SQLite storage from crates.io (about 15 minutes, once)"
        CARGO_PROFILE_RELEASE_PANIC=abort \
            cargo install tansu --version "$TANSU_VERSION" --locked --features libsql --root "$TANSU_ROOT" >&2
    fi
}

ensure_kafka() {
    # One starter at a time (parallel test binaries may all ask).
    exec 9>"$STATE/kafka.lock"
    flock 9
    install_tansu
    stop_memory_broker
    if port_open "$KAFKA_PORT"; then return 0; fi
    mkdir -p "$STATE/kafka"
    log "starting Tansu on 127.0.0.1:$KAFKA_PORT (SQLite storage: $STATE/kafka/tansu.db; log: $STATE/tansu.log)"
    # A supervisor restarts the broker whenever it exits (see above); tansu.pid holds the
    # broker's own pid, tansu-supervisor.pid the supervisor's. The SQLite path is relative to
    # the broker's working directory.
    (cd "$STATE/kafka" || exit 1
     nohup bash -c '
        while :; do
            "$0" broker --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$1" \
                --storage-engine "sqlite://tansu.db" &
            echo $! >"$2/tansu.pid"
            wait $!
            echo "[services] the broker exited ($?); restarting it" >&2
            sleep 0.5
        done' "$TANSU" "$KAFKA_PORT" "$STATE" >"$STATE/tansu.log" 2>&1 </dev/null 9>&- &
     echo $! >"$STATE/tansu-supervisor.pid")
    wait_port "$KAFKA_PORT" Tansu
}

# Stops the broker this data directory started (supervisor first, so it stays stopped).
stop_kafka() {
    local f
    for f in tansu-supervisor.pid tansu.pid; do
        if [ -f "$STATE/$f" ]; then kill "$(cat "$STATE/$f")" 2>/dev/null || true; rm -f "$STATE/$f"; fi
    done
}

case "${1:-all}" in
    all) ensure_postgres; ensure_redis; ensure_kafka ;;
    postgres) ensure_postgres ;;
    redis) ensure_redis ;;
    kafka) ensure_kafka ;;
    stop-kafka) stop_kafka ;;
    # The broker binary (installed if missing), for tests that run brokers of their own.
    tansu-path) exec 9>"$STATE/kafka.lock"; flock 9; install_tansu; echo "$TANSU" ;;
    *) echo "usage: $0 [all|postgres|redis|kafka|stop-kafka|tansu-path]" >&2; exit 2 ;;
esac
