//! Relay lag is measured from positions, never by counting rows (issue 6, item 5): the
//! distance from the relay's checkpoint to the store's last position, two index lookups
//! whatever the size of the backlog.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use colloquy_infra::metrics::Metrics;
use colloquy_infra::ops::Scrape;
use colloquy_infra::testing::{insert_event, TestDatabase};
use colloquy_projections::relay::{self, LagProbe};
use serde_json::json;
use uuid::Uuid;

async fn event(db: impl sqlx::PgExecutor<'_>, aggregate: Uuid, sequence: i64) {
    insert_event(db, "Conversation", aggregate, sequence, json!({"ConversationArchived": {}})).await;
}

async fn set_checkpoint(pool: &sqlx::PgPool, name: &str, position: i64) {
    sqlx::query(
        "INSERT INTO relay_checkpoint (name, last_tx_id, last_position, updated_at)
         SELECT $1, tx_id, position, now() FROM events WHERE position = $2
         ON CONFLICT (name) DO UPDATE SET last_tx_id = EXCLUDED.last_tx_id, last_position = EXCLUDED.last_position",
    )
    .bind(name)
    .bind(position)
    .execute(pool)
    .await
    .unwrap();
}

async fn positions(pool: &sqlx::PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT position FROM events ORDER BY position").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn relay_lag_is_the_distance_between_positions() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    assert_eq!(relay::lag(pool, "kafka").await.unwrap(), 0, "an empty store has no lag");

    let aggregate = Uuid::new_v4();
    for sequence in 1..=3 {
        event(pool, aggregate, sequence).await;
    }
    // An insert rolled back uses up a position: identity values are never handed out twice.
    let mut tx = pool.begin().await.unwrap();
    event(&mut *tx, aggregate, 4).await;
    tx.rollback().await.unwrap();
    event(pool, aggregate, 4).await;
    let stored = positions(pool).await;
    assert_eq!(stored.len(), 4);
    let last = *stored.last().unwrap();
    assert_eq!(last - stored[0], 4, "one position between the third and fourth event was used up");

    // Never ran: everything up to the last position is behind. Four rows, but the lag is the
    // distance in positions (5): what a count of rows could never answer.
    assert_eq!(relay::lag(pool, "kafka").await.unwrap(), last);
    set_checkpoint(pool, "kafka", stored[0]).await;
    assert_eq!(relay::lag(pool, "kafka").await.unwrap(), last - stored[0]);
    set_checkpoint(pool, "kafka", last).await;
    assert_eq!(relay::lag(pool, "kafka").await.unwrap(), 0, "published everything");

    // `/metrics` reports the same figure, refreshed at scrape time.
    set_checkpoint(pool, "kafka", stored[1]).await;
    let scrape = Scrape::new(Metrics::new()).with_probe(Arc::new(LagProbe::new(pool.clone(), "kafka".into())));
    let rendered = scrape.render().await;
    let expected = format!("colloquy_relay_lag_events {}", last - stored[1]);
    assert!(rendered.lines().any(|l| l == expected), "{expected} not in:\n{rendered}");
}
