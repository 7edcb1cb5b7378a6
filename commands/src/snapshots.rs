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

use std::future::Future;

use cqrs_es::persist::{PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;

/// The event repository with unreadable snapshots treated as absent (see the module docs).
pub struct SnapshotTolerant(PostgresEventRepository);

impl SnapshotTolerant {
    /// Wraps `repo`.
    pub fn new(repo: PostgresEventRepository) -> Self {
        Self(repo)
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
        self.0.get_events::<A>(aggregate_id)
    }

    fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> impl Future<Output = Result<Vec<SerializedEvent>, PersistenceError>> + Send {
        self.0.get_last_events::<A>(aggregate_id, last_sequence)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.0.get_snapshot::<A>(aggregate_id).await?.map(readable::<A>).transpose()
    }

    fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> impl Future<Output = Result<(), PersistenceError>> + Send {
        self.0.persist::<A>(events, snapshot_update)
    }

    fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> impl Future<Output = Result<ReplayStream, PersistenceError>> + Send {
        self.0.stream_events::<A>(aggregate_id)
    }

    fn stream_all_events<A: Aggregate>(&self) -> impl Future<Output = Result<ReplayStream, PersistenceError>> + Send {
        self.0.stream_all_events::<A>()
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
