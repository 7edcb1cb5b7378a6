#!/usr/bin/env bash
# Prepares OpenAI's official Python client, pinned, in a virtual environment of its own
# (.colloquy/venvs/openai-<version>), for the test that drives colloquy's OpenAI-compatible
# API with it (tests/openai_api.rs). Installed once from PyPI; run it again and it changes
# nothing. Prints the environment's python.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${COLLOQUY_STATE_DIR:-$ROOT/.colloquy}"
VERSION="3.57.0"
VENV="$STATE/venvs/openai-$VERSION"

log() { echo "[openai-client] $*" >&2; }

ready() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$VERSION')" 2>/dev/null; }

if ready; then
    echo "$VENV/bin/python"
    exit 0
fi
mkdir -p "$STATE/venvs"
exec 9>"$STATE/venvs/openai.lock"
flock 9
if ready; then
    echo "$VENV/bin/python"
    exit 0
fi
if ! python3 -c "import ensurepip" >/dev/null 2>&1; then
    log "installing python3-venv from Debian's packages"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null; fi
fi
rm -rf "$VENV"
log "installing openai $VERSION from PyPI into $VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$VERSION" >&2
ready || { log "openai $VERSION did not install"; exit 1; }
echo "$VENV/bin/python"
