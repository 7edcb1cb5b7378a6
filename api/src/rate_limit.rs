//! Rate limits in Redis with GCRA: one key per subject holding its theoretical arrival
//! time, updated by one Lua script (atomic) using Redis's own clock. The same script refuses
//! users whose account was deactivated, so that costs no extra round trip.

use colloquy_infra::redis_store::RedisStore;
use colloquy_infra::settings::RateLimitSettings;
use redis::Script;
use uuid::Uuid;

use crate::errors::{ApiError, ErrorCode};

const GCRA: &str = r"
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then
  return {-1, 0}
end
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

enum Verdict {
    Allowed,
    Wait(u64),
    Denied,
}

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

    /// Counts one request of `key`; `Ok(Verdict::Allowed)`, or the wait in ms, or
    /// `Denied` when `deny_key` exists.
    async fn hit(
        &self,
        key: &str,
        deny_key: Option<&str>,
        per_minute: u32,
        burst: u32,
    ) -> Result<Verdict, redis::RedisError> {
        let interval = 60_000 / u64::from(per_minute.max(1));
        let tolerance = interval * u64::from(burst);
        let mut conn = self.redis.conn.clone();
        let mut invocation = self.script.key(key);
        if let Some(deny) = deny_key {
            invocation.key(deny);
        }
        let (allowed, wait): (i64, i64) = invocation.arg(interval).arg(tolerance).invoke_async(&mut conn).await?;
        Ok(match allowed {
            1 => Verdict::Allowed,
            0 => Verdict::Wait(wait.max(0) as u64),
            _ => Verdict::Denied,
        })
    }

    fn user_keys(&self, user: Uuid) -> (String, String) {
        // One hash tag per user keeps both keys in one cluster slot (scripts need that).
        let tag = format!("{{{user}}}");
        (self.redis.key(&["ratelimit", "user", &tag]), self.redis.key(&["deactivated", &tag]))
    }

    /// Refuses every further request of `user` for `ttl_secs` (the access-token lifetime):
    /// a deactivated account's tokens stop working at once, not at their expiry.
    pub async fn deny_user(&self, user: Uuid, ttl_secs: u64) -> Result<(), redis::RedisError> {
        let (_, deny) = self.user_keys(user);
        let mut conn = self.redis.conn.clone();
        redis::cmd("SET").arg(deny).arg(1).arg("EX").arg(ttl_secs.max(1)).query_async::<()>(&mut conn).await
    }

    /// The per-user limit for authenticated routes. Fails open (with a log line) when
    /// Redis is unreachable: an outage of the cache must not take the API down.
    pub async fn check_user(&self, user: Uuid) -> Result<(), ApiError> {
        let (key, deny) = self.user_keys(user);
        match self.hit(&key, Some(&deny), self.settings.per_minute, self.settings.burst).await {
            Ok(Verdict::Allowed) => Ok(()),
            Ok(Verdict::Wait(wait_ms)) => {
                Err(ApiError::RateLimited { retry_after_secs: wait_ms.div_ceil(1000).max(1) })
            }
            Ok(Verdict::Denied) => Err(ApiError::unauthorized("the account is deactivated")),
            Err(e) => {
                tracing::warn!(error = ?e, "Rate limiter unavailable; allowing the request.");
                Ok(())
            }
        }
    }

    /// The per-address limit for login and registration. Fails closed: without Redis,
    /// password guessing would be unlimited.
    pub async fn check_auth(&self, client: &str) -> Result<(), ApiError> {
        let key = self.redis.key(&["ratelimit", "auth", client]);
        let per_minute = self.settings.auth_per_minute;
        match self.hit(&key, None, per_minute, per_minute / 2).await {
            Ok(Verdict::Allowed | Verdict::Denied) => Ok(()),
            Ok(Verdict::Wait(wait_ms)) => {
                Err(ApiError::RateLimited { retry_after_secs: wait_ms.div_ceil(1000).max(1) })
            }
            Err(e) => {
                tracing::error!(error = ?e, "Rate limiter unavailable; refusing authentication.");
                Err(ApiError::new(ErrorCode::Unavailable, "authentication is temporarily unavailable"))
            }
        }
    }
}
