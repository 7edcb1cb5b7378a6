//! Redis: the connection and cluster-ready key naming under a configurable prefix.

use redis::aio::ConnectionManager;

use crate::settings::RedisSettings;

/// A shared, auto-reconnecting Redis connection plus the key prefix.
#[derive(Clone)]
pub struct RedisStore {
    /// The connection; cheap to clone.
    pub conn: ConnectionManager,
    prefix: String,
}

impl RedisStore {
    /// Connects (fails if the server is unreachable now).
    pub async fn connect(settings: &RedisSettings) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(std::time::Duration::from_secs(2))
            .set_response_timeout(std::time::Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self { conn, prefix: settings.key_prefix.clone() })
    }

    /// The full key for `parts`, e.g. `key(&["user", id])` → `colloquy:user:<id>`.
    pub fn key(&self, parts: &[&str]) -> String {
        format!("{}{}", self.prefix, parts.join(":"))
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
