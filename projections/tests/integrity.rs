//! Projections stay exact and repair themselves, on a real database: no event applies twice
//! when two appliers race (a rebalance) or a rebuild switches over under the live
//! projector; a poison event quarantines only its aggregate; reconciliation applies from
//! the store what never arrived through Kafka.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_infra::event_store::{self, StoredEvent};
use colloquy_infra::testing::{eventually, insert_event, TestDatabase};
use colloquy_projections::conversations::ConversationsProjection;
use colloquy_projections::messages::MessagesProjection;
use colloquy_projections::projection::{apply_all_in_order, apply_batch, Applied};
use colloquy_projections::rebuild::rebuild;
use colloquy_projections::{quarantine, reconcile, Projection};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

fn started(conversation: Uuid, owner: Uuid, title: &str) -> Value {
    json!({"ConversationStarted": {
        "conversation_id": conversation, "owner_id": owner, "title": title, "kind": "chat", "model": "offline",
        "system_prompt": null
    }})
}

fn posted(author: Uuid, content: &str) -> Value {
    json!({"UserMessagePosted": {"message_id": Uuid::new_v4(), "author_id": author, "content": content}})
}

/// A conversation with `messages` messages, written straight into the store.
async fn conversation(pool: &PgPool, owner: Uuid, messages: usize) -> Uuid {
    let id = Uuid::new_v4();
    insert_event(pool, "Conversation", id, 1, started(id, owner, "Plans")).await;
    for n in 0..messages {
        insert_event(pool, "Conversation", id, n as i64 + 2, posted(owner, &format!("m{n}"))).await;
    }
    id
}

async fn stored(pool: &PgPool, id: Uuid) -> Vec<StoredEvent> {
    event_store::read_aggregate(pool, "Conversation", &id.to_string(), 0, None).await.unwrap()
}

/// Applies `events` to the live table in one committed transaction.
async fn project(pool: &PgPool, projection: &dyn Projection, events: &[StoredEvent]) {
    let mut tx = pool.begin().await.unwrap();
    apply_all_in_order(&mut tx, projection, projection.name(), projection.table(), events).await.unwrap();
    tx.commit().await.unwrap();
}

async fn counts(pool: &PgPool) -> Vec<(Uuid, i64, i64)> {
    sqlx::query_as("SELECT conversation_id, message_count, version FROM rm_conversations ORDER BY conversation_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until `n` sessions of this database wait for a lock.
async fn lock_waiters(pool: &PgPool, n: i64) {
    eventually(&format!("{n} sessions waiting for a lock"), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (waiting >= n).then_some(())
    })
    .await;
}

/// The read model refuses one title (as a migration might): a rename to it is poison.
async fn refuse_cursed_titles(pool: &PgPool) {
    sqlx::query("ALTER TABLE rm_conversations ADD CONSTRAINT no_cursed_titles CHECK (title <> 'cursed')")
        .execute(pool)
        .await
        .unwrap();
}

/// Waits until the commit-order reader (what rebuilds read) sees `count` events.
async fn wait_until_readable(pool: &PgPool, count: usize) {
    eventually("the events past the fence", || async {
        let visible = event_store::read_committed(pool, Default::default(), None, 1_000).await.unwrap();
        (visible.len() == count).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_appliers_racing_on_one_batch_count_each_message_once() {
    let db = TestDatabase::create().await;
    let other = PgPool::connect(&db.url).await.unwrap();
    let owner = Uuid::new_v4();
    let id = conversation(&db.pool, owner, 4).await;
    let events = stored(&db.pool, id).await;
    project(&db.pool, &ConversationsProjection, &events[..1]).await;

    // The first applier has applied messages 2..5 but not committed yet; a second one (a
    // consumer still retrying after a rebalance) applies the same batch meanwhile.
    let mut first = db.pool.begin().await.unwrap();
    apply_all_in_order(&mut first, &ConversationsProjection, "conversations", "rm_conversations", &events[1..])
        .await
        .unwrap();
    let second = tokio::spawn({
        let (pool, events) = (other.clone(), events.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            let p = ConversationsProjection;
            let outcomes = apply_all_in_order(&mut tx, &p, p.name(), p.table(), &events[1..]).await.unwrap();
            tx.commit().await.unwrap();
            outcomes
        }
    });
    lock_waiters(&db.pool, 1).await;
    first.commit().await.unwrap();
    let outcomes = second.await.unwrap();

    assert_eq!(counts(&db.pool).await, [(id, 4, 5)], "each message counted once");
    assert_eq!(outcomes, vec![Applied::Duplicate; 4], "the second applier must find the batch applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_switching_over_under_the_live_projector_leaves_message_count_exact() {
    let db = TestDatabase::create().await;
    let (holder, live) = (PgPool::connect(&db.url).await.unwrap(), PgPool::connect(&db.url).await.unwrap());
    let owner = Uuid::new_v4();
    let (a, b) = (conversation(&db.pool, owner, 2).await, conversation(&db.pool, owner, 0).await);
    let events = stored(&db.pool, a).await;
    // Live: a up to message 1 (version 2), b started. The store already has a's message 2.
    project(&db.pool, &ConversationsProjection, &events[..2]).await;
    project(&db.pool, &ConversationsProjection, &stored(&db.pool, b).await).await;
    wait_until_readable(&db.pool, 4).await;

    // Hold the switch-over inside its transaction: after it took the live table, before it
    // hands the rebuilt progress over (a lock on another aggregate's progress row).
    let mut hold = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM projection_state WHERE projection = 'conversations' AND aggregate_id = $1 FOR UPDATE")
        .bind(b.to_string())
        .execute(&mut *hold)
        .await
        .unwrap();
    let rebuilding = tokio::spawn({
        let pool = db.pool.clone();
        async move { rebuild(&pool, &ConversationsProjection).await.unwrap() }
    });
    lock_waiters(&db.pool, 1).await;
    // The live projector now delivers a's message 2, which the rebuild has applied already.
    let applying = tokio::spawn({
        let (pool, event) = (live.clone(), events[2].clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            let p = ConversationsProjection;
            let outcome = apply_all_in_order(&mut tx, &p, p.name(), p.table(), &[event]).await.unwrap();
            tx.commit().await.unwrap();
            outcome
        }
    });
    lock_waiters(&db.pool, 2).await;
    hold.commit().await.unwrap();
    let report = rebuilding.await.unwrap();
    let outcome = applying.await.unwrap();

    let live_counts = counts(&db.pool).await;
    let mut expected = vec![(a, 2, 3), (b, 0, 1)];
    expected.sort();
    assert_eq!(live_counts, expected, "each message counted once");
    assert_eq!(outcome, [Applied::Duplicate], "the rebuilt table already holds message 2");
    assert_eq!(report.quarantined, []);
    // And equal to a fresh rebuild.
    rebuild(&db.pool, &ConversationsProjection).await.unwrap();
    assert_eq!(counts(&db.pool).await, live_counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_quarantines_only_its_aggregate_until_cleared_after_a_fix() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    refuse_cursed_titles(pool).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    insert_event(pool, "Conversation", a, 1, started(a, owner, "Plans")).await;
    insert_event(pool, "Conversation", a, 2, posted(owner, "one")).await;
    insert_event(pool, "Conversation", a, 3, json!({"ConversationRenamed": {"title": "cursed"}})).await;
    insert_event(pool, "Conversation", a, 4, posted(owner, "two")).await;
    insert_event(pool, "Conversation", b, 1, started(b, owner, "Other")).await;
    insert_event(pool, "Conversation", a, 5, posted(owner, "three")).await;
    insert_event(pool, "Conversation", b, 2, posted(owner, "b one")).await;
    wait_until_readable(pool, 7).await;
    let batch: Vec<StoredEvent> = event_store::read_committed(pool, Default::default(), None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();

    let p = ConversationsProjection;
    let mut tx = pool.begin().await.unwrap();
    let outcomes = apply_batch(&mut tx, &p, p.name(), p.table(), &batch).await.unwrap();
    tx.commit().await.unwrap();
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Applied::Applied { .. } => "applied",
            Applied::Duplicate => "duplicate",
            Applied::Quarantined => "quarantined",
            Applied::Poisoned { .. } => "poison",
        })
        .collect();
    assert_eq!(kinds, ["applied", "applied", "poison", "quarantined", "applied", "quarantined", "applied"]);
    let listed = quarantine::list(pool, Some("conversations")).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].aggregate_id.as_str(), listed[0].sequence), (a.to_string().as_str(), 3));
    assert_eq!(listed[0].event_id, Some(batch[2].event_id));
    assert!(listed[0].reason.contains("no_cursed_titles"), "the cause is kept: {}", listed[0].reason);
    // Redelivery is skipped, not retried: nothing changes, nothing new is quarantined.
    let mut tx = pool.begin().await.unwrap();
    let again = apply_batch(&mut tx, &p, p.name(), p.table(), &batch[2..4]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(again, [Applied::Quarantined, Applied::Quarantined]);
    let mut expected = vec![(a, 1, 2), (b, 1, 2)];
    expected.sort();
    assert_eq!(counts(pool).await, expected);
    // Reconciliation leaves a quarantined aggregate alone.
    let pass = reconcile::reconcile_once(pool, &p, std::time::Duration::ZERO).await.unwrap();
    assert_eq!((pass.checked, pass.healed), (7, 0));

    // A rebuild finishes and reports it.
    let report = rebuild(pool, &p).await.unwrap();
    assert_eq!(report.events, 7);
    let reported: Vec<(&str, i64)> = report.quarantined.iter().map(|q| (q.aggregate_id.as_str(), q.sequence)).collect();
    assert_eq!(reported, [(a.to_string().as_str(), 3)]);
    assert_eq!(counts(pool).await, expected);

    // The fix, then clearing: the rest of a applies from the store.
    sqlx::query("ALTER TABLE rm_conversations DROP CONSTRAINT no_cursed_titles").execute(pool).await.unwrap();
    let cleared = quarantine::clear(pool, "conversations", &a.to_string()).await.unwrap().unwrap();
    assert_eq!(cleared.sequence, 3);
    let applied = reconcile::catch_up(pool, &p, "Conversation", &a.to_string()).await.unwrap();
    assert_eq!(applied.len(), 3, "{applied:?}");
    assert!(applied.iter().all(|o| matches!(o, Applied::Applied { .. })), "{applied:?}");
    assert_eq!(quarantine::list(pool, None).await.unwrap(), []);
    let mut healed = vec![(a, 3, 5), (b, 1, 2)];
    healed.sort();
    assert_eq!(counts(pool).await, healed);
    let title: String = sqlx::query_scalar("SELECT title FROM rm_conversations WHERE conversation_id = $1")
        .bind(a)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(title, "cursed");
    rebuild(pool, &p).await.unwrap();
    assert_eq!(counts(pool).await, healed, "cleared and caught up equals a fresh rebuild");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_applies_what_never_arrived_and_checks_each_event_once() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    let a = conversation(pool, owner, 3).await;
    let b = conversation(pool, owner, 1).await;
    wait_until_readable(pool, 6).await;
    // Kafka delivered a up to its first message and b entirely; a's last two never came.
    let (ea, eb) = (stored(pool, a).await, stored(pool, b).await);
    for p in [&ConversationsProjection as &dyn Projection, &MessagesProjection] {
        project(pool, p, &ea[..2]).await;
        project(pool, p, &eb).await;
    }

    // Too young to judge: nothing is touched.
    let young = reconcile::reconcile_once(pool, &ConversationsProjection, std::time::Duration::from_secs(3600)).await;
    assert_eq!(young.unwrap(), reconcile::Reconciled::default());
    for p in [&ConversationsProjection as &dyn Projection, &MessagesProjection] {
        let pass = reconcile::reconcile_once(pool, p, std::time::Duration::ZERO).await.unwrap();
        assert_eq!((pass.checked, pass.healed), (6, 2), "{}", p.name());
    }
    let mut expected = vec![(a, 3, 4), (b, 1, 2)];
    expected.sort();
    assert_eq!(counts(pool).await, expected);
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_messages").fetch_one(pool).await.unwrap();
    assert_eq!(messages, 4);
    // The next pass starts where this one stopped: nothing left to compare.
    let next = reconcile::reconcile_once(pool, &ConversationsProjection, std::time::Duration::ZERO).await.unwrap();
    assert_eq!((next.checked, next.healed), (0, 0));
}

/// A rebuild keeps its progress in memory between pages: pages of one event show that what
/// one page applied or quarantined is remembered by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_in_pages_of_one_carries_progress_and_quarantine_from_page_to_page() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    refuse_cursed_titles(pool).await;
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    insert_event(pool, "Conversation", a, 1, started(a, owner, "Plans")).await;
    insert_event(pool, "Conversation", a, 2, posted(owner, "one")).await;
    insert_event(pool, "Conversation", a, 3, json!({"ConversationRenamed": {"title": "cursed"}})).await;
    insert_event(pool, "Conversation", b, 1, started(b, owner, "Other")).await;
    insert_event(pool, "Conversation", a, 4, posted(owner, "two")).await;
    // c's second event commits in a transaction older than its first one's, so the commit
    // order reads it first: a rebuild fills c's first event in from the store, and when the
    // first event's own turn comes, a page later, it must be known as applied.
    let mut older = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *older).await.unwrap();
    insert_event(pool, "Conversation", c, 1, started(c, owner, "Late")).await;
    insert_event(&mut *older, "Conversation", c, 2, posted(owner, "c one")).await;
    older.commit().await.unwrap();
    insert_event(pool, "Conversation", b, 2, posted(owner, "b one")).await;
    wait_until_readable(pool, 8).await;
    let order: Vec<(String, i64)> = event_store::read_committed(pool, Default::default(), None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(e, _)| (e.aggregate_id, e.sequence))
        .collect();
    let (c1, c2) =
        (order.iter().position(|e| *e == (c.to_string(), 1)), order.iter().position(|e| *e == (c.to_string(), 2)));
    assert!(c2 < c1, "c's second event is read first: {order:?}");

    let p = ConversationsProjection;
    let report = colloquy_projections::rebuild::rebuild_paged(pool, &p, 1).await.unwrap();
    assert_eq!(report.events, 8);
    let reported: Vec<(&str, i64)> = report.quarantined.iter().map(|q| (q.aggregate_id.as_str(), q.sequence)).collect();
    assert_eq!(reported, [(a.to_string().as_str(), 3)], "only a, at its poison event");
    // a stops before its poison event; its later message, a page on, is skipped.
    let mut expected = vec![(a, 1, 2), (b, 1, 2), (c, 1, 2)];
    expected.sort();
    assert_eq!(counts(pool).await, expected);
    let mut progress: Vec<(String, i64)> =
        sqlx::query_as("SELECT aggregate_id, last_sequence FROM projection_state WHERE projection = 'conversations'")
            .fetch_all(pool)
            .await
            .unwrap();
    progress.sort();
    let mut expected_progress = vec![(a.to_string(), 2), (b.to_string(), 2), (c.to_string(), 2)];
    expected_progress.sort();
    assert_eq!(progress, expected_progress);
    let leftover: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_state WHERE projection LIKE '%#rebuild'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(leftover, 0, "the rebuild's progress became the live projection's");

    // The fix, then clearing: a catches up from its stored progress.
    sqlx::query("ALTER TABLE rm_conversations DROP CONSTRAINT no_cursed_titles").execute(pool).await.unwrap();
    quarantine::clear(pool, "conversations", &a.to_string()).await.unwrap().unwrap();
    let applied = reconcile::catch_up(pool, &p, "Conversation", &a.to_string()).await.unwrap();
    assert_eq!(applied.len(), 2, "{applied:?}");
}

/// A rebuild writes its progress in statements of 10,000 aggregates: more than that, across
/// several pages, all get their row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_of_more_aggregates_than_one_progress_statement_records_each() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    let conversations = 10_001;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'Conversation', c.id::text, 1, 'ConversationStarted', '1.0',
                json_build_object('ConversationStarted', json_build_object(
                    'conversation_id', c.id, 'owner_id', $1::uuid, 'title', 'Plans', 'kind', 'chat',
                    'model', 'offline', 'system_prompt', null)),
                '{}'
           FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $2)) c",
    )
    .bind(owner)
    .bind(conversations)
    .execute(pool)
    .await
    .unwrap();
    let a = conversation(pool, owner, 2).await;
    eventually("the events past the fence", || async {
        let visible: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())")
                .fetch_one(pool)
                .await
                .unwrap();
        (visible == i64::from(conversations) + 3).then_some(())
    })
    .await;

    let report = rebuild(pool, &ConversationsProjection).await.unwrap();
    assert_eq!(report.events, conversations as u64 + 3);
    let (rows, progress, at_one): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM rm_conversations),
                count(*), count(*) FILTER (WHERE last_sequence = 1)
           FROM projection_state WHERE projection = 'conversations'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, progress, at_one),
        (i64::from(conversations) + 1, i64::from(conversations) + 1, i64::from(conversations))
    );
    let last: i64 = sqlx::query_scalar(
        "SELECT last_sequence FROM projection_state WHERE projection = 'conversations' AND aggregate_id = $1",
    )
    .bind(a.to_string())
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(last, 3);
}
