//! Snapshots survive code changes: a snapshot that no longer deserialises into the
//! aggregate (as after a release that changed its shape) is replayed past, commands keep
//! committing across the next snapshot boundary, and the unreadable row is replaced. A
//! command whose events cross a boundary stores the snapshot of the boundary it crossed, and
//! a migration deletes the snapshots postgres-es labelled past their boundary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use colloquy_commands::conversations::{PostMessage, StartConversation};
use colloquy_commands::users::Register;
use colloquy_commands::{Caller, CommandSettings, Commands};
use colloquy_domain::conversation::export::{Export, ExportedConversation, ExportedMessage, FORMAT, FORMAT_VERSION};
use colloquy_domain::registry::Registered;
use colloquy_domain::Conversation;
use colloquy_infra::event_store;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::testing::TestDatabase;
use cqrs_es::Aggregate;
use sqlx::PgPool;
use uuid::Uuid;

const EVERY: usize = match Conversation::SNAPSHOT_EVERY {
    Some(n) => n,
    None => panic!("conversations are snapshotted"),
};

async fn snapshot_of(pool: &PgPool, id: Uuid) -> (i64, i64, serde_json::Value) {
    sqlx::query_as(
        "SELECT last_sequence, current_snapshot, payload::jsonb FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(Conversation::TYPE)
    .bind(id.to_string())
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The use cases on `pool`, as a new process has them (nothing in memory).
fn commands_on(pool: &PgPool) -> Commands {
    Commands::new(
        pool.clone(),
        Metrics::new(),
        CommandSettings { hash_concurrency: 2, idempotency_ttl_hours: 24, ..Default::default() },
    )
}

/// A newly registered user, as the caller of commands.
async fn registered(commands: &Commands) -> Caller {
    let email = format!("s{}@example.com", Uuid::new_v4().simple());
    let input = Register { email, full_name: "Snap".into(), password: "a good password".into() };
    let owner = commands.register("test".into(), input).await.unwrap().user_id;
    Caller::user(owner, "corr".into(), "req")
}

#[tokio::test]
async fn an_unreadable_snapshot_is_replayed_past_and_replaced_at_the_next_boundary() {
    let db = TestDatabase::create().await;
    let new_commands = || commands_on(&db.pool);
    let commands = new_commands();
    let caller = registered(&commands).await;
    let id = commands
        .start_conversation(&caller, StartConversation { title: Some("Long".into()), ..Default::default() })
        .await
        .unwrap()
        .value
        .conversation_id;
    let post = |i: usize| {
        let input = PostMessage { id: None, content: format!("message {i}"), model: None };
        commands.post_message(&caller, id, input)
    };
    for i in 1..EVERY {
        post(i).await.unwrap();
    }
    let (last_sequence, version, _) = snapshot_of(&db.pool, id).await;
    assert_eq!((last_sequence, version), (EVERY as i64, 1));

    // A release changed the aggregate's shape: the stored snapshot no longer deserialises.
    sqlx::query("UPDATE snapshots SET payload = '{\"shape\": \"of an older release\"}' WHERE aggregate_id = $1")
        .bind(id.to_string())
        .execute(&db.pool)
        .await
        .unwrap();

    // Commands of the new release (a new process: nothing of the old one in memory) keep
    // committing, across the next snapshot boundary too.
    let commands = new_commands();
    let post = |i: usize| {
        let input = PostMessage { id: None, content: format!("message {i}"), model: None };
        commands.post_message(&caller, id, input)
    };
    for i in EVERY..=2 * EVERY {
        let accepted = post(i).await.unwrap_or_else(|e| panic!("message {i} after the shape change: {e:?}"));
        assert_eq!(accepted.value.version, i as i64 + 1);
    }
    let (last_sequence, version, payload) = snapshot_of(&db.pool, id).await;
    assert_eq!((last_sequence, version), (2 * EVERY as i64, 2), "the unreadable row was replaced, not duplicated");
    let restored: Conversation = serde_json::from_value(payload).expect("the new snapshot has the current shape");
    let replayed =
        event_store::read_aggregate(&db.pool, Conversation::TYPE, &id.to_string(), 0, Some(2 * EVERY as i64))
            .await
            .unwrap();
    let mut expected = Conversation::default();
    for event in replayed {
        expected.apply(serde_json::from_value(event.tagged()).unwrap());
    }
    assert_eq!(
        serde_json::to_value(&restored).unwrap(),
        serde_json::to_value(&expected).unwrap(),
        "the new snapshot equals a full replay"
    );
}

/// The aggregate as a replay of its events up to `sequence` builds it.
async fn replayed(pool: &PgPool, id: Uuid, sequence: i64) -> serde_json::Value {
    let events =
        event_store::read_aggregate(pool, Conversation::TYPE, &id.to_string(), 0, Some(sequence)).await.unwrap();
    let mut aggregate = Conversation::default();
    for event in events {
        aggregate.apply(serde_json::from_value(event.tagged()).unwrap());
    }
    serde_json::to_value(&aggregate).unwrap()
}

/// A conversation imported in one command with `count` messages, each following the one
/// before: its id and its version.
async fn imported(commands: &Commands, caller: &Caller, count: usize) -> (Uuid, i64) {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    let messages = ids
        .iter()
        .enumerate()
        .map(|(i, id)| ExportedMessage {
            id: *id,
            parent_id: i.checked_sub(1).map(|p| ids[p]),
            role: "user".into(),
            content: format!("imported {i}"),
            created_at: Utc::now(),
            status: "completed".into(),
            model: None,
            provider: None,
            usage: None,
            edit_of: None,
            citations: Vec::new(),
        })
        .collect();
    let export = Export {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        exported_at: Utc::now(),
        conversation: ExportedConversation {
            id: Uuid::new_v4(),
            title: "Imported".into(),
            kind: "chat".into(),
            model: colloquy_commands::models::LOCAL_MODEL.into(),
            system_prompt: None,
            grounded: false,
            created_at: Utc::now(),
        },
        messages,
        active_leaf_id: ids.last().copied(),
    };
    let accepted = commands.import_conversation(caller, export).await.unwrap().value;
    (accepted.conversation_id, accepted.version)
}

/// Posts a message to conversation `id` (at `version`) from a new process (nothing cached),
/// which loads the snapshot and every later event, and asserts the message follows the last
/// imported one.
async fn assert_next_message_follows_the_import(pool: &PgPool, caller: &Caller, id: Uuid, version: i64) {
    let input = PostMessage { id: None, content: "after the import".into(), model: None };
    let posted = commands_on(pool).post_message(caller, id, input).await.unwrap().value;
    assert_eq!(posted.version, version + 1);
    let parent: Option<String> = sqlx::query_scalar(
        "SELECT payload -> 'UserMessagePosted' ->> 'parent_id' FROM events WHERE aggregate_id = $1 AND sequence = $2",
    )
    .bind(id.to_string())
    .bind(posted.version)
    .fetch_one(pool)
    .await
    .unwrap();
    let last_imported: String = sqlx::query_scalar(
        "SELECT payload -> 'MessageImported' ->> 'message_id' FROM events
          WHERE aggregate_id = $1 AND event_type = 'MessageImported' ORDER BY sequence DESC LIMIT 1",
    )
    .bind(id.to_string())
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(parent, Some(last_imported), "the new message follows the last imported one");
}

#[tokio::test]
async fn a_command_whose_events_cross_a_boundary_snapshots_the_boundary_and_loads_every_later_event() {
    let db = TestDatabase::create().await;
    let commands = commands_on(&db.pool);
    let caller = registered(&commands).await;

    // An import of EVERY + 5 messages: one command, more events than a snapshot interval.
    let (id, version) = imported(&commands, &caller, EVERY + 5).await;
    assert!(version > EVERY as i64, "the import crossed a snapshot boundary ({version} events)");

    // The snapshot holds the aggregate at the boundary, and says so.
    let (last_sequence, snapshot_version, payload) = snapshot_of(&db.pool, id).await;
    assert_eq!((last_sequence, snapshot_version), (EVERY as i64, 1));
    assert_eq!(payload, replayed(&db.pool, id, EVERY as i64).await, "the snapshot equals a replay to the boundary");

    assert_next_message_follows_the_import(&db.pool, &caller, id, version).await;
}

/// The migration that heals snapshots postgres-es labelled with a command's last sequence.
const HEAL_SNAPSHOT_LABELS: &str = include_str!("../../migrations/20261201000020_heal_snapshot_labels.sql");

#[tokio::test]
async fn the_healing_migration_deletes_snapshots_labelled_past_their_boundary_and_keeps_the_rest() {
    let db = TestDatabase::create().await;
    let commands = commands_on(&db.pool);
    let caller = registered(&commands).await;
    let (wrong, version) = imported(&commands, &caller, EVERY + 5).await;
    let (right, _) = imported(&commands, &caller, EVERY).await;

    // What postgres-es stored for the first import: the state at the boundary, labelled
    // with the command's last sequence.
    sqlx::query("UPDATE snapshots SET last_sequence = $2 WHERE aggregate_id = $1")
        .bind(wrong.to_string())
        .bind(version)
        .execute(&db.pool)
        .await
        .unwrap();
    let kept = snapshot_of(&db.pool, right).await;

    sqlx::raw_sql(HEAL_SNAPSHOT_LABELS).execute(&db.pool).await.unwrap();

    let wrong_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots WHERE aggregate_id = $1")
        .bind(wrong.to_string())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(wrong_rows, 0, "the mislabelled snapshot is gone");
    assert_eq!(snapshot_of(&db.pool, right).await, kept, "a snapshot on its boundary is kept");
    assert_next_message_follows_the_import(&db.pool, &caller, wrong, version).await;
}
