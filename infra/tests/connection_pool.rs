//! When a pooled connection is checked before it is lent (`postgres::pool_options`): one
//! that sat idle is pinged and replaced if the server dropped it; one in steady use is lent
//! without that round trip, so a break since its last use fails one statement, after which
//! the pool replaces the connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use colloquy_infra::postgres::pool_options_pinging_after;
use colloquy_infra::settings::DatabaseSettings;
use colloquy_infra::testing::{eventually, TestDatabase};
use sqlx::PgPool;

/// A pool of one connection on `db`, pinging connections idle for `idle` or longer.
async fn pool_of_one(db: &TestDatabase, idle: Duration) -> PgPool {
    let settings = DatabaseSettings { url: db.url.clone(), max_connections: 1, ..Default::default() };
    pool_options_pinging_after(&settings, idle).connect(&db.url).await.unwrap()
}

async fn backend_pid(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await
}

/// Waits until the pool's one connection is back among its idle ones. sqlx returns a
/// connection in a task of its own that pings it first: a connection ended while that ping
/// is in flight is discarded there, never lent, which is not what these tests are about.
async fn returned_to_the_pool(pool: &PgPool) {
    eventually("the connection to be back in the pool", || async { (pool.num_idle() == 1).then_some(()) }).await;
}

/// Ends the server process behind `pid`, as a restart or an idle timeout does, and waits
/// until it is gone.
async fn terminate(db: &TestDatabase, pid: i32) {
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&db.pool).await.unwrap();
    assert!(ended);
    eventually("the backend to exit", || async {
        let alive: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(pid)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (!alive).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_the_server_dropped_is_replaced_before_it_is_lent() {
    let db = TestDatabase::create().await;
    // Every connection counts as idle long enough to be pinged.
    let pool = pool_of_one(&db, Duration::ZERO).await;
    let first = backend_pid(&pool).await.unwrap();
    returned_to_the_pool(&pool).await;
    terminate(&db, first).await;

    let second = backend_pid(&pool).await.expect("the broken connection is replaced, not lent");
    assert_ne!(first, second);
}

#[tokio::test]
async fn a_connection_in_steady_use_is_lent_without_a_ping() {
    let db = TestDatabase::create().await;
    // No connection is idle long enough to be pinged.
    let pool = pool_of_one(&db, Duration::from_secs(3600)).await;
    let first = backend_pid(&pool).await.unwrap();
    returned_to_the_pool(&pool).await;
    terminate(&db, first).await;

    // Lent unchecked, the broken connection fails the one statement it is given...
    assert!(backend_pid(&pool).await.is_err(), "a ping before lending would have replaced it");
    // ...and is discarded: the next statement gets a new connection.
    let second = backend_pid(&pool).await.unwrap();
    assert_ne!(first, second);
}
