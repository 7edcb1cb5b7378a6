//! The PostgreSQL pool, the migrations, and preparing the database at start-up.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::settings::{redact_url, DatabaseSettings};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Reaching or preparing the database failed. Every message names the server by its URL
/// with the password replaced by `***`; the cause underneath is sqlx's, which never
/// repeats the URL.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The server could not be reached, refused the credentials, or the URL is malformed.
    #[error("could not connect to PostgreSQL at {url}")]
    Connect {
        /// The configured URL, password redacted.
        url: String,
        /// What went wrong.
        #[source]
        source: sqlx::Error,
    },
    /// Creating the database failed.
    #[error("could not create the database at {url}")]
    Create {
        /// The configured URL, password redacted.
        url: String,
        /// What went wrong.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the migrations failed.
    #[error("could not migrate the database at {url}")]
    Migrate {
        /// The configured URL, password redacted.
        url: String,
        /// What went wrong.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

fn connect_error(settings: &DatabaseSettings) -> impl Fn(sqlx::Error) -> DatabaseError + '_ {
    move |source| DatabaseError::Connect { url: redact_url(&settings.url), source }
}

/// A pooled connection idle for at least this long is pinged before it is handed out.
pub const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// The options of every pool: its size, how long to wait for a connection, and when to
/// check a connection's liveness before lending it.
///
/// sqlx checks every connection with a round trip before lending it
/// (`test_before_acquire`, on by default), so a command of three statements paid three
/// extra round trips, each waking a PostgreSQL backend. A connection in steady use has just
/// proven itself: only one that sat idle for [`PING_WHEN_IDLE_FOR`] or longer (the ones a
/// server restart or an idle-connection timeout has most likely broken) is pinged, and
/// replaced when the ping fails. A busy connection broken since its last use fails its
/// next statement instead, which answers that one request with an error and discards the
/// connection (sqlx tests every connection on its return to the pool). Nothing that was
/// acknowledged depends on it.
pub fn pool_options(settings: &DatabaseSettings) -> PgPoolOptions {
    pool_options_pinging_after(settings, PING_WHEN_IDLE_FOR)
}

/// [`pool_options`] with another idle time before a ping (the tests use the extremes).
pub fn pool_options_pinging_after(settings: &DatabaseSettings, idle: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= idle {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Connects a pool, opening its first connection now: an unreachable server fails here.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, DatabaseError> {
    pool_options(settings).connect(&settings.url).await.map_err(connect_error(settings))
}

/// A pool for the HTTP API, whose handlers run on actix's per-worker runtimes.
///
/// A connection is bound to the runtime that opened it and breaks when that runtime ends;
/// actix workers end one by one at shutdown (idle ones first), so a connection one of them
/// opened could fail a request still running on another. Opening every connection up
/// front, from the caller's long-lived runtime (`min_connections = max_connections`), means
/// handlers only ever borrow connections that outlive them. It also keeps connection set-up
/// out of request latency.
pub async fn connect_for_http(settings: &DatabaseSettings) -> Result<PgPool, DatabaseError> {
    pool_options(settings)
        .min_connections(settings.max_connections)
        .connect(&settings.url)
        .await
        .map_err(connect_error(settings))
}

/// The advisory lock that serialises creating (and first migrating) the database `name`,
/// taken in the maintenance database: a stable 63-bit FNV-1a hash of the name.
fn creation_lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in format!("colloquy.create_database.{name}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h >> 1) as i64
}

/// Makes the configured database ready: creates it when it does not exist yet, then
/// applies pending migrations. Returns whether it created the database.
///
/// Any number of processes may call this at once (`serve`, `relay` and `project` started
/// together on a fresh server). When the database exists, only the migrations run, under
/// sqlx's own advisory lock in that database. When it does not, the process takes an
/// advisory lock in the maintenance database (`postgres`, or `template1` when the
/// database itself is called `postgres`, as `createdb` does), checks again whether another
/// process created it meanwhile, creates it if not and migrates it before letting go, so
/// the others find it created and migrated. The lock is a session lock: a process that dies
/// holding it releases it with its connection.
pub async fn prepare(settings: &DatabaseSettings) -> Result<bool, DatabaseError> {
    let options = PgConnectOptions::from_str(&settings.url).map_err(connect_error(settings))?;
    match PgConnection::connect_with(&options).await {
        Ok(mut conn) => {
            let migrated = migrate_on(settings, &mut conn).await;
            let _ = conn.close().await;
            return migrated.map(|()| false);
        }
        Err(e) if is_missing_database(&e) => {}
        Err(e) => return Err(connect_error(settings)(e)),
    }
    let name = options.get_database().unwrap_or(options.get_username()).to_string();
    let maintenance = options.clone().database(if name == "postgres" { "template1" } else { "postgres" });
    let mut admin = PgConnection::connect_with(&maintenance).await.map_err(connect_error(settings))?;
    let created = create_and_migrate(settings, &options, &name, &mut admin).await;
    // Closing the session releases the lock (also when the above failed half-way).
    let _ = admin.close().await;
    created
}

async fn create_and_migrate(
    settings: &DatabaseSettings,
    options: &PgConnectOptions,
    name: &str,
    admin: &mut PgConnection,
) -> Result<bool, DatabaseError> {
    let create_error = |source| DatabaseError::Create { url: redact_url(&settings.url), source };
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(creation_lock_key(name))
        .execute(&mut *admin)
        .await
        .map_err(create_error)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut *admin)
        .await
        .map_err(create_error)?;
    if !exists {
        admin
            .execute(format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")).as_str())
            .await
            .map_err(create_error)?;
    }
    let mut conn = PgConnection::connect_with(options).await.map_err(connect_error(settings))?;
    let migrated = migrate_on(settings, &mut conn).await;
    let _ = conn.close().await;
    migrated.map(|()| !exists)
}

/// `3D000 invalid_catalog_name`: the database named in the URL does not exist.
fn is_missing_database(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|code| code == "3D000")
}

async fn migrate_on(settings: &DatabaseSettings, conn: &mut PgConnection) -> Result<(), DatabaseError> {
    MIGRATOR.run_direct(conn).await.map_err(|source| DatabaseError::Migrate { url: redact_url(&settings.url), source })
}

/// Applies pending migrations; safe to run from several processes at once (sqlx takes an
/// advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
