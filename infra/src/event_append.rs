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
//!
//! An append can carry an [`AppendGuard`]: a change that must commit with the events or not
//! at all, written into the same statement (a quota reservation: `commands/src/quotas.rs`).
//! Its common table expressions run with the append, and its refusal (or an append that
//! wrote fewer events than it was given) ends the statement with `colloquy_refuse`, which
//! rolls back the guard's changes and the events together. One statement instead of two
//! saves the command a round trip, a transaction and sqlx's check of the connection on its
//! return to the pool (bench/README.md, eleventh round).

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool};

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

/// An aggregate's first snapshot: a second writer's fails on the snapshot's key.
const INSERT_SNAPSHOT: &str = "
    INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
    VALUES ($1, $2, $9, $10, $11::json)";

/// A later snapshot replaces the one before it; no row when another writer moved it on.
const MOVE_SNAPSHOT: &str = "
    UPDATE snapshots SET last_sequence = $9, current_snapshot = $10, payload = $11::json
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $10 - 1";

fn append_with_first_snapshot_sql() -> String {
    format!("WITH appended AS ({INSERT_EVENTS} {EVENTS} ORDER BY e.n RETURNING 1) {INSERT_SNAPSHOT}")
}

/// The events go in only if the snapshot moved.
fn append_with_next_snapshot_sql() -> String {
    format!(
        "WITH moved AS ({MOVE_SNAPSHOT} RETURNING 1)
         {INSERT_EVENTS} {EVENTS} WHERE EXISTS (SELECT 1 FROM moved) ORDER BY e.n"
    )
}

static APPEND: std::sync::LazyLock<String> = std::sync::LazyLock::new(append_sql);
static APPEND_WITH_FIRST_SNAPSHOT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(append_with_first_snapshot_sql);
static APPEND_WITH_NEXT_SNAPSHOT: std::sync::LazyLock<String> = std::sync::LazyLock::new(append_with_next_snapshot_sql);

/// A change that commits with an append or not at all, run in the append's own statement.
pub trait AppendGuard: Send + Sync {
    /// Common table expressions (`name AS (...)`, separated by commas, without `WITH`) run
    /// with the append. Their parameters are numbered from `$first` on, in the order
    /// [`bind`](Self::bind) adds them.
    fn ctes(&self, first: usize) -> String;
    /// A `text` expression over those expressions: null when the append may go ahead,
    /// otherwise why not, which [`append_guarded`] answers as [`AppendError::Refused`]. It
    /// must not be `append_conflict` (the append's own reason).
    fn refusal(&self) -> &str;
    /// Adds the parameters of [`ctes`](Self::ctes), in order.
    fn bind(&self, args: &mut PgArguments) -> Result<(), BoxDynError>;
}

/// Why a guarded append wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The guard's refusal, as its expression said it.
    #[error("the append was refused: {0}")]
    Refused(String),
    /// A conflict or a failure of the store, as for an unguarded append.
    #[error(transparent)]
    Store(#[from] PersistenceError),
}

/// The reason `colloquy_refuse` is given when an append wrote fewer events than it was given
/// (its snapshot moved meanwhile): a conflict.
const APPEND_CONFLICT: &str = "append_conflict";

/// The SQLSTATE `colloquy_refuse` raises (`migrations/20261203000010_colloquy_refuse.sql`).
const REFUSED: &str = "CQ001";

/// Which statement an append runs, by the snapshot it writes.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Events,
    FirstSnapshot,
    NextSnapshot,
}

impl Shape {
    fn of(snapshot: Option<&SnapshotWrite>) -> Self {
        match snapshot {
            None => Self::Events,
            Some(s) if s.version <= 1 => Self::FirstSnapshot,
            Some(_) => Self::NextSnapshot,
        }
    }

    fn unguarded_sql(self) -> &'static str {
        match self {
            Self::Events => APPEND.as_str(),
            Self::FirstSnapshot => APPEND_WITH_FIRST_SNAPSHOT.as_str(),
            Self::NextSnapshot => APPEND_WITH_NEXT_SNAPSHOT.as_str(),
        }
    }

    /// The statement with `guard`'s expressions in it: every table it writes is written in
    /// one statement, which either commits whole or, refused, not at all.
    fn guarded_sql(self, guard: &dyn AppendGuard) -> String {
        let (first, moved, only_if_moved, first_snapshot) = match self {
            Self::Events => (9, String::new(), "", String::new()),
            Self::FirstSnapshot => (12, String::new(), "", format!(", snapshot AS ({INSERT_SNAPSHOT} RETURNING 1)")),
            Self::NextSnapshot => (
                12,
                format!("moved AS ({MOVE_SNAPSHOT} RETURNING 1),"),
                "WHERE EXISTS (SELECT 1 FROM moved)",
                String::new(),
            ),
        };
        format!(
            "WITH {ctes}, {moved}
                  appended AS ({INSERT_EVENTS} {EVENTS} {only_if_moved} ORDER BY e.n RETURNING 1) {first_snapshot}
             SELECT CASE WHEN g.refusal IS NOT NULL THEN colloquy_refuse(g.refusal)
                         WHEN (SELECT count(*) FROM appended) <> cardinality($3::bigint[])
                              THEN colloquy_refuse('{APPEND_CONFLICT}')
                         ELSE true END
               FROM (SELECT ({refusal})::text AS refusal) g",
            ctes = guard.ctes(first),
            refusal = guard.refusal(),
        )
    }
}

/// Appends `events` (all of one aggregate, in sequence order) and `snapshot` atomically, in
/// one statement. Another writer's event at one of these sequences, or a snapshot that
/// moved meanwhile, is an [`PersistenceError::OptimisticLockError`] and writes nothing.
pub async fn append(
    pool: &PgPool,
    aggregate_type: &str,
    events: &[SerializedEvent],
    snapshot: Option<SnapshotWrite>,
) -> Result<(), PersistenceError> {
    append_guarded(pool, aggregate_type, events, snapshot, None).await.map_err(|e| match e {
        AppendError::Store(e) => e,
        AppendError::Refused(reason) => PersistenceError::UnknownError(reason.into()),
    })
}

/// Like [`append`], with `guard`'s changes in the same statement: they commit with the
/// events, and when the guard refuses, or the events cannot all be appended, neither the
/// events nor the guard's changes are written.
pub async fn append_guarded(
    pool: &PgPool,
    aggregate_type: &str,
    events: &[SerializedEvent],
    snapshot: Option<SnapshotWrite>,
    guard: Option<&dyn AppendGuard>,
) -> Result<(), AppendError> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    let aggregate_id = first.aggregate_id.as_str();
    if events.iter().any(|e| e.aggregate_id != aggregate_id) {
        return Err(PersistenceError::UnknownError("one append holds the events of several aggregates".into()).into());
    }
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<&str> = events.iter().map(|e| e.event_version.as_str()).collect();
    let json = |v: &Value| serde_json::to_string(v).map_err(|e| PersistenceError::UnknownError(Box::new(e)));
    let payloads = events.iter().map(|e| json(&e.payload)).collect::<Result<Vec<_>, _>>()?;
    let metadata = events.iter().map(|e| json(&e.metadata)).collect::<Result<Vec<_>, _>>()?;
    // In the order of the events: one process mints v7 ids in increasing order.
    let ids: Vec<uuid::Uuid> = events.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let shape = Shape::of(snapshot.as_ref());
    let bound = |args: &mut PgArguments| -> Result<(), BoxDynError> {
        args.add(aggregate_type)?;
        args.add(aggregate_id)?;
        args.add(&sequences)?;
        args.add(&types)?;
        args.add(&versions)?;
        args.add(&payloads)?;
        args.add(&metadata)?;
        args.add(&ids)?;
        if let Some(s) = &snapshot {
            args.add(s.sequence)?;
            args.add(s.version)?;
            args.add(json(&s.payload)?)?;
        }
        if let Some(guard) = guard {
            guard.bind(args)?;
        }
        Ok(())
    };
    let mut args = PgArguments::default();
    bound(&mut args).map_err(PersistenceError::UnknownError)?;
    let Some(guard) = guard else {
        let done = sqlx::query_with(shape.unguarded_sql(), args).execute(pool).await.map_err(persistence_error)?;
        let written = match shape {
            // The last statement of the `WITH` is the snapshot's insert: one row.
            Shape::FirstSnapshot => done.rows_affected() == 1,
            Shape::Events | Shape::NextSnapshot => done.rows_affected() == events.len() as u64,
        };
        return if written { Ok(()) } else { Err(PersistenceError::OptimisticLockError.into()) };
    };
    let sql = shape.guarded_sql(guard);
    match sqlx::query_with(&sql, args).execute(pool).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(REFUSED) => match db.message() {
            APPEND_CONFLICT => Err(PersistenceError::OptimisticLockError.into()),
            reason => Err(AppendError::Refused(reason.to_string())),
        },
        Err(e) => Err(persistence_error(e).into()),
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
