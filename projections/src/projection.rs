//! What a projection is, and the one routine that applies an event to it exactly once and
//! in per-aggregate order, used alike by live projectors and rebuilds.

use async_trait::async_trait;
use colloquy_infra::event_log::{self, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event can never be applied (malformed, unknown type, data the table refuses):
    /// it goes to the dead-letter topic.
    #[error("poison event: {0}")]
    Poison(String),
    /// The database failed; retrying may succeed.
    #[error("database: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        // Data exceptions (22xxx) and integrity violations (23xxx) will fail again.
        let poison = matches!(&e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")));
        if poison { Self::Poison(e.to_string()) } else { Self::Database(e) }
    }
}

impl From<event_log::EventLogError> for ApplyError {
    fn from(e: event_log::EventLogError) -> Self {
        match e {
            event_log::EventLogError::Database(e) => Self::from(e),
            other => Self::Poison(other.to_string()),
        }
    }
}

/// A read model built from events of some aggregate types.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name (consumer group, `projection_state` key, `colloquy rebuild <name>`).
    fn name(&self) -> &'static str;
    /// The live table.
    fn table(&self) -> &'static str;
    /// The aggregate types whose events it reads.
    fn aggregate_types(&self) -> &'static [&'static str];
    /// Applies one event to `table` (the live table or a rebuild's fresh one). Returns the
    /// user whose cached views the change makes stale, if any. Must be deterministic:
    /// timestamps come from the event, never from the clock.
    async fn apply(&self, conn: &mut PgConnection, table: &str, event: &StoredEvent) -> Result<Option<Uuid>, ApplyError>;
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Already applied before (a redelivery): nothing changed.
    Duplicate,
    /// Applied, after `filled` missing earlier events were read from the event store.
    Applied {
        /// Missing predecessors applied first.
        filled: usize,
        /// Users whose caches are stale.
        touched: Vec<Uuid>,
    },
}

/// Applies `event` to `projection` if it is new, filling any gap before it from the event
/// store, and records the aggregate's new sequence under `state` — all on `conn`, which
/// the caller wraps in a transaction.
pub async fn apply_in_order(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    state: &str,
    table: &str,
    event: &StoredEvent,
) -> Result<Applied, ApplyError> {
    let last: i64 = sqlx::query_scalar("SELECT last_sequence FROM projection_state WHERE projection = $1 AND aggregate_id = $2")
        .bind(state)
        .bind(&event.aggregate_id)
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(0);
    if event.sequence <= last {
        return Ok(Applied::Duplicate);
    }
    let mut touched = Vec::new();
    let mut filled = 0;
    if event.sequence > last + 1 {
        let missing = event_log::read_aggregate(&mut *conn, &event.aggregate_type, &event.aggregate_id, last, Some(event.sequence - 1)).await?;
        if missing.len() as i64 != event.sequence - 1 - last {
            return Err(ApplyError::Poison(format!(
                "{} #{}: events {}..{} are missing from the event store",
                event.aggregate_id,
                event.sequence,
                last + 1,
                event.sequence - 1
            )));
        }
        for e in &missing {
            touched.extend(projection.apply(conn, table, e).await?);
            filled += 1;
        }
    }
    touched.extend(projection.apply(conn, table, event).await?);
    sqlx::query(
        "INSERT INTO projection_state (projection, aggregate_id, last_sequence) VALUES ($1, $2, $3)
         ON CONFLICT (projection, aggregate_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence",
    )
    .bind(state)
    .bind(&event.aggregate_id)
    .bind(event.sequence)
    .execute(&mut *conn)
    .await?;
    touched.sort();
    touched.dedup();
    Ok(Applied::Applied { filled, touched })
}

/// Decodes the domain event of a stored event, or a poison error.
pub fn domain_event<E: serde::de::DeserializeOwned>(event: &StoredEvent) -> Result<E, ApplyError> {
    event.to_domain().map_err(|e| ApplyError::Poison(format!("{} is not a valid {}: {e}", event.event_type, event.aggregate_type)))
}
