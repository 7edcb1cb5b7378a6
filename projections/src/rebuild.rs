//! Rebuilds a projection from the event store alone (Kafka's retention is finite): into a
//! fresh table, then an atomic switch. Readers never see an empty or half-built table; at
//! most they wait for the moment of the switch.

use colloquy_infra::event_store::{self, LogCursor};
use sqlx::PgPool;

use crate::projection::{apply_all_in_order, ApplyError, Projection};

/// Events read and applied per transaction while building.
const PAGE: i64 = 1_000;

/// Rebuild failures.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Reading the event store failed.
    #[error(transparent)]
    EventLog(#[from] event_store::EventStoreError),
    /// An event could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events applied.
    pub events: u64,
}

/// Rebuilds `projection` and switches the live table over to the result.
pub async fn rebuild(pool: &PgPool, projection: &dyn Projection) -> Result<RebuildReport, RebuildError> {
    let live = projection.table();
    let fresh = format!("{live}_rebuild");
    let state = format!("{}#rebuild", projection.name());
    let types: Vec<String> = projection.aggregate_types().iter().map(|s| s.to_string()).collect();

    sqlx::query(&format!("DROP TABLE IF EXISTS {fresh}")).execute(pool).await?;
    sqlx::query(&format!("CREATE TABLE {fresh} (LIKE {live} INCLUDING ALL)")).execute(pool).await?;
    sqlx::query("DELETE FROM projection_state WHERE projection = $1").bind(&state).execute(pool).await?;

    // Build outside any lock, a page per transaction.
    let mut cursor = LogCursor::default();
    let mut events = 0u64;
    loop {
        let page = event_store::read_committed(pool, cursor, Some(&types), PAGE).await?;
        let Some((_, last)) = page.last() else { break };
        cursor = *last;
        let batch: Vec<_> = page.into_iter().map(|(e, _)| e).collect();
        let mut tx = pool.begin().await?;
        apply_all_in_order(&mut tx, projection, &state, &fresh, &batch).await.map_err(|f| f.error)?;
        tx.commit().await?;
        events += batch.len() as u64;
    }

    // Switch: lock the live table (the live projector waits), catch up with what was
    // committed meanwhile, swap the tables and hand the rebuilt progress to the live name.
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE")).execute(&mut *tx).await?;
    loop {
        let page = event_store::read_committed(&mut *tx, cursor, Some(&types), PAGE).await?;
        let Some((_, last)) = page.last() else { break };
        cursor = *last;
        let page: Vec<_> = page.into_iter().map(|(e, _)| e).collect();
        apply_all_in_order(&mut tx, projection, &state, &fresh, &page).await.map_err(|f| f.error)?;
        events += page.len() as u64;
    }
    sqlx::query(&format!("DROP TABLE {live}")).execute(&mut *tx).await?;
    sqlx::query(&format!("ALTER TABLE {fresh} RENAME TO {live}")).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM projection_state WHERE projection = $1").bind(projection.name()).execute(&mut *tx).await?;
    sqlx::query("UPDATE projection_state SET projection = $1 WHERE projection = $2")
        .bind(projection.name())
        .bind(&state)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(projection = projection.name(), events, "Projection rebuilt and switched over.");
    Ok(RebuildReport { events })
}
