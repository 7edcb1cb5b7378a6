//! Appending a command's events, and the snapshot due with them, in one statement.
//!
//! postgres-es 0.5 appends in a transaction of its own making: `BEGIN`, one `INSERT` per
//! event, the snapshot's `INSERT` or `UPDATE`, `COMMIT`; at least three round trips to the
//! server for every command, each of them a wake-up of the backend. Here the same rows go
//! in one statement (the events as arrays, `unnest`ed in their order; the snapshot in a
//! data-modifying `WITH`), which PostgreSQL runs as one implicit transaction: all of it
//! commits or none of it does.
//!
//! Each event's id (`event_id`, the CloudEvents `id`) is a UUIDv7 minted here, not the
//! column's default `gen_random_uuid()`: ids that grow with time go in at the right edge of
//! the `events_event_id` index, as `position` does, where random ones dirty a random leaf
//! page per event, and after every checkpoint each such page goes to the WAL whole. With
//! two million events stored, an append after a checkpoint wrote 7.1 KB of WAL instead of
//! 9.6 KB (bench/README.md, eighth round). After the millisecond timestamp come a randomly
//! seeded counter and random bits, so ids stay unique across processes; one that collided
//! would be a unique violation, which the command service retries as a conflict. Nothing
//! reads an order into them: commit order is `tx_id`'s.
//!
//! It also mends two faults of postgres-es's append:
//! - A snapshot *update* that matched no row (another writer moved the snapshot on) is
//!   reported by postgres-es only after its transaction committed the events. Here the
//!   events are inserted only if the snapshot row moved, so a conflict writes nothing.
//! - A snapshot is labelled with the sequence of the last event appended, although cqrs-es
//!   snapshots the aggregate as it stood at the snapshot boundary. A command whose events
//!   cross a boundary (an import of 25 messages at every-20 snapshots) stored the state
//!   after event 20 as the state after event 28, and every later load skipped events 21 to
//!   28. Here the caller says which sequence the snapshot holds.

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use serde_json::Value;
use sqlx::PgPool;

/// The snapshot written together with an append.
#[derive(Debug, Clone)]
pub struct SnapshotWrite {
    /// The aggregate as it stood after the event `sequence`.
    pub payload: Value,
    /// The sequence the snapshot holds (a snapshot boundary, not necessarily the last
    /// event appended with it).
    pub sequence: i64,
    /// The snapshot's version: 1 for the first, and one more for each later one.
    pub version: i64,
}

/// The events, from arrays in their given order. `$1` aggregate type, `$2` aggregate id,
/// `$3..$8` sequences, types, versions, payloads and metadata (JSON text, stored as given),
/// event ids.
const EVENTS: &str = "
    SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload::json, e.metadata::json, e.event_id
      FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::uuid[]) WITH ORDINALITY
           AS e(sequence, event_type, event_version, payload, metadata, event_id, n)";

const INSERT_EVENTS: &str =
    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, event_id)";

fn append_sql() -> String {
    format!("{INSERT_EVENTS} {EVENTS} ORDER BY e.n")
}

/// The first snapshot of an aggregate: a second writer's fails on the snapshot's key.
fn append_with_first_snapshot_sql() -> String {
    format!(
        "WITH appended AS ({INSERT_EVENTS} {EVENTS} ORDER BY e.n RETURNING 1)
         INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ($1, $2, $9, $10, $11::json)"
    )
}

/// A later snapshot replaces the one before it, and the events go in only if it did.
fn append_with_next_snapshot_sql() -> String {
    format!(
        "WITH moved AS (
             UPDATE snapshots SET last_sequence = $9, current_snapshot = $10, payload = $11::json
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $10 - 1
             RETURNING 1)
         {INSERT_EVENTS} {EVENTS} WHERE EXISTS (SELECT 1 FROM moved) ORDER BY e.n"
    )
}

static APPEND: std::sync::LazyLock<String> = std::sync::LazyLock::new(append_sql);
static APPEND_WITH_FIRST_SNAPSHOT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(append_with_first_snapshot_sql);
static APPEND_WITH_NEXT_SNAPSHOT: std::sync::LazyLock<String> = std::sync::LazyLock::new(append_with_next_snapshot_sql);

/// Appends `events` (all of one aggregate, in sequence order) and `snapshot` atomically, in
/// one statement. Another writer's event at one of these sequences, or a snapshot that
/// moved meanwhile, is an [`PersistenceError::OptimisticLockError`] and writes nothing.
pub async fn append(
    pool: &PgPool,
    aggregate_type: &str,
    events: &[SerializedEvent],
    snapshot: Option<SnapshotWrite>,
) -> Result<(), PersistenceError> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    let aggregate_id = first.aggregate_id.as_str();
    if events.iter().any(|e| e.aggregate_id != aggregate_id) {
        return Err(PersistenceError::UnknownError("one append holds the events of several aggregates".into()));
    }
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<&str> = events.iter().map(|e| e.event_version.as_str()).collect();
    let json = |v: &Value| serde_json::to_string(v).map_err(|e| PersistenceError::UnknownError(Box::new(e)));
    let payloads = events.iter().map(|e| json(&e.payload)).collect::<Result<Vec<_>, _>>()?;
    let metadata = events.iter().map(|e| json(&e.metadata)).collect::<Result<Vec<_>, _>>()?;
    // In the order of the events: one process mints v7 ids in increasing order.
    let ids: Vec<uuid::Uuid> = events.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let sql = match &snapshot {
        None => APPEND.as_str(),
        Some(s) if s.version <= 1 => APPEND_WITH_FIRST_SNAPSHOT.as_str(),
        Some(_) => APPEND_WITH_NEXT_SNAPSHOT.as_str(),
    };
    let mut query = sqlx::query(sql)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(&sequences)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&ids);
    if let Some(s) = &snapshot {
        query = query.bind(s.sequence).bind(s.version).bind(json(&s.payload)?);
    }
    let done = query.execute(pool).await.map_err(persistence_error)?;
    let written = match &snapshot {
        // The last statement of the `WITH` is the snapshot's insert: one row.
        Some(s) if s.version <= 1 => done.rows_affected() == 1,
        _ => done.rows_affected() == events.len() as u64,
    };
    if written {
        Ok(())
    } else {
        Err(PersistenceError::OptimisticLockError)
    }
}

/// A unique violation is another writer's append (or snapshot) at the same place.
fn persistence_error(e: sqlx::Error) -> PersistenceError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => PersistenceError::OptimisticLockError,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            PersistenceError::ConnectionError(Box::new(e))
        }
        _ => PersistenceError::UnknownError(Box::new(e)),
    }
}

/// The sequence a snapshot taken with events appended after `sequence` holds, under
/// cqrs-es 0.5's rule for a snapshot every `every` events: the last snapshot boundary the
/// events reach (`SourceOfTruth::commit_snapshot_with_addl_events`). `None` when none is
/// due.
pub fn snapshot_sequence(every: Option<usize>, sequence: usize, events: usize) -> Option<usize> {
    let every = every.filter(|e| *e > 0)?;
    let last = sequence + events;
    let boundary = last - last % every;
    (boundary > sequence).then_some(boundary)
}

#[cfg(test)]
#[path = "event_append_tests.rs"]
mod database_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_holds_the_last_boundary_the_events_reach() {
        let every = Some(20);
        assert_eq!(snapshot_sequence(every, 0, 1), None);
        assert_eq!(snapshot_sequence(every, 18, 1), None);
        assert_eq!(snapshot_sequence(every, 19, 1), Some(20));
        assert_eq!(snapshot_sequence(every, 19, 2), Some(20), "21 is past the boundary the snapshot holds");
        assert_eq!(snapshot_sequence(every, 0, 28), Some(20));
        assert_eq!(snapshot_sequence(every, 15, 30), Some(40));
        assert_eq!(snapshot_sequence(every, 20, 1), None);
        assert_eq!(snapshot_sequence(None, 19, 1), None);
        assert_eq!(snapshot_sequence(Some(0), 19, 1), None);
    }

    #[test]
    fn the_boundary_agrees_with_cqrs_es_on_how_many_events_the_snapshot_applies() {
        // cqrs-es's own arithmetic, as in `SourceOfTruth::commit_snapshot_with_addl_events`.
        let cqrs = |max: usize, current: usize, n: usize| {
            let next = max - (current % max);
            if n < next {
                0
            } else {
                let after = n - next;
                next + after - (after % max)
            }
        };
        for every in [1, 3, 20] {
            for current in 0..45 {
                for n in 1..45 {
                    let applied = cqrs(every, current, n);
                    let expected = (applied > 0).then_some(current + applied);
                    assert_eq!(snapshot_sequence(Some(every), current, n), expected, "{every} {current} {n}");
                }
            }
        }
    }
}
