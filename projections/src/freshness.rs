//! Read-your-writes: wait (bounded) until a projection has reached an aggregate version.

use std::time::Duration;

use sqlx::PgPool;

/// The version `projection` has applied for `aggregate_id` (0: nothing yet).
pub async fn applied_version(pool: &PgPool, projection: &str, aggregate_id: &str) -> Result<i64, sqlx::Error> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT last_sequence FROM projection_state WHERE projection = $1 AND aggregate_id = $2")
            .bind(projection)
            .bind(aggregate_id)
            .fetch_optional(pool)
            .await?;
    Ok(v.unwrap_or(0))
}

/// Waits until every projection in `projections` has reached `min_version` for
/// `aggregate_id`, polling with a growing interval; `false` when `timeout` passed first.
pub async fn wait_for_version(
    pool: &PgPool,
    projections: &[&str],
    aggregate_id: &str,
    min_version: i64,
    timeout: Duration,
) -> Result<bool, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        let reached: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_state WHERE projection = ANY($1) AND aggregate_id = $2 AND last_sequence >= $3",
        )
        .bind(projections)
        .bind(aggregate_id)
        .bind(min_version)
        .fetch_one(pool)
        .await?;
        if reached as usize >= projections.len() {
            return Ok(true);
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
