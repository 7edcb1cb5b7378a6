//! The PostgreSQL pool and the migrations.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::settings::DatabaseSettings;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects a pool (lazily checked: the first query fails if the server is unreachable).
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect(&settings.url)
        .await
}

/// A pool for the HTTP API, whose handlers run on actix's per-worker runtimes.
///
/// A connection is bound to the runtime that opened it and breaks when that runtime ends;
/// actix workers end one by one at shutdown (idle ones first), so a connection one of them
/// opened could fail a request still running on another. Opening every connection up
/// front, from the caller's long-lived runtime (`min_connections = max_connections`), means
/// handlers only ever borrow connections that outlive them. It also keeps connection set-up
/// out of request latency.
pub async fn connect_for_http(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect(&settings.url)
        .await
}

/// Creates the configured database when it does not exist yet (the server's own
/// `CREATE DATABASE`, through sqlx), so a fresh server needs nothing done by hand.
pub async fn create_database_if_missing(settings: &DatabaseSettings) -> Result<bool, sqlx::Error> {
    use sqlx::migrate::MigrateDatabase;
    if sqlx::Postgres::database_exists(&settings.url).await? {
        return Ok(false);
    }
    sqlx::Postgres::create_database(&settings.url).await?;
    Ok(true)
}

/// Applies pending migrations; safe to run from several processes at once (sqlx takes an
/// advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
