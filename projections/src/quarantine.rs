//! The quarantine (`projection_quarantine`): aggregates a projection has set aside because
//! one of their events could not be applied. The poison event is dead-lettered once with
//! its cause and recorded here; later events of the aggregate are skipped for that
//! projection (counted as `projection_events_total{outcome="quarantined"}`), instead of
//! being retried forever or stalling the rest. Other aggregates and other projections are
//! not affected. After fixing the cause, an operator clears the row
//! (`colloquy quarantine clear <projection> <aggregate_id>`), which re-applies the
//! aggregate's events from the event store ([`crate::reconcile::catch_up`]).

use chrono::{DateTime, Utc};
use colloquy_infra::event_store::StoredEvent;
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

/// One quarantined aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Quarantined {
    /// The projection (a rebuild's own progress is `<name>#rebuild` until its switch-over).
    pub projection: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The first event that could not be applied.
    pub sequence: i64,
    /// Its id, when the event store has it.
    pub event_id: Option<Uuid>,
    /// Why, with every cause.
    pub reason: String,
    /// When.
    pub quarantined_at: DateTime<Utc>,
}

/// Quarantines `event`'s aggregate under `state` (the first failure wins).
pub(crate) async fn add<'e>(
    db: impl PgExecutor<'e>,
    state: &str,
    event: &StoredEvent,
    sequence: i64,
    event_id: Option<Uuid>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_quarantine (projection, aggregate_id, aggregate_type, sequence, event_id, reason)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (projection, aggregate_id) DO NOTHING",
    )
    .bind(state)
    .bind(&event.aggregate_id)
    .bind(&event.aggregate_type)
    .bind(sequence)
    .bind(event_id)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}

/// Every quarantined aggregate (of one projection, or of all), oldest first.
pub async fn list<'e>(db: impl PgExecutor<'e>, projection: Option<&str>) -> Result<Vec<Quarantined>, sqlx::Error> {
    sqlx::query_as(
        "SELECT projection, aggregate_type, aggregate_id, sequence, event_id, reason, quarantined_at
           FROM projection_quarantine
          WHERE $1::text IS NULL OR projection = $1
          ORDER BY quarantined_at, projection, aggregate_id",
    )
    .bind(projection)
    .fetch_all(db)
    .await
}

/// Lifts the quarantine of one aggregate; returns what it was (`None`: not quarantined).
/// Its events are not re-applied here: [`crate::reconcile::catch_up`] does that.
pub async fn clear<'e>(
    db: impl PgExecutor<'e>,
    projection: &str,
    aggregate_id: &str,
) -> Result<Option<Quarantined>, sqlx::Error> {
    sqlx::query_as(
        "DELETE FROM projection_quarantine WHERE projection = $1 AND aggregate_id = $2
         RETURNING projection, aggregate_type, aggregate_id, sequence, event_id, reason, quarantined_at",
    )
    .bind(projection)
    .bind(aggregate_id)
    .fetch_optional(db)
    .await
}

/// Forgets every quarantine under `state` (a rebuild starting afresh).
pub(crate) async fn forget<'e>(db: impl PgExecutor<'e>, state: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM projection_quarantine WHERE projection = $1").bind(state).execute(db).await?;
    Ok(())
}

/// Hands the quarantines found under `from` (a rebuild) to `to` (the live projection),
/// replacing the live ones: the rebuilt table is what they describe now.
pub(crate) async fn hand_over(conn: &mut sqlx::PgConnection, from: &str, to: &str) -> Result<(), sqlx::Error> {
    forget(&mut *conn, to).await?;
    sqlx::query("UPDATE projection_quarantine SET projection = $1 WHERE projection = $2")
        .bind(to)
        .bind(from)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
