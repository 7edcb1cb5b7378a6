//! Test support for every crate's database-level and end-to-end tests (feature `testing`,
//! enabled only as a dev-dependency): a throwaway, migrated database per test, removed
//! afterwards (also when the test fails), and a polling helper. Panics on set-up failures
//! by design: a test that cannot set up must fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

/// A database of its own for one test, migrated; dropped when this is dropped.
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates `colloquy_test_<random>` on the local server and applies the migrations.
    pub async fn create() -> Self {
        let url = format!(
            "postgres://postgres:postgres@127.0.0.1:5432/colloquy_test_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        sqlx::Postgres::create_database(&url).await.expect("create database");
        // The guard exists before anything else can fail, so the database never outlives a
        // failed set-up.
        let db = Self { pool: PgPoolOptions::new().max_connections(4).connect_lazy(&url).expect("pool"), url };
        crate::postgres::MIGRATOR.run(&db.pool).await.expect("migrate");
        db
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // On a separate thread and runtime: the test's runtime may be gone or unwinding
        // from a panic. The forced drop ends the pool's connections still open.
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { sqlx::Postgres::force_drop_database(&url).await })
        })
        .join();
    }
}

/// Polls `probe` every 20 ms until it yields a value; panics naming `what` after 20 s.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends one event straight into `events`, bypassing the command service: for tests that
/// need events out of order, with gaps, or that the domain would refuse. `payload` is the
/// tagged event, `{"<EventType>": {...}}`; its tag becomes the event type.
pub async fn insert_event<'e>(
    db: impl sqlx::PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: Uuid,
    sequence: i64,
    payload: serde_json::Value,
) {
    let event_type = payload.as_object().and_then(|o| o.keys().next()).cloned().expect("a tagged event");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ($1, $2, $3, $4, '1.0', $5, '{}')",
    )
    .bind(aggregate_type)
    .bind(aggregate_id.to_string())
    .bind(sequence)
    .bind(event_type)
    .bind(payload)
    .execute(db)
    .await
    .expect("insert event");
}
