//! Typed settings in layers: defaults that work on a developer machine, then an optional
//! TOML file, then `COLLOQUY_...` environment variables (`__` separates levels, e.g.
//! `COLLOQUY_DATABASE__URL`).

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything a colloquy process can be configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// Redis.
    pub redis: RedisSettings,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// The HTTP API.
    pub http: HttpSettings,
    /// Access and refresh tokens, password hashing.
    pub auth: AuthSettings,
    /// Request rate limits and the login backoff.
    pub rate_limit: RateLimitSettings,
    /// Per-user quotas on what is stored.
    pub quotas: QuotaSettings,
    /// The event relay.
    pub relay: RelaySettings,
    /// The projectors.
    pub projection: ProjectionSettings,
    /// Logging.
    pub log: LogSettings,
    /// The assistant: model providers, models and their fallback routes, retries, circuit
    /// breaker, the local model.
    pub assistant: crate::assistant_settings::AssistantSettings,
    /// Reply streams (Redis) and their relay to clients over SSE and WebSocket.
    pub streams: StreamSettings,
    /// Where uploaded files and the text extracted from them are kept.
    pub storage: StorageSettings,
    /// The knowledge base: the embedder of its chunks and search queries, chunking, upload
    /// limits, retrieval for grounded answers.
    pub knowledge: crate::knowledge_settings::KnowledgeSettings,
}

/// PostgreSQL settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// Connection URL. May carry a password: never log it.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Seconds to wait for a pooled connection.
    pub acquire_timeout_secs: u64,
    /// Run pending migrations at start-up.
    pub migrate_on_start: bool,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

/// A URL fit for logs and error messages: the password of `scheme://user:secret@host/db`
/// becomes `***` (`scheme://user:***@host/db`), and so does the value of a `password`
/// query parameter. Anything that is not a URL is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!("{user}:***{}", &authority[at..]),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_secret_name(key) => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{}{authority}{tail}", &url[..scheme_end])
}

fn is_secret_name(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token"].iter().any(|s| key.contains(s))
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres:postgres@127.0.0.1:5432/colloquy".into(),
            max_connections: 20,
            acquire_timeout_secs: 5,
            migrate_on_start: true,
        }
    }
}

/// Redis settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// Connection URL: `redis://host:6379/0`, or `rediss://` for TLS (the server's
    /// certificate is checked against the system's trusted roots). May carry credentials
    /// (`redis://user:password@host`): never logged.
    pub url: String,
    /// Prefix of every key, so deployments (and tests) can share a server.
    pub key_prefix: String,
    /// `AUTH` user name (Redis 6 ACLs), when not in the URL.
    pub username: Option<String>,
    /// `AUTH` password, when not in the URL (so the URL can be logged and the password come
    /// from a secret store); overrides a password in the URL. Never logged.
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .finish()
    }
}

/// What a secret prints as.
pub const REDACTED: &str = "<redacted>";

impl Default for RedisSettings {
    fn default() -> Self {
        Self { url: "redis://127.0.0.1:6379".into(), key_prefix: "colloquy:".into(), username: None, password: None }
    }
}

/// Kafka settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Prefix of every topic and consumer group name (empty in production).
    pub topic_prefix: String,
    /// Partitions of each event topic when the project creates it.
    pub partitions: i32,
    /// Replication factor of each topic when the project creates it.
    pub replication_factor: i32,
    /// Milliseconds a produced message may wait for delivery before it counts as failed.
    pub message_timeout_ms: u64,
    /// Consumers' `session.timeout.ms`: how long the group coordinator waits for a silent
    /// member (a killed process) before it gives the member's partitions to another. The
    /// bound on a failover. 6000 is the smallest value Apache Kafka accepts by default
    /// (`group.min.session.timeout.ms`). See docs/operations.md.
    pub session_timeout_ms: u32,
    /// Consumers' `heartbeat.interval.ms` (at most a third of the session timeout).
    pub heartbeat_interval_ms: u32,
    /// Consumers' `fetch.wait.max.ms`: how long the broker may hold an empty fetch. Kafka
    /// answers a held fetch as soon as records arrive, so this only sets how often an idle
    /// consumer asks. Tansu, the local broker, holds every fetch this long, records or
    /// not, and each fetch costs its single storage thread a few SQLite queries per
    /// partition. At 20 ms, five idle consumers kept that thread busy and the read models
    /// fell further behind even at 300 commands/s; at 100 ms the lag was steady at about
    /// 190 ms (bench/README.md).
    pub fetch_wait_max_ms: u32,
    /// Consumers' `max.poll.interval.ms`, also sent as the rebalance timeout: the longest a
    /// consumer may take between two polls before it is considered stuck and leaves the group.
    pub max_poll_interval_ms: u32,
    /// `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`. TLS needs the
    /// `kafka-tls` build feature (librdkafka with OpenSSL).
    pub security_protocol: String,
    /// `sasl.mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`) with a `sasl_*` protocol.
    pub sasl_mechanism: Option<String>,
    /// `sasl.username`.
    pub sasl_username: Option<String>,
    /// `sasl.password`. Never logged.
    pub sasl_password: Option<String>,
    /// `ssl.ca.location`: a PEM file of the CA that signed the brokers' certificates (the
    /// system's trusted roots when unset).
    pub ssl_ca_location: Option<String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field("max_poll_interval_ms", &self.max_poll_interval_ms)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| REDACTED))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .finish()
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 3,
            replication_factor: 1,
            message_timeout_ms: 30_000,
            session_timeout_ms: 6_000,
            heartbeat_interval_ms: 1_500,
            fetch_wait_max_ms: 100,
            max_poll_interval_ms: 300_000,
            security_protocol: "plaintext".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
        }
    }
}

/// HTTP API settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// Listen address.
    pub host: String,
    /// Listen port (0 picks a free one).
    pub port: u16,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Longest JSON body accepted, in bytes.
    pub json_limit_bytes: usize,
    /// Longest `min_version` wait, in milliseconds.
    pub min_version_wait_ms: u64,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Port of the `/metrics` and `/health` listener of this process when it runs without
    /// the API, overriding its role's default below; 0 disables the listener.
    pub ops_port: Option<u16>,
    /// Default ops port of `colloquy relay` (9464).
    pub relay_ops_port: u16,
    /// Default ops port of `colloquy project` (9465), distinct from the relay's so both run
    /// on one host and both are scraped.
    pub project_ops_port: u16,
    /// Default ops port of `colloquy assistant` (9466).
    pub assistant_ops_port: u16,
    /// `/health` and `/metrics` of `colloquy ingest` (when `ops_port` is not set).
    pub ingest_ops_port: u16,
    /// Hours an `Idempotency-Key` and its response are remembered.
    pub idempotency_ttl_hours: u32,
    /// Seconds a request that never finished (its process died) holds its
    /// `Idempotency-Key` before the same request may run again. Longer than any request.
    pub idempotency_lease_secs: u64,
    /// Addresses (`10.0.0.5`) and networks (`10.0.0.0/8`, `fd00::/8`) of the reverse proxies
    /// and load balancers in front of the API. `X-Forwarded-For` is read only on connections
    /// from one of them; empty (the default) means it is never read.
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            workers: 0,
            json_limit_bytes: 256 * 1024,
            min_version_wait_ms: 5_000,
            shutdown_timeout_secs: 30,
            ops_port: None,
            relay_ops_port: 9464,
            project_ops_port: 9465,
            assistant_ops_port: 9466,
            ingest_ops_port: 9467,
            idempotency_ttl_hours: 24,
            idempotency_lease_secs: 120,
            trusted_proxies: Vec::new(),
        }
    }
}

/// One HMAC key for signing access tokens.
#[derive(Clone, Serialize, Deserialize)]
pub struct JwtKey {
    /// Key id, written into the token header.
    pub kid: String,
    /// The secret (at least 32 bytes).
    pub secret: String,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey").field("kid", &self.kid).field("secret", &"<redacted>").finish()
    }
}

/// The development signing key of the defaults. Only `colloquy dev` accepts it.
pub const DEV_JWT_SECRET: &str = "colloquy-development-key-change-me-0123456789";

/// Keys that are public because they were published with the project (the defaults, and
/// the key `docker-compose.yml` once contained). No process but `colloquy dev` starts with
/// one of them.
pub const PUBLISHED_JWT_SECRETS: &[&str] = &[DEV_JWT_SECRET, "compose-development-key-replace-me-0123456789"];

/// The shortest accepted signing key, in bytes (HS256 wants at least its output size).
pub const JWT_SECRET_MIN_BYTES: usize = 32;

/// Access- and refresh-token settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `iss` of issued tokens, required on presented ones.
    pub issuer: String,
    /// `aud` of issued tokens, required on presented ones.
    pub audience: String,
    /// Access token lifetime in seconds (short: a refresh token gets the next one).
    pub access_token_ttl_secs: u64,
    /// Refresh token lifetime in seconds; each refresh issues a new one with a fresh lifetime.
    pub refresh_token_ttl_secs: u64,
    /// Verification keys; tokens are signed with `signing_kid`. Keeping an old key here
    /// while signing with a new one rotates keys without logging anyone out.
    pub keys: Vec<JwtKey>,
    /// The kid of the key new tokens are signed with.
    pub signing_kid: String,
    /// Password hashes running at once, at most (each takes 19 MiB and a core).
    pub hash_concurrency: usize,
    /// Logins and registrations that may wait for a hashing slot; past this the API answers
    /// 503 `overloaded` with `Retry-After` instead of queueing without bound.
    pub hash_queue: usize,
    /// Accept the published development keys ([`PUBLISHED_JWT_SECRETS`]). Set only by
    /// `colloquy dev` (and never read from a file or the environment).
    #[serde(skip)]
    pub allow_published_keys: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "colloquy".into(),
            audience: "colloquy-api".into(),
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            // The development key: only `colloquy dev` starts with it; every other process
            // needs COLLOQUY_AUTH__KEYS.
            keys: vec![JwtKey { kid: "dev".into(), secret: DEV_JWT_SECRET.into() }],
            signing_kid: "dev".into(),
            hash_concurrency: 4,
            hash_queue: 64,
            allow_published_keys: false,
        }
    }
}

/// Why the configured signing keys cannot be used. Names the key's `kid`, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// `auth.keys` is empty.
    #[error("no JWT key configured: set COLLOQUY_AUTH__KEYS (generate a secret with `openssl rand -hex 32`)")]
    NoKeys,
    /// A key is shorter than [`JWT_SECRET_MIN_BYTES`].
    #[error("JWT key {kid:?} is shorter than {JWT_SECRET_MIN_BYTES} bytes (generate one with `openssl rand -hex 32`)")]
    TooShort {
        /// The key's id.
        kid: String,
    },
    /// A key is one of the published development keys.
    #[error(
        "JWT key {kid:?} is a published development key; only `colloquy dev` accepts it \
         (set COLLOQUY_AUTH__KEYS to a secret of your own, e.g. from `openssl rand -hex 32`)"
    )]
    Published {
        /// The key's id.
        kid: String,
    },
    /// No key has the signing kid.
    #[error("no JWT key has the signing kid {kid:?} (auth.signing_kid)")]
    NoSigningKey {
        /// The configured signing kid.
        kid: String,
    },
}

impl AuthSettings {
    /// Checks the keys: at least one, each at least [`JWT_SECRET_MIN_BYTES`] long and none
    /// published (unless [`Self::allow_published_keys`]), and one with the signing kid.
    pub fn check_keys(&self) -> Result<(), KeyError> {
        if self.keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        for key in &self.keys {
            if key.secret.len() < JWT_SECRET_MIN_BYTES {
                return Err(KeyError::TooShort { kid: key.kid.clone() });
            }
            if !self.allow_published_keys && PUBLISHED_JWT_SECRETS.contains(&key.secret.as_str()) {
                return Err(KeyError::Published { kid: key.kid.clone() });
            }
        }
        if !self.keys.iter().any(|k| k.kid == self.signing_kid) {
            return Err(KeyError::NoSigningKey { kid: self.signing_kid.clone() });
        }
        Ok(())
    }
}

/// Request rate limits (GCRA: a sustained rate with a burst allowance) and the per-account
/// backoff after failed logins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    /// Requests per minute per user, sustained.
    pub per_minute: u32,
    /// Requests per user allowed at once above the sustained rate.
    pub burst: u32,
    /// Login/registration attempts per minute per client address. Generous on purpose:
    /// many people can share one address (an office, a carrier NAT); the per-account
    /// backoff below is what slows password guessing.
    pub auth_per_minute: u32,
    /// Login/registration attempts per client address allowed at once above that rate.
    pub auth_burst: u32,
    /// Failed logins an account (a normalised e-mail address, registered or not) may have
    /// before each further attempt must wait.
    pub login_failures_free: u32,
    /// The first wait after `login_failures_free` failures, in seconds; it doubles with each
    /// further failure.
    pub login_backoff_base_secs: u64,
    /// The longest wait, in seconds.
    pub login_backoff_max_secs: u64,
    /// Seconds without an attempt after which an account's failures are forgotten.
    pub login_failure_window_secs: u64,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_minute: 600,
            burst: 100,
            auth_per_minute: 120,
            auth_burst: 120,
            login_failures_free: 5,
            login_backoff_base_secs: 2,
            login_backoff_max_secs: 900,
            login_failure_window_secs: 3600,
        }
    }
}

/// Per-user quotas, enforced on the write side before a command runs (answered 429 with
/// a code naming the quota). Each is a hard limit; raise it to lift it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuotaSettings {
    /// Conversations a user may have (deleting one frees its place).
    pub conversations: u64,
    /// Messages a user may post per UTC day.
    pub messages_per_day: u64,
    /// Bytes (UTF-8) of text a user may store: titles, system prompts and messages (files
    /// will count here too). The event store keeps history, so deleting frees nothing.
    pub stored_bytes: u64,
    /// Tokens (prompt and generated, of every provider call) a user may spend per UTC day;
    /// checked before a call, from the usage ledger.
    pub tokens_per_day: u64,
    /// Tokens a user may spend per UTC calendar month.
    pub tokens_per_month: u64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            conversations: 10_000,
            messages_per_day: 10_000,
            stored_bytes: 1 << 30,
            tokens_per_day: 2_000_000,
            tokens_per_month: 20_000_000,
        }
    }
}

/// Relay settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RelaySettings {
    /// Checkpoint name (one per relay deployment).
    pub name: String,
    /// Events read and produced per batch.
    pub batch_size: i64,
    /// Milliseconds to wait when there is nothing to relay.
    pub idle_poll_ms: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self { name: "kafka".into(), batch_size: 500, idle_poll_ms: 20 }
    }
}

/// Projector settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProjectionSettings {
    /// Milliseconds between two reconciliations of each read model with the event store
    /// (0 disables them).
    pub reconcile_interval_ms: u64,
    /// Milliseconds an event must have been in the store before reconciliation counts it
    /// as lost on its way through Kafka and applies it from the store. Keep it above the
    /// projectors' usual lag, or reconciliation does their work (harmlessly, but noisily).
    pub reconcile_grace_ms: u64,
}

impl Default for ProjectionSettings {
    fn default() -> Self {
        Self { reconcile_interval_ms: 30_000, reconcile_grace_ms: 60_000 }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// `pretty` for people, `json` for machines.
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, filter: "info,sqlx=warn,rdkafka=warn".into() }
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Reply streams: the Redis stream each reply's progress is written to, and how the API
/// relays them to clients over SSE and WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamSettings {
    /// Entries a reply's stream keeps (approximate trimming: never fewer).
    pub max_len: u64,
    /// Seconds a finished (completed, failed, cancelled) reply's stream stays readable.
    pub ttl_after_finish_secs: u64,
    /// Seconds a stream lives after its last entry while unfinished (its worker died).
    pub idle_ttl_secs: u64,
    /// Seconds between keepalive comments on an idle SSE stream.
    pub sse_keepalive_secs: u64,
    /// Seconds between the server's pings on a WebSocket.
    pub ws_ping_secs: u64,
    /// Seconds a WebSocket client may stay silent (no pong) before it is closed.
    pub ws_timeout_secs: u64,
    /// Messages queued for one WebSocket client; a client that falls this far behind is
    /// closed.
    pub ws_buffer: usize,
    /// Seconds an SSE client waits for a reply's stream to start.
    pub wait_for_start_secs: u64,
    /// Seconds a non-streaming chat completion (`POST /v1/chat/completions` without
    /// `stream`) waits for its reply to end before answering 504 (the reply is cancelled).
    pub completion_timeout_secs: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_len: 10_000,
            ttl_after_finish_secs: 600,
            idle_ttl_secs: 3600,
            sse_keepalive_secs: 15,
            ws_ping_secs: 10,
            ws_timeout_secs: 30,
            ws_buffer: 256,
            wait_for_start_secs: 60,
            completion_timeout_secs: 600,
        }
    }
}

/// File storage: a folder on this machine, or an S3-compatible bucket (AWS S3, MinIO,
/// Cloudflare R2, ...). Only the part of the chosen `backend` is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageSettings {
    /// Which store holds the files.
    pub backend: StorageBackend,
    /// The folder, when `backend = "local"`.
    pub local: LocalStorageSettings,
    /// The bucket, when `backend = "s3"`.
    pub s3: S3StorageSettings,
}

/// The kind of file store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// A folder on this machine (one machine, or a shared volume).
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3,
}

/// A folder holding the files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalStorageSettings {
    /// The folder, created if missing. Relative paths are from the working directory; the
    /// default is in the data directory.
    pub root: PathBuf,
}

impl Default for LocalStorageSettings {
    fn default() -> Self {
        Self { root: PathBuf::from(".colloquy/files") }
    }
}

/// An S3-compatible bucket holding the files.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct S3StorageSettings {
    /// The bucket's name (required with this backend).
    pub bucket: String,
    /// The service's URL for anything but AWS (MinIO, R2, ...), e.g. `http://127.0.0.1:9000`;
    /// unset means AWS S3 in `region`. Requests use path-style addressing.
    pub endpoint: Option<String>,
    /// The bucket's region (`auto` for R2).
    pub region: String,
    /// The access key id. With the secret unset too, the credentials of the machine's role
    /// (instance metadata) are used.
    pub access_key_id: Option<String>,
    /// The secret access key. Never logged.
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint (a local MinIO); never in production.
    pub allow_http: bool,
    /// A folder in the bucket under which every key is stored (empty: the bucket's root),
    /// so deployments can share a bucket.
    pub prefix: String,
}

impl Default for S3StorageSettings {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            prefix: String::new(),
        }
    }
}

impl std::fmt::Debug for S3StorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3StorageSettings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| REDACTED))
            .field("allow_http", &self.allow_http)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Errors reading settings. Its message names the key and what was wrong, never the value
/// given (which may be a secret: a mistyped key list, a password).
#[derive(thiserror::Error)]
#[error("invalid configuration: {}", describe(.0))]
pub struct SettingsError(#[from] Box<figment::Error>);

impl std::fmt::Debug for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SettingsError({})", describe(&self.0))
    }
}

/// Every error figment collected, without the offending values.
fn describe(error: &figment::Error) -> String {
    use figment::error::{Actual, Kind};
    let actual = |a: &Actual| match a {
        // Values that could be a secret are named by their type only.
        Actual::Str(_) | Actual::Bytes(_) | Actual::Char(_) | Actual::Other(_) => "a string".to_string(),
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer".to_string(),
        Actual::Float(_) => "a float".to_string(),
        other => other.to_string(),
    };
    error
        .clone()
        .into_iter()
        .map(|e| {
            let what = match &e.kind {
                Kind::InvalidType(a, expected) => format!("invalid type: found {}, expected {expected}", actual(a)),
                Kind::InvalidValue(a, expected) => format!("invalid value: found {}, expected {expected}", actual(a)),
                Kind::UnknownVariant(_, expected) => format!("unknown variant, expected one of {expected:?}"),
                Kind::Unsupported(a) => format!("unsupported {}", actual(a)),
                Kind::UnsupportedKey(a, need) => format!("unsupported key {}, need {need}", actual(a)),
                Kind::Message(_) => "invalid value".to_string(),
                other => other.to_string(),
            };
            match e.path.is_empty() {
                true => what,
                false => format!("{what} for key `{}`", e.path.join(".")),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Settings {
    /// Defaults, then `file` if given (or `colloquy.toml` if it exists), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file("colloquy.toml")),
        }
        figment = figment.merge(Env::prefixed("COLLOQUY_").split("__"));
        figment.extract().map_err(|e| SettingsError(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_not_printed() {
        let s = DatabaseSettings { url: "postgres://app:s3cret@db:5432/colloquy".into(), ..Default::default() };
        let printed = format!("{s:?}");
        assert!(printed.contains("postgres://app:***@db:5432/colloquy"), "{printed}");
        assert!(!printed.contains("s3cret"));
    }

    #[test]
    fn urls_are_printed_without_passwords() {
        for (url, printed) in [
            ("postgres://app:s3cret@db:5432/colloquy", "postgres://app:***@db:5432/colloquy"),
            ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
            ("rediss://default:s3cret@cache:6380", "rediss://default:***@cache:6380"),
            ("postgres://app:p@ss@db/colloquy", "postgres://app:***@db/colloquy"),
            (
                "postgres://db/colloquy?user=app&password=s3cret&sslmode=require",
                "postgres://db/colloquy?user=app&password=***&sslmode=require",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("postgres://app@db/colloquy", "postgres://app@db/colloquy"),
        ] {
            assert_eq!(redact_url(url), printed);
        }
    }

    #[test]
    fn redis_and_kafka_secrets_are_not_printed() {
        let redis = RedisSettings {
            url: "rediss://app:url-s3cret@cache:6380".into(),
            password: Some("separate-s3cret".into()),
            ..Default::default()
        };
        let kafka = KafkaSettings {
            security_protocol: "sasl_ssl".into(),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("colloquy".into()),
            sasl_password: Some("sasl-s3cret".into()),
            ..Default::default()
        };
        let settings = Settings { redis, kafka, ..Default::default() };
        let printed = format!("{settings:?} {settings:#?}");
        for secret in ["url-s3cret", "separate-s3cret", "sasl-s3cret", DEV_JWT_SECRET] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
        assert!(printed.contains("rediss://app:***@cache:6380"), "{printed}");
        assert!(printed.contains("SCRAM-SHA-512") && printed.contains("colloquy"), "{printed}");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_misconfigured_value_is_not_repeated_in_the_error() {
        figment::Jail::expect_with(|jail| {
            // A key list given as a bare secret, and a secret pasted into a number field.
            jail.set_env("COLLOQUY_AUTH__KEYS", "my-jwt-s3cret-0123456789abcdef0123456789");
            let e = Settings::load(None).expect_err("a string is not a key list");
            let printed = format!("{e} {e:?}");
            assert!(!printed.contains("my-jwt-s3cret"), "{printed}");
            assert!(printed.contains("auth.keys"), "the key is named: {printed}");
            jail.clear_env();
            jail.set_env("COLLOQUY_KAFKA__PARTITIONS", "hunter2");
            let e = Settings::load(None).expect_err("not a number");
            let printed = format!("{e} {e:?}");
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(printed.contains("kafka.partitions"), "{printed}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn security_settings_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_KAFKA__SECURITY_PROTOCOL", "sasl_ssl");
            jail.set_env("COLLOQUY_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256");
            jail.set_env("COLLOQUY_KAFKA__SASL_USERNAME", "colloquy");
            jail.set_env("COLLOQUY_KAFKA__SASL_PASSWORD", "pw");
            jail.set_env("COLLOQUY_KAFKA__SSL_CA_LOCATION", "/etc/ssl/kafka-ca.pem");
            jail.set_env("COLLOQUY_REDIS__PASSWORD", "redis-pw");
            jail.set_env("COLLOQUY_HTTP__PROJECT_OPS_PORT", "9500");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.kafka.security_protocol, "sasl_ssl");
            assert_eq!(s.kafka.sasl_mechanism.as_deref(), Some("SCRAM-SHA-256"));
            assert_eq!(s.kafka.sasl_password.as_deref(), Some("pw"));
            assert_eq!(s.kafka.ssl_ca_location.as_deref(), Some("/etc/ssl/kafka-ca.pem"));
            assert_eq!(s.redis.password.as_deref(), Some("redis-pw"));
            assert_eq!((s.http.ops_port, s.http.project_ops_port), (None, 9500));
            Ok(())
        });
    }

    #[test]
    fn defaults_are_local() {
        let s = Settings::default();
        assert_eq!(s.http.port, 8080);
        assert!(s.database.url.contains("127.0.0.1"));
        assert!(!format!("{:?}", s.auth).contains("change-me"), "secrets must not be printed");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_HTTP__PORT", "9999");
            jail.set_env("COLLOQUY_KAFKA__TOPIC_PREFIX", "t1.");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.http.port, 9999);
            assert_eq!(s.kafka.topic_prefix, "t1.");
            Ok(())
        });
    }

    fn auth_with(secret: &str) -> AuthSettings {
        AuthSettings {
            keys: vec![JwtKey { kid: "k1".into(), secret: secret.into() }],
            signing_kid: "k1".into(),
            ..AuthSettings::default()
        }
    }

    #[test]
    fn published_and_short_keys_are_refused_by_kid_without_the_secret() {
        for published in PUBLISHED_JWT_SECRETS {
            let error = auth_with(published).check_keys().unwrap_err();
            assert_eq!(error, KeyError::Published { kid: "k1".into() });
            assert!(!error.to_string().contains(published), "{error}");
        }
        let short = "x".repeat(JWT_SECRET_MIN_BYTES - 1);
        let error = auth_with(&short).check_keys().unwrap_err();
        assert_eq!(error, KeyError::TooShort { kid: "k1".into() });
        assert!(error.to_string().contains("\"k1\"") && !error.to_string().contains(&short), "{error}");
        assert_eq!(AuthSettings { keys: vec![], ..auth_with("") }.check_keys(), Err(KeyError::NoKeys));
        let mut other_kid = auth_with(&"y".repeat(32));
        other_kid.signing_kid = "k2".into();
        assert_eq!(other_kid.check_keys(), Err(KeyError::NoSigningKey { kid: "k2".into() }));
        assert_eq!(auth_with(&"y".repeat(JWT_SECRET_MIN_BYTES)).check_keys(), Ok(()));
    }

    #[test]
    fn the_defaults_start_only_where_published_keys_are_allowed() {
        let mut auth = AuthSettings::default();
        assert_eq!(auth.check_keys(), Err(KeyError::Published { kid: "dev".into() }));
        auth.allow_published_keys = true;
        assert_eq!(auth.check_keys(), Ok(()));
        // Even then, a short key is refused.
        auth.keys.push(JwtKey { kid: "short".into(), secret: "0123456789".into() });
        assert_eq!(auth.check_keys(), Err(KeyError::TooShort { kid: "short".into() }));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn published_keys_cannot_be_allowed_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_AUTH__ALLOW_PUBLISHED_KEYS", "true");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert!(!s.auth.allow_published_keys);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn trusted_proxies_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_HTTP__TRUSTED_PROXIES", r#"["10.0.0.0/8","::1"]"#);
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.http.trusted_proxies, vec!["10.0.0.0/8".to_string(), "::1".to_string()]);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn quotas_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_QUOTAS__CONVERSATIONS", "3");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.quotas.conversations, 3);
            assert_eq!(s.quotas.messages_per_day, QuotaSettings::default().messages_per_day);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn jwt_keys_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_AUTH__KEYS", r#"[{kid="k2",secret="0123456789abcdef0123456789abcdef"}]"#);
            jail.set_env("COLLOQUY_AUTH__SIGNING_KID", "k2");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.auth.keys.len(), 1);
            assert_eq!(s.auth.keys[0].kid, "k2");
            assert_eq!(s.auth.signing_kid, "k2");
            Ok(())
        });
    }
}
