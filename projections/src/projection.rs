//! What a projection is, and the one routine that applies an event to it exactly once and
//! in per-aggregate order, used alike by live projectors and rebuilds.

use std::collections::HashMap;

use async_trait::async_trait;
use colloquy_infra::event_store::{self, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event can never be applied (malformed, unknown type, data the table refuses):
    /// it goes to the dead-letter topic.
    #[error("poison event")]
    Poison(#[source] Poison),
    /// The database failed; retrying may succeed.
    #[error("read model database failed")]
    Database(#[source] sqlx::Error),
}

/// What makes an event poison, and the error underneath, if any.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Poison {
    /// What is wrong, for people.
    pub reason: String,
    /// The error that showed it.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Poison {
    /// The reason followed by every cause underneath (what the DLQ's `dlq_error` says).
    pub fn describe(&self) -> String {
        let mut text = self.reason.clone();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

impl ApplyError {
    /// A poison event, for `reason`.
    pub fn poison(reason: impl Into<String>) -> Self {
        Self::Poison(Poison { reason: reason.into(), source: None })
    }

    /// A poison event, for `reason`, shown by `source`.
    pub fn poison_because(
        reason: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Poison(Poison { reason: reason.into(), source: Some(source.into()) })
    }
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        // Data exceptions (22xxx) and integrity violations (23xxx) will fail again.
        let poison = matches!(&e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")));
        if poison {
            Self::poison_because("the read model refuses the data", e)
        } else {
            Self::Database(e)
        }
    }
}

impl From<event_store::EventStoreError> for ApplyError {
    fn from(e: event_store::EventStoreError) -> Self {
        match e {
            event_store::EventStoreError::Database(e) => Self::from(e),
            other => Self::poison_because("an event read from the store is unreadable", other),
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
    async fn apply(
        &self,
        conn: &mut PgConnection,
        table: &str,
        event: &StoredEvent,
    ) -> Result<Option<Uuid>, ApplyError>;
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
    let mut outcomes = apply_all_in_order(conn, projection, state, table, std::slice::from_ref(event))
        .await
        .map_err(|failed| failed.error)?;
    Ok(outcomes.pop().unwrap_or(Applied::Duplicate))
}

/// An event of a batch that could not be applied.
#[derive(Debug)]
pub struct BatchFailure {
    /// Its index in the batch.
    pub index: usize,
    /// Why.
    pub error: ApplyError,
}

/// Applies `events` in order, each exactly once per aggregate sequence, filling gaps from
/// the event store, on `conn` (the caller's transaction). Progress is read once for the
/// whole batch and written back once, so a batch costs about one statement per event.
pub async fn apply_all_in_order(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    state: &str,
    table: &str,
    events: &[StoredEvent],
) -> Result<Vec<Applied>, BatchFailure> {
    let fail = |index: usize| move |error: ApplyError| BatchFailure { index, error };
    let mut ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, last_sequence FROM projection_state WHERE projection = $1 AND aggregate_id = ANY($2)",
    )
    .bind(state)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| fail(0)(e.into()))?;
    let loaded: HashMap<String, i64> = rows.into_iter().collect();
    let mut last = loaded.clone();
    let mut outcomes = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let seen = last.get(&event.aggregate_id).copied().unwrap_or(0);
        if event.sequence <= seen {
            outcomes.push(Applied::Duplicate);
            continue;
        }
        let mut touched = Vec::new();
        let mut filled = 0;
        if event.sequence > seen + 1 {
            let missing = event_store::read_aggregate(
                &mut *conn,
                &event.aggregate_type,
                &event.aggregate_id,
                seen,
                Some(event.sequence - 1),
            )
            .await
            .map_err(|e| fail(index)(e.into()))?;
            if missing.len() as i64 != event.sequence - 1 - seen {
                return Err(fail(index)(ApplyError::poison(format!(
                    "{} #{}: events {}..{} are missing from the event store",
                    event.aggregate_id,
                    event.sequence,
                    seen + 1,
                    event.sequence - 1
                ))));
            }
            for e in &missing {
                touched.extend(projection.apply(conn, table, e).await.map_err(fail(index))?);
                filled += 1;
            }
        }
        touched.extend(projection.apply(conn, table, event).await.map_err(fail(index))?);
        touched.sort();
        touched.dedup();
        last.insert(event.aggregate_id.clone(), event.sequence);
        outcomes.push(Applied::Applied { filled, touched });
    }
    // Only aggregates this batch advanced need their progress written.
    let (ids, sequences): (Vec<String>, Vec<i64>) =
        last.into_iter().filter(|(id, seq)| loaded.get(id) != Some(seq)).unzip();
    sqlx::query(
        "INSERT INTO projection_state (projection, aggregate_id, last_sequence)
         SELECT $1, id, seq FROM UNNEST($2::text[], $3::bigint[]) AS t(id, seq)
         ON CONFLICT (projection, aggregate_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence
          WHERE projection_state.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(state)
    .bind(&ids)
    .bind(&sequences)
    .execute(&mut *conn)
    .await
    .map_err(|e| fail(events.len().saturating_sub(1))(e.into()))?;
    Ok(outcomes)
}

/// Decodes the domain event of a stored event, or a poison error.
pub fn domain_event<E: serde::de::DeserializeOwned>(event: &StoredEvent) -> Result<E, ApplyError> {
    event.to_domain().map_err(|e| {
        ApplyError::poison_because(format!("{} is not a valid {}", event.event_type, event.aggregate_type), e)
    })
}
