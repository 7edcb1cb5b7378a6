//! Snapshots that survive code changes.
//!
//! cqrs-es 0.5 replays every event when a stored snapshot no longer deserialises into the
//! aggregate (a field was added without a default, a type changed), but it then forgets
//! that a snapshot row exists: the next commit that is due a snapshot *inserts* snapshot
//! version 1 over the existing row, postgres-es reports the primary-key violation as an
//! optimistic-concurrency conflict, and every later command crossing a snapshot boundary
//! answers 409 for ever. [`SnapshotTolerant`] wraps the repository and hands cqrs-es an
//! unreadable snapshot as "the initial state at sequence 0, snapshot version N": the
//! aggregate is rebuilt from all its events and the next snapshot *updates* version N,
//! replacing the unreadable payload.
//!
//! It also appends through [`event_append`]: one statement per command instead of
//! postgres-es's transaction of three or more, with its snapshot labelled by the sequence
//! it holds. The command service no longer reaches this `persist` (it appends itself, so
//! that a guard shares the statement); it stays because cqrs-es's repository trait requires
//! it, and anything that uses cqrs-es's `commit` still gets the one-statement append.

use std::future::Future;

use colloquy_infra::event_append::{self, SnapshotWrite};
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

/// The event repository with unreadable snapshots treated as absent and appends in one
/// statement (see the module docs).
pub struct SnapshotTolerant {
    reads: PostgresEventRepository,
    pool: PgPool,
    snapshot_every: Option<usize>,
}

impl SnapshotTolerant {
    /// The repository on `pool`, for an aggregate snapshotted every `snapshot_every`
    /// events (as given to cqrs-es's `new_snapshot_store`), or never.
    pub fn new(pool: PgPool, snapshot_every: Option<usize>) -> Self {
        Self { reads: PostgresEventRepository::new(pool.clone()), pool, snapshot_every }
    }
}

/// `snapshot` as cqrs-es should see it: as stored when it deserialises into `A`, otherwise
/// `A`'s initial state at sequence 0 keeping the stored snapshot version.
fn readable<A: Aggregate>(snapshot: SerializedSnapshot) -> Result<SerializedSnapshot, PersistenceError> {
    if serde_json::from_value::<A>(snapshot.aggregate.clone()).is_ok() {
        return Ok(snapshot);
    }
    tracing::warn!(
        aggregate = A::TYPE,
        aggregate_id = %snapshot.aggregate_id,
        snapshot = snapshot.current_snapshot,
        "Snapshot no longer matches the aggregate; replaying its events instead."
    );
    Ok(SerializedSnapshot { aggregate: serde_json::to_value(A::default())?, current_sequence: 0, ..snapshot })
}

impl PersistedEventRepository for SnapshotTolerant {
    fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> impl Future<Output = Result<Vec<SerializedEvent>, PersistenceError>> + Send {
        self.reads.get_events::<A>(aggregate_id)
    }

    fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> impl Future<Output = Result<Vec<SerializedEvent>, PersistenceError>> + Send {
        self.reads.get_last_events::<A>(aggregate_id, last_sequence)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.reads.get_snapshot::<A>(aggregate_id).await?.map(readable::<A>).transpose()
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let snapshot = match (snapshot_update, events.first()) {
            (Some((_, payload, version)), Some(first)) => {
                let before = first.sequence.saturating_sub(1);
                // Without a snapshot policy cqrs-es snapshots after every event it appends.
                let sequence = event_append::snapshot_sequence(self.snapshot_every, before, events.len())
                    .unwrap_or(before + events.len());
                Some(SnapshotWrite { payload, sequence: sequence as i64, version: version as i64 })
            }
            _ => None,
        };
        event_append::append(&self.pool, A::TYPE, events, snapshot).await
    }

    fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> impl Future<Output = Result<ReplayStream, PersistenceError>> + Send {
        self.reads.stream_events::<A>(aggregate_id)
    }

    fn stream_all_events<A: Aggregate>(&self) -> impl Future<Output = Result<ReplayStream, PersistenceError>> + Send {
        self.reads.stream_all_events::<A>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use colloquy_domain::Conversation;
    use serde_json::json;

    use super::*;

    fn snapshot(aggregate: Value) -> SerializedSnapshot {
        SerializedSnapshot { aggregate_id: "c-1".into(), aggregate, current_sequence: 40, current_snapshot: 2 }
    }

    #[test]
    fn a_readable_snapshot_is_kept_as_stored() {
        let stored = serde_json::to_value(Conversation::default()).unwrap();
        let seen = readable::<Conversation>(snapshot(stored.clone())).unwrap();
        assert_eq!((seen.aggregate, seen.current_sequence, seen.current_snapshot), (stored, 40, 2));
    }

    #[test]
    fn an_unreadable_snapshot_becomes_the_initial_state_at_sequence_zero_with_its_version_kept() {
        let seen = readable::<Conversation>(snapshot(json!({"shape": "of an older release"}))).unwrap();
        assert_eq!(seen.aggregate, serde_json::to_value(Conversation::default()).unwrap());
        assert_eq!(seen.current_sequence, 0, "every event is replayed");
        assert_eq!(seen.current_snapshot, 2, "the next snapshot updates the stored row");
    }
}
