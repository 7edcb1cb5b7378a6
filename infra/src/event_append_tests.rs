//! The one-statement append on a real database: what it writes, and that a conflict of
//! either kind writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use sqlx::PgPool;

use super::*;
use crate::testing::TestDatabase;

fn event(aggregate_id: &str, sequence: usize, text: &str) -> SerializedEvent {
    SerializedEvent::new(
        aggregate_id.into(),
        sequence,
        "Thing".into(),
        "Noted".into(),
        "1.0".into(),
        json!({"Noted": {"text": text}}),
        json!({"actor": "test"}),
    )
}

fn snapshot(sequence: i64, version: i64) -> Option<SnapshotWrite> {
    Some(SnapshotWrite { payload: json!({"at": sequence}), sequence, version })
}

async fn stored(pool: &PgPool, id: &str) -> Vec<(i64, String)> {
    sqlx::query_as(
        "SELECT sequence, payload -> 'Noted' ->> 'text' FROM events WHERE aggregate_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn snapshot_row(pool: &PgPool, id: &str) -> Option<(i64, i64, serde_json::Value)> {
    sqlx::query_as("SELECT last_sequence, current_snapshot, payload::jsonb FROM snapshots WHERE aggregate_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn events_go_in_in_their_order_with_one_transaction_id_and_snapshots_hold_what_they_are_given() {
    let db = TestDatabase::create().await;
    let id = "a-1";
    let three: Vec<_> = (1..=3).map(|n| event(id, n, &format!("e{n}"))).collect();
    append(&db.pool, "Thing", &three, None).await.unwrap();
    assert_eq!(stored(&db.pool, id).await, vec![(1, "e1".into()), (2, "e2".into()), (3, "e3".into())]);
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT tx_id::text) FROM events WHERE aggregate_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(transactions, 1, "one command's events commit together");

    append(&db.pool, "Thing", &[event(id, 4, "e4")], snapshot(4, 1)).await.unwrap();
    assert_eq!(snapshot_row(&db.pool, id).await, Some((4, 1, json!({"at": 4}))));
    // A later snapshot replaces it, labelled with the sequence it holds, not the last event's.
    let two = [event(id, 5, "e5"), event(id, 6, "e6")];
    append(&db.pool, "Thing", &two, snapshot(5, 2)).await.unwrap();
    assert_eq!(snapshot_row(&db.pool, id).await, Some((5, 2, json!({"at": 5}))));
    assert_eq!(stored(&db.pool, id).await.len(), 6);
}

#[tokio::test]
async fn a_taken_sequence_or_a_moved_snapshot_is_a_conflict_that_writes_nothing() {
    let db = TestDatabase::create().await;
    let id = "a-2";
    append(&db.pool, "Thing", &[event(id, 1, "first")], snapshot(1, 1)).await.unwrap();

    // Another writer's event at sequence 2, in an append of two: neither is written.
    append(&db.pool, "Thing", &[event(id, 2, "theirs")], None).await.unwrap();
    let mine = [event(id, 2, "mine"), event(id, 3, "mine too")];
    let e = append(&db.pool, "Thing", &mine, None).await.unwrap_err();
    assert!(matches!(e, PersistenceError::OptimisticLockError), "{e:?}");
    assert_eq!(stored(&db.pool, id).await, vec![(1, "first".into()), (2, "theirs".into())]);

    // A second first snapshot: the key of the one there refuses it, with its events.
    let e = append(&db.pool, "Thing", &[event(id, 3, "late")], snapshot(3, 1)).await.unwrap_err();
    assert!(matches!(e, PersistenceError::OptimisticLockError), "{e:?}");

    // A next snapshot that expects version 2 while 1 is stored (another writer's snapshot
    // already moved on, or never was): nothing is written, the events neither.
    let e = append(&db.pool, "Thing", &[event(id, 3, "late")], snapshot(3, 3)).await.unwrap_err();
    assert!(matches!(e, PersistenceError::OptimisticLockError), "{e:?}");
    assert_eq!(stored(&db.pool, id).await.len(), 2);
    assert_eq!(snapshot_row(&db.pool, id).await, Some((1, 1, json!({"at": 1}))));

    // The right one goes through.
    append(&db.pool, "Thing", &[event(id, 3, "on time")], snapshot(3, 2)).await.unwrap();
    assert_eq!(snapshot_row(&db.pool, id).await, Some((3, 2, json!({"at": 3}))));
}

#[tokio::test]
async fn events_of_two_aggregates_are_refused_before_anything_is_sent() {
    let db = TestDatabase::create().await;
    let mixed = [event("a-3", 1, "x"), event("a-4", 1, "y")];
    let e = append(&db.pool, "Thing", &mixed, None).await.unwrap_err();
    assert!(matches!(e, PersistenceError::UnknownError(_)), "{e:?}");
    assert!(stored(&db.pool, "a-3").await.is_empty());
}

#[tokio::test]
async fn event_ids_are_version_7_and_grow_in_the_order_events_are_appended() {
    let db = TestDatabase::create().await;
    let id = "a-ids";
    let two: Vec<_> = (1..=2).map(|n| event(id, n, &format!("e{n}"))).collect();
    append(&db.pool, "Thing", &two, None).await.unwrap();
    append(&db.pool, "Thing", &[event(id, 3, "e3")], snapshot(3, 1)).await.unwrap();
    append(&db.pool, "Thing", &[event(id, 4, "e4")], snapshot(4, 2)).await.unwrap();
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE aggregate_id = $1 ORDER BY sequence")
            .bind(id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(ids.len(), 4);
    assert!(ids.iter().all(|e| e.get_version_num() == 7), "minted here, not the column's random default: {ids:?}");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "they grow with time, so they go in at the index's right edge: {ids:?}"
    );
}

/// A guard that adds its number to `guard_log` and refuses a negative one.
struct Tally(i32);

impl AppendGuard for Tally {
    fn ctes(&self, first: usize) -> String {
        format!("tallied AS (INSERT INTO guard_log (n) VALUES (${first}::int) RETURNING n)")
    }

    fn refusal(&self) -> &str {
        "CASE WHEN (SELECT n FROM tallied) < 0 THEN 'negative ' || (SELECT n FROM tallied) END"
    }

    fn bind(&self, args: &mut PgArguments) -> Result<(), BoxDynError> {
        args.add(self.0)
    }
}

async fn tallied(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT n FROM guard_log ORDER BY n").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn a_guard_commits_with_the_events_and_a_refusal_or_a_conflict_writes_neither() {
    let db = TestDatabase::create().await;
    sqlx::query("CREATE TABLE guard_log (n int NOT NULL)").execute(&db.pool).await.unwrap();
    let id = "a-guarded";
    let guarded = |events: Vec<SerializedEvent>, snapshot: Option<SnapshotWrite>, n: i32| {
        let pool = db.pool.clone();
        async move { append_guarded(&pool, "Thing", &events, snapshot, Some(&Tally(n))).await }
    };

    // Each shape of the statement, with its guard's change.
    guarded(vec![event(id, 1, "e1"), event(id, 2, "e2")], None, 1).await.unwrap();
    guarded(vec![event(id, 3, "e3")], snapshot(3, 1), 2).await.unwrap();
    guarded(vec![event(id, 4, "e4")], snapshot(4, 2), 3).await.unwrap();
    assert_eq!(stored(&db.pool, id).await.len(), 4);
    assert_eq!(snapshot_row(&db.pool, id).await, Some((4, 2, json!({"at": 4}))));
    assert_eq!(tallied(&db.pool).await, vec![1, 2, 3]);

    // Refused, in each shape: neither the events nor the guard's change stay.
    for snapshot in [None, snapshot(5, 3)] {
        let e = guarded(vec![event(id, 5, "e5")], snapshot, -7).await.unwrap_err();
        assert!(matches!(&e, AppendError::Refused(reason) if reason == "negative -7"), "{e:?}");
    }
    let e = guarded(vec![event("a-fresh", 1, "x")], snapshot(1, 1), -8).await.unwrap_err();
    assert!(matches!(&e, AppendError::Refused(reason) if reason == "negative -8"), "{e:?}");
    assert!(stored(&db.pool, "a-fresh").await.is_empty());

    // Conflicts: a taken sequence, a first snapshot already there, a next snapshot that
    // moved (the statement writes no event then, and must undo the guard's change too).
    let conflicts =
        [(event(id, 4, "taken"), None), (event(id, 5, "e5"), snapshot(5, 1)), (event(id, 5, "e5"), snapshot(5, 9))];
    for (event, snapshot) in conflicts {
        let e = guarded(vec![event], snapshot, 4).await.unwrap_err();
        assert!(matches!(e, AppendError::Store(PersistenceError::OptimisticLockError)), "{e:?}");
    }
    assert_eq!(stored(&db.pool, id).await.len(), 4);
    assert_eq!(snapshot_row(&db.pool, id).await, Some((4, 2, json!({"at": 4}))));
    assert_eq!(tallied(&db.pool).await, vec![1, 2, 3], "nothing refused or conflicting was tallied");
}
