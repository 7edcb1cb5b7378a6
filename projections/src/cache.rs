//! Redis caches of read models, invalidated by generation: every change to a user's data
//! bumps that user's generation, and a cached value is stored with the generation it was
//! read at and served only while that generation is current. A reader that raced a change
//! can only ever store a value of a generation nobody reads any more, so a stale value is
//! never served after the change's generation bump. Redis is a cache only: every value here
//! can be recomputed from Postgres.

use colloquy_infra::redis_store::RedisStore;
use redis::AsyncCommands;
use uuid::Uuid;

/// How long a cached value lives, in seconds.
pub const TTL_SECS: u64 = 300;

fn gen_key(redis: &RedisStore, user: Uuid) -> String {
    redis.key(&["cachegen", &format!("{{{user}}}")])
}

fn value_key(redis: &RedisStore, user: Uuid, name: &str) -> String {
    redis.key(&["cache", &format!("{{{user}}}"), name])
}

/// A cached value as stored: `<generation>:<body>`.
fn stored(generation: u64, body: &str) -> String {
    format!("{generation}:{body}")
}

/// The body of a stored value if it was stored at `generation`.
fn body_at(mut stored: String, generation: u64) -> Option<String> {
    let colon = stored.find(':')?;
    if stored[..colon].parse::<u64>().ok()? != generation {
        return None;
    }
    stored.replace_range(..=colon, "");
    Some(stored)
}

/// Marks every cached view of `user` stale.
pub async fn invalidate(redis: &RedisStore, user: Uuid) -> Result<(), redis::RedisError> {
    let mut conn = redis.conn.clone();
    let key = gen_key(redis, user);
    redis::pipe().incr(&key, 1).ignore().expire(&key, 86_400).ignore().query_async::<()>(&mut conn).await
}

/// A cached value and the generation it was looked up at (to `put` a fresh one under).
///
/// One round trip: the generation and the value are read together (both keys carry the
/// user's hash tag, so they share a cluster slot).
pub async fn get(redis: &RedisStore, user: Uuid, name: &str) -> Result<(u64, Option<String>), redis::RedisError> {
    let mut conn = redis.conn.clone();
    let (generation, value): (Option<u64>, Option<String>) =
        redis::cmd("MGET").arg(gen_key(redis, user)).arg(value_key(redis, user, name)).query_async(&mut conn).await?;
    let generation = generation.unwrap_or(0);
    Ok((generation, value.and_then(|value| body_at(value, generation))))
}

/// Stores `value` under the generation a `get` returned.
pub async fn put(
    redis: &RedisStore,
    user: Uuid,
    generation: u64,
    name: &str,
    value: &str,
) -> Result<(), redis::RedisError> {
    let mut conn = redis.conn.clone();
    conn.set_ex(value_key(redis, user, name), stored(generation, value), TTL_SECS).await
}

/// Drops every cached view (after a rebuild replaced a table under the caches).
pub async fn invalidate_all(redis: &RedisStore) -> Result<u64, redis::RedisError> {
    redis.delete_prefixed("cache").await
}

/// Cache-aside for one of `user`'s views: the cached body of `name` if there is one,
/// otherwise `load`'s, stored for the next reader under the generation seen before loading.
/// With `bypass` (a reader that asked for a particular version) the cache is neither read
/// nor filled. Redis failures only cost the cache, never the read.
pub async fn get_or_load<F, Fut, E>(
    redis: &RedisStore,
    user: Uuid,
    name: &str,
    bypass: bool,
    load: F,
) -> Result<String, E>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String, E>>,
{
    let cached = if bypass { None } else { get(redis, user, name).await.ok() };
    match cached {
        Some((_, Some(body))) => Ok(body),
        Some((generation, None)) => {
            let body = load().await?;
            if let Err(e) = put(redis, user, generation, name, &body).await {
                tracing::debug!(%user, error = %e, "Cache fill failed.");
            }
            Ok(body)
        }
        None => load().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_served_only_at_the_generation_it_was_stored_at() {
        let value = stored(7, "{\"a\":\"b:c\"}");
        assert_eq!(body_at(value.clone(), 7).as_deref(), Some("{\"a\":\"b:c\"}"));
        assert_eq!(body_at(value.clone(), 8), None);
        assert_eq!(body_at(value, 6), None);
        assert_eq!(body_at(stored(0, ""), 0).as_deref(), Some(""));
        assert_eq!(body_at("no generation".into(), 0), None);
        assert_eq!(body_at("x:body".into(), 0), None);
    }
}
