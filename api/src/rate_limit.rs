//! Rate limits in Redis, each one Lua script (atomic) on Redis's own clock:
//!
//! - per user and per client address, GCRA: one key per subject holding its theoretical
//!   arrival time. The per-user script also looks at the session's refusal marker, so the
//!   negative cache of revoked sessions costs no extra round trip;
//! - per account (normalised e-mail address), an exponential backoff after failed logins.
//!
//! Redis only caches refusals of tokens: the session tables in PostgreSQL decide
//! (see [`crate::auth`]); a missing marker costs one query, never a wrongly accepted token.

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

/// A login attempt on an account. Answers the ms to wait while the account backs off;
/// otherwise counts the attempt as a failure right away (so concurrent guesses cannot all
/// pass before the first one is counted; a success resets the count) and answers 0. From
/// the `free`-th failure on, the next attempt waits `base * 2^(failures - free)` ms, at
/// most `max`. Failures are forgotten after `window` ms without an attempt.
const LOGIN_BACKOFF: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local free = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local locked_until = tonumber(redis.call('HGET', KEYS[1], 'until') or 0)
if now < locked_until then
  return locked_until - now
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local wait = 0
if failures >= free then
  wait = math.floor(base * math.pow(2, math.min(failures - free, 40)))
  if wait > max then wait = max end
  redis.call('HSET', KEYS[1], 'until', now + wait)
end
redis.call('PEXPIRE', KEYS[1], wait + window)
return 0
";

enum Verdict {
    Allowed,
    Wait(u64),
    Denied,
}

fn retry_after(wait_ms: u64) -> ApiError {
    ApiError::RateLimited { retry_after_secs: wait_ms.div_ceil(1000).max(1) }
}

/// Checks and counts requests.
pub struct RateLimiter {
    redis: RedisStore,
    gcra: Script,
    backoff: Script,
    settings: RateLimitSettings,
}

impl RateLimiter {
    /// A limiter over `redis` with `settings`.
    pub fn new(redis: RedisStore, settings: RateLimitSettings) -> Self {
        Self { redis, gcra: Script::new(GCRA), backoff: Script::new(LOGIN_BACKOFF), settings }
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
        let mut invocation = self.gcra.key(key);
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

    fn user_keys(&self, user: Uuid, session: Uuid) -> (String, String) {
        // One hash tag per user keeps both keys in one cluster slot (scripts need that).
        let tag = format!("{{{user}}}");
        (self.redis.key(&["ratelimit", "user", &tag]), self.redis.key(&["refused", &tag, &session.to_string()]))
    }

    /// Caches that the tokens of `session` are refused (the session tables said so), for
    /// `ttl_secs` (the token's remaining lifetime). Only a cache: without it, the tables
    /// are asked again and refuse again.
    pub async fn remember_refused(&self, user: Uuid, session: Uuid, ttl_secs: u64) -> Result<(), redis::RedisError> {
        let (_, refused) = self.user_keys(user, session);
        let mut conn = self.redis.conn.clone();
        redis::cmd("SET").arg(refused).arg(1).arg("EX").arg(ttl_secs.max(1)).query_async::<()>(&mut conn).await
    }

    /// The per-user limit for authenticated routes, and the cached refusal of the token's
    /// session (401 without asking PostgreSQL). Fails open (with a log line) when Redis is
    /// unreachable: an outage of the cache must not take the API down, and the session
    /// tables still refuse revoked tokens.
    pub async fn check_user(&self, user: Uuid, session: Uuid) -> Result<(), ApiError> {
        let (key, refused) = self.user_keys(user, session);
        match self.hit(&key, Some(&refused), self.settings.per_minute, self.settings.burst).await {
            Ok(Verdict::Allowed) => Ok(()),
            Ok(Verdict::Wait(wait_ms)) => Err(retry_after(wait_ms)),
            Ok(Verdict::Denied) => Err(ApiError::unauthorized("the access token was revoked")),
            Err(e) => {
                tracing::warn!(error = ?e, "Rate limiter unavailable; allowing the request.");
                Ok(())
            }
        }
    }

    /// The per-address limit for login, registration and refresh. Generous (many people
    /// can share an address); the per-account backoff is what slows password guessing.
    /// Fails closed: without Redis, password guessing would be unlimited.
    pub async fn check_auth(&self, client: &str) -> Result<(), ApiError> {
        let key = self.redis.key(&["ratelimit", "auth", client]);
        match self.hit(&key, None, self.settings.auth_per_minute, self.settings.auth_burst).await {
            Ok(Verdict::Allowed | Verdict::Denied) => Ok(()),
            Ok(Verdict::Wait(wait_ms)) => Err(retry_after(wait_ms)),
            Err(e) => {
                tracing::error!(error = ?e, "Rate limiter unavailable; refusing authentication.");
                Err(ApiError::new(ErrorCode::Unavailable, "authentication is temporarily unavailable"))
            }
        }
    }

    fn login_key(&self, account: &str) -> String {
        self.redis.key(&["login-backoff", account])
    }

    /// Admits a login attempt on `account` (see `colloquy_commands::users::login_throttle_key`)
    /// and counts it as a failure until [`Self::login_succeeded`] says otherwise; 429 with
    /// `Retry-After` while the account backs off. The answer is the same whether or not an
    /// account has the address. Fails closed, like [`Self::check_auth`].
    pub async fn begin_login(&self, account: &str) -> Result<(), ApiError> {
        let s = &self.settings;
        let mut conn = self.redis.conn.clone();
        let outcome: Result<i64, _> = self
            .backoff
            .key(self.login_key(account))
            .arg(s.login_failures_free.max(1))
            .arg(s.login_backoff_base_secs.saturating_mul(1000))
            .arg(s.login_backoff_max_secs.saturating_mul(1000))
            .arg(s.login_failure_window_secs.saturating_mul(1000).max(1000))
            .invoke_async(&mut conn)
            .await;
        match outcome {
            Ok(wait_ms) if wait_ms > 0 => Err(retry_after(wait_ms as u64)),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = ?e, "Login backoff unavailable; refusing authentication.");
                Err(ApiError::new(ErrorCode::Unavailable, "authentication is temporarily unavailable"))
            }
        }
    }

    /// Forgets `account`'s failures after a successful login.
    pub async fn login_succeeded(&self, account: &str) {
        let mut conn = self.redis.conn.clone();
        if let Err(e) = redis::cmd("DEL").arg(self.login_key(account)).query_async::<()>(&mut conn).await {
            tracing::warn!(error = ?e, "Could not reset the login backoff.");
        }
    }
}
