//! Redis: the connection and cluster-ready key naming under a configurable prefix.

use redis::aio::ConnectionManager;

use crate::settings::{redact_url, RedisSettings};

/// A shared, auto-reconnecting Redis connection plus the key prefix.
#[derive(Clone)]
pub struct RedisStore {
    /// The connection; cheap to clone.
    pub conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
}

/// Redis could not be reached or its settings are wrong. The message names the server by
/// its URL with any password replaced by `***`.
#[derive(Debug, thiserror::Error)]
#[error("could not connect to Redis at {url}")]
pub struct RedisConnectError {
    /// The configured URL, password redacted.
    pub url: String,
    /// What went wrong.
    #[source]
    pub source: redis::RedisError,
}

/// The connection details for `settings`: the URL, with `username` and `password` from the
/// settings taking precedence over those in the URL.
pub fn connection_info(settings: &RedisSettings) -> Result<redis::ConnectionInfo, redis::RedisError> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())?;
    if let Some(username) = &settings.username {
        info.redis.username = Some(username.clone());
    }
    if let Some(password) = &settings.password {
        info.redis.password = Some(password.clone());
    }
    Ok(info)
}

impl RedisStore {
    /// Connects (fails if the server is unreachable now). `rediss://` URLs connect over TLS.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, RedisConnectError> {
        let error = |source| RedisConnectError { url: redact_url(&settings.url), source };
        let client = redis::Client::open(connection_info(settings).map_err(error)?).map_err(error)?;
        // redis 0.32 hands `factor` to backon as the growth of the delay between attempts
        // (starting at 1 s), and its default of 100 made a start-up against a stopped
        // server wait two minutes, and a reconnection up to a minute: grow by 2, at most 2 s.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(std::time::Duration::from_secs(2))
            .set_response_timeout(std::time::Duration::from_secs(2))
            .set_number_of_retries(2)
            .set_factor(2)
            .set_max_delay(2_000);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await.map_err(error)?;
        Ok(Self { conn, client, prefix: settings.key_prefix.clone() })
    }

    /// The full key for `parts`, e.g. `key(&["user", id])` → `colloquy:user:<id>`.
    pub fn key(&self, parts: &[&str]) -> String {
        format!("{}{}", self.prefix, parts.join(":"))
    }

    /// The client the connection was opened with, for connections of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ())
    }

    /// Deletes every key under this store's prefix that also starts with `sub` (SCAN based).
    pub async fn delete_prefixed(&self, sub: &str) -> Result<u64, redis::RedisError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}{}*", self.prefix, sub);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                deleted += redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut conn).await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(e: &RedisConnectError) -> String {
        let mut out = format!("{e} {e:?}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            out.push_str(&format!(": {s}"));
            source = s.source();
        }
        out
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_without_its_password() {
        // Nothing listens on port 1.
        let settings = RedisSettings { url: "redis://:s3cret-pw@127.0.0.1:1/0".into(), ..Default::default() };
        let Err(e) = RedisStore::connect(&settings).await else { panic!("port 1 answered") };
        let printed = printed(&e);
        assert!(printed.contains("redis://:***@127.0.0.1:1/0"), "{printed}");
        assert!(!printed.contains("s3cret-pw"), "{printed}");
    }

    #[tokio::test]
    async fn a_malformed_url_is_named_without_its_password() {
        let settings = RedisSettings { url: "redis://app:s3cret-pw@127.0.0.1:notaport".into(), ..Default::default() };
        let Err(e) = RedisStore::connect(&settings).await else { panic!("a malformed URL connected") };
        let printed = printed(&e);
        assert!(printed.contains("app:***@"), "{printed}");
        assert!(!printed.contains("s3cret-pw"), "{printed}");
    }

    #[tokio::test]
    async fn a_wrong_password_is_refused_without_being_repeated() {
        // The local server has no password: AUTH with one is refused.
        let settings = RedisSettings { password: Some("s3cret-pw".into()), ..Default::default() };
        let Err(e) = RedisStore::connect(&settings).await else { panic!("AUTH was not sent") };
        let printed = printed(&e);
        assert!(!printed.contains("s3cret-pw"), "{printed}");
    }

    #[test]
    fn a_separate_password_overrides_the_urls() {
        let settings = RedisSettings {
            url: "rediss://cache:6380/2".into(),
            username: Some("app".into()),
            password: Some("pw".into()),
            ..Default::default()
        };
        let info = connection_info(&settings).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(info.redis.username.as_deref(), Some("app"));
        assert_eq!(info.redis.password.as_deref(), Some("pw"));
        assert_eq!(info.redis.db, 2);
        assert!(matches!(info.addr, redis::ConnectionAddr::TcpTls { .. }), "rediss:// is TLS");
    }
}
