//! Typed settings in layers: defaults that work on a developer machine, then an optional
//! TOML file, then `COLLOQUY_...` environment variables (`__` separates levels, e.g.
//! `COLLOQUY_DATABASE__URL`).

use std::path::Path;

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
    /// Access tokens.
    pub auth: AuthSettings,
    /// Per-user request rate limits.
    pub rate_limit: RateLimitSettings,
    /// The event relay.
    pub relay: RelaySettings,
    /// The projectors.
    pub projection: ProjectionSettings,
    /// Logging.
    pub log: LogSettings,
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

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// Connection URL.
    pub url: String,
    /// Prefix of every key, so deployments (and tests) can share a server.
    pub key_prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self { url: "redis://127.0.0.1:6379".into(), key_prefix: "colloquy:".into() }
    }
}

/// Kafka settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 3,
            replication_factor: 1,
            message_timeout_ms: 30_000,
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
    /// Port of the `/metrics` and `/health` listener of processes without the API
    /// (`relay`, `project`); 0 disables it.
    pub ops_port: u16,
    /// Hours an `Idempotency-Key` and its response are remembered.
    pub idempotency_ttl_hours: u32,
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
            ops_port: 9464,
            idempotency_ttl_hours: 24,
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

/// The development signing key of the defaults; processes warn when they run with it.
pub const DEV_JWT_SECRET: &str = "colloquy-development-key-change-me-0123456789";

/// Access-token settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `iss` of issued tokens, required on presented ones.
    pub issuer: String,
    /// `aud` of issued tokens, required on presented ones.
    pub audience: String,
    /// Access token lifetime in seconds.
    pub access_token_ttl_secs: u64,
    /// Verification keys; tokens are signed with `signing_kid`. Keeping an old key here
    /// while signing with a new one rotates keys without logging anyone out.
    pub keys: Vec<JwtKey>,
    /// The kid of the key new tokens are signed with.
    pub signing_kid: String,
    /// Longest time a login may wait for a free password-hashing slot, in ms.
    pub hash_concurrency: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "colloquy".into(),
            audience: "colloquy-api".into(),
            access_token_ttl_secs: 3600,
            // A development key: production deployments set COLLOQUY_AUTH__KEYS.
            keys: vec![JwtKey { kid: "dev".into(), secret: DEV_JWT_SECRET.into() }],
            signing_kid: "dev".into(),
            hash_concurrency: 4,
        }
    }
}

/// Per-user rate limit (GCRA): a sustained rate with a burst allowance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    /// Requests per minute, sustained.
    pub per_minute: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
    /// Login/registration attempts per minute per client address.
    pub auth_per_minute: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self { per_minute: 600, burst: 100, auth_per_minute: 30 }
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

/// Errors reading settings.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct SettingsError(#[from] Box<figment::Error>);

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
