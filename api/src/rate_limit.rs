//! Rate limits in Redis with GCRA: one key per subject holding its theoretical arrival
//! time, updated by one Lua script (atomic) using Redis's own clock.

use colloquy_infra::redis_store::RedisStore;
use colloquy_infra::settings::RateLimitSettings;
use redis::Script;
use uuid::Uuid;

use crate::errors::ApiError;

const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return {1, 0}
";

/// Checks and counts requests.
pub struct RateLimiter {
    redis: RedisStore,
    script: Script,
    settings: RateLimitSettings,
}

impl RateLimiter {
    /// A limiter over `redis` with `settings`.
    pub fn new(redis: RedisStore, settings: RateLimitSettings) -> Self {
        Self { redis, script: Script::new(GCRA), settings }
    }

    /// Counts one request of `key`; `Ok(None)` when allowed, else the wait in ms.
    async fn hit(&self, key: &str, per_minute: u32, burst: u32) -> Result<Option<u64>, redis::RedisError> {
        let interval = 60_000 / u64::from(per_minute.max(1));
        let tolerance = interval * u64::from(burst);
        let mut conn = self.redis.conn.clone();
        let (allowed, wait): (i64, i64) = self.script.key(key).arg(interval).arg(tolerance).invoke_async(&mut conn).await?;
        Ok((allowed == 0).then_some(wait.max(0) as u64))
    }

    /// The per-user limit for authenticated routes. Fails open (with a log line) when
    /// Redis is unreachable: an outage of the cache must not take the API down.
    pub async fn check_user(&self, user: Uuid) -> Result<(), ApiError> {
        let key = self.redis.key(&["ratelimit", "user", &user.to_string()]);
        match self.hit(&key, self.settings.per_minute, self.settings.burst).await {
            Ok(None) => Ok(()),
            Ok(Some(wait_ms)) => Err(ApiError::RateLimited { retry_after_secs: wait_ms.div_ceil(1000).max(1) }),
            Err(e) => {
                tracing::warn!(error = %e, "Rate limiter unavailable; allowing the request.");
                Ok(())
            }
        }
    }

    /// The per-address limit for login and registration. Fails closed: without Redis,
    /// password guessing would be unlimited.
    pub async fn check_auth(&self, client: &str) -> Result<(), ApiError> {
        let key = self.redis.key(&["ratelimit", "auth", client]);
        let per_minute = self.settings.auth_per_minute;
        match self.hit(&key, per_minute, per_minute / 2).await {
            Ok(None) => Ok(()),
            Ok(Some(wait_ms)) => Err(ApiError::RateLimited { retry_after_secs: wait_ms.div_ceil(1000).max(1) }),
            Err(e) => {
                tracing::error!(error = %e, "Rate limiter unavailable; refusing authentication.");
                Err(ApiError::Unavailable("authentication is temporarily unavailable".into()))
            }
        }
    }
}
