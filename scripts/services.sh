#!/usr/bin/env bash
# Installs (where missing) and starts (where stopped) what colloquy runs on locally:
# PostgreSQL and Redis from Debian's packages, the pgvector extension built from Debian's
# source package, and Tansu, a Kafka-compatible broker, from crates.io (with SQLite storage
# in the data directory, so its topics survive a restart).
# Idempotent: run it twice and the second run changes nothing.
#
#   scripts/services.sh            # all of them
#   scripts/services.sh pgvector   # PostgreSQL, then the vector extension in it
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

psql_local() { PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -X -qAt -v ON_ERROR_STOP=1 "$@"; }

# The server's answer to one query; a server that cannot answer stops the script (so a
# connection failure never passes for a missing extension).
server_query() {
    psql_local -d postgres -c "$1" || { log "PostgreSQL on 127.0.0.1:5432 did not answer: $1"; return 1; }
}

# pgvector for the running server. Debian 12 ships no binary package of it, so it is built
# from Debian's source package in the next release (bookworm -> trixie: 0.8.0), which builds
# against any PostgreSQL from 13 on. The source comes from the machine's own Debian mirror
# through a private sources list, package lists and cache in a temporary folder, so the
# machine's apt state is untouched and its pinning never sees the newer release; apt checks
# the suite's InRelease against the keyring the machine's own entry names (today trixie is
# signed with bookworm's archive key too, so even bookworm's first keyring verifies it) and
# every downloaded file against the hashes in the signed index. The build is portable (no
# -march=native) and installed with `make install`, outside dpkg.
ensure_pgvector() {
    local available="SELECT 1 FROM pg_available_extensions WHERE name = 'vector'" found
    found="$(server_query "$available")"
    [ -n "$found" ] && return 0
    # One builder at a time; the lock is released before anything long-lived (the broker's
    # supervisor) could inherit it.
    exec 8>"$STATE/pgvector.lock"
    flock 8
    # Another run may have installed it while this one waited.
    found="$(server_query "$available")"
    if [ -z "$found" ]; then install_pgvector; fi
    exec 8>&-
}

install_pgvector() {
    local version major pg_config
    version="$(server_query 'SHOW server_version_num')"
    major=$((version / 10000))
    pg_config="/usr/lib/postgresql/$major/bin/pg_config"
    log "pgvector: the PostgreSQL $major server has no vector extension; building it from Debian's source package"
    local missing=() pkg
    for pkg in build-essential "postgresql-server-dev-$major"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed' || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}" ||
            { log "pgvector: could not install ${missing[*]} (the server must come from Debian's PostgreSQL packages)"; return 1; }
    fi
    [ -x "$pg_config" ] || { log "pgvector: $pg_config is missing; is the server on 127.0.0.1:5432 from Debian's postgresql-$major?"; return 1; }
    build_pgvector "$pg_config"
    verify_pgvector
    log "pgvector: the vector extension is installed in PostgreSQL $major"
}

# The Debian suite after the machine's own (COLLOQUY_PGVECTOR_SUITE overrides it).
pgvector_suite() {
    if [ -n "${COLLOQUY_PGVECTOR_SUITE:-}" ]; then echo "$COLLOQUY_PGVECTOR_SUITE"; return 0; fi
    local codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    case "$codename" in
        bullseye) echo bookworm ;;
        bookworm) echo trixie ;;
        trixie) echo forky ;;
        *) log "pgvector: no known Debian release after '$codename'; set COLLOQUY_PGVECTOR_SUITE to a suite whose source package pgvector builds here"; return 1 ;;
    esac
}

# Writes a deb822 deb-src entry for suite $2 from the machine's entry for its own release $1:
# the same mirror and the same Signed-By (copied verbatim, an inline key included), component
# main. Reads the deb822 files first, then the one-line lists; prints nothing if none match.
pgvector_source_entry() {
    local own=$1 suite=$2 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v own="$own" -v suite="$suite" '
            function reset() { types = 0; suites = 0; enabled = 1; uri = ""; signed = ""; field = "" }
            function emit() {
                if (types && suites && enabled && uri != "") {
                    print "Types: deb-src"; print "URIs: " uri; print "Suites: " suite; print "Components: main"
                    if (signed != "") print "Signed-By: " signed
                    found = 1; exit
                }
                reset()
            }
            BEGIN { reset() }
            /^#/ { next }
            /^[ \t]*$/ { emit(); next }
            /^[ \t]/ { if (field == "signed-by") signed = signed "\n" $0; next }
            {
                field = tolower(substr($0, 1, index($0, ":") - 1))
                value = substr($0, index($0, ":") + 1); gsub(/^[ \t]+|[ \t]+$/, "", value)
                n = split(value, words, /[ \t]+/)
                if (field == "types") { for (i = 1; i <= n; i++) if (words[i] == "deb" || words[i] == "deb-src") types = 1 }
                else if (field == "suites") { for (i = 1; i <= n; i++) if (words[i] == own) suites = 1 }
                else if (field == "uris") uri = words[1]
                else if (field == "enabled") enabled = (tolower(value) != "no")
                else if (field == "signed-by") signed = value
            }
            END { if (!found) emit() }' "$f" | grep . && return 0
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        # deb [ option=value ... ] uri suite component...
        awk -v own="$own" -v suite="$suite" '
            { sub(/#.*/, "") }
            $1 != "deb" && $1 != "deb-src" { next }
            {
                line = $0; signed = ""
                if (match(line, /\[[^]]*\]/)) {
                    options = substr(line, RSTART + 1, RLENGTH - 2); line = substr(line, RSTART + RLENGTH)
                    n = split(options, o, /[ \t]+/)
                    for (i = 1; i <= n; i++) if (tolower(o[i]) ~ /^signed-by=/) signed = substr(o[i], 11)
                } else sub(/^[ \t]*deb(-src)?/, "", line)
                n = split(line, w, /[ \t]+/); k = 0
                for (i = 1; i <= n; i++) if (w[i] != "") rest[++k] = w[i]
                if (k >= 2 && rest[2] == own) {
                    print "Types: deb-src"; print "URIs: " rest[1]; print "Suites: " suite; print "Components: main"
                    if (signed != "") print "Signed-By: " signed
                    exit
                }
            }' "$f" | grep . && return 0
    done
    return 0
}

# Fetches, unpacks and builds Debian's pgvector source as the calling user and installs it
# as root. A subshell, so its temporary folder goes away however it ends.
build_pgvector() (
    local pg_config=$1 own suite work log="$STATE/pgvector-build.log"
    own="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    suite="$(pgvector_suite)"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/empty" "$work/lists/partial" "$work/cache/archives/partial" "$work/source"
    pgvector_source_entry "$own" "$suite" >"$work/pgvector.sources"
    if [ ! -s "$work/pgvector.sources" ]; then
        log "pgvector: found no apt entry for '$own' in /etc/apt/sources.list{,.d} to take the Debian mirror from"
        return 1
    fi
    # The machine's apt configuration (proxies, mirrors' authentication) applies, but not its
    # update hooks: they would refresh the machine's own caches (AppStream, PackageKit).
    printf '#clear APT::Update::Pre-Invoke;\n#clear APT::Update::Post-Invoke;\n#clear APT::Update::Post-Invoke-Success;\n' >"$work/apt.conf"
    local apt=(apt-get -q -c "$work/apt.conf"
        -o Dir::Etc::SourceList="$work/pgvector.sources" -o Dir::Etc::SourceParts="$work/empty"
        -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o Acquire::Languages=none)
    # As root, apt downloads as the unprivileged _apt user: let it reach the folders.
    if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chmod 755 "$work"; chown _apt "$work/source"; fi
    log "pgvector: fetching Debian's source package from $suite (log: $log)"
    : >"$log"
    if ! "${apt[@]}" update >>"$log" 2>&1; then
        log "pgvector: apt could not read or verify the $suite source index (see $log)"
        # Debian ships the keys of a new release to the older one in debian-archive-keyring
        # updates; the archive stops signing with a release's key some time after the next.
        if grep -q NO_PUBKEY "$log"; then
            log "pgvector: the machine's keyring cannot verify $suite: update it (apt-get install debian-archive-keyring) and run this again"
        fi
        return 1
    fi
    if ! (cd "$work/source" && "${apt[@]}" source --download-only pgvector >>"$log" 2>&1); then
        log "pgvector: apt could not download the pgvector source package from $suite (see $log)"; return 1
    fi
    # The .dsc's own signature is a Debian developer's, whose keyring (debian-keyring) is not
    # installed: dpkg-source says so in the log. Its authenticity comes from apt, which checked
    # every file against the hashes in the signed index.
    local dsc
    dsc="$(ls "$work"/source/pgvector_*.dsc)"
    log "pgvector: building $(basename "$dsc" .dsc) against $pg_config"
    if ! (cd "$work" && dpkg-source -x "$dsc" build >>"$log" 2>&1 &&
          make -C build OPTFLAGS="" PG_CONFIG="$pg_config" >>"$log" 2>&1); then
        log "pgvector: the build failed (see $log)"; return 1
    fi
    if ! as_root make -C "$work/build" install OPTFLAGS="" PG_CONFIG="$pg_config" >>"$log" 2>&1; then
        log "pgvector: make install failed (see $log)"; return 1
    fi
)

# Proves the server can now create the extension and use it, in a scratch database.
verify_pgvector() {
    local db="colloquy_pgvector_check_$$" result
    psql_local -d postgres -c "CREATE DATABASE $db"
    result="$(psql_local -d "$db" -c "CREATE EXTENSION vector" \
        -c "SELECT '[1,0,0]'::vector <=> '[0,1,0]'::vector" 2>&1)" || true
    psql_local -d postgres -c "DROP DATABASE $db"
    if [ "$result" != "1" ]; then
        log "pgvector: installed, but CREATE EXTENSION vector fails in the server on 127.0.0.1:5432: $result"
        return 1
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
    all) ensure_postgres; ensure_pgvector; ensure_redis; ensure_kafka ;;
    postgres) ensure_postgres ;;
    pgvector) ensure_postgres; ensure_pgvector ;;
    redis) ensure_redis ;;
    kafka) ensure_kafka ;;
    stop-kafka) stop_kafka ;;
    # The broker binary (installed if missing), for tests that run brokers of their own.
    tansu-path) exec 9>"$STATE/kafka.lock"; flock 9; install_tansu; echo "$TANSU" ;;
    *) echo "usage: $0 [all|postgres|pgvector|redis|kafka|stop-kafka|tansu-path]" >&2; exit 2 ;;
esac
