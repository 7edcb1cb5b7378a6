//! The aggregates an instance keeps after its commits: a command decided on a kept copy that
//! another instance made stale never commits (the append conflicts and the command is decided
//! again on fresh state), a refusal decided on a kept copy is confirmed on fresh state before
//! it is answered, and snapshots written from kept copies are the ones a full replay gives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_commands::conversations::{Lifecycle, PostMessage, StartConversation};
use colloquy_commands::users::Register;
use colloquy_commands::{Caller, CommandSettings, Commands, UseCaseError};
use colloquy_domain::conversation::ConversationError;
use colloquy_domain::registry::Registered;
use colloquy_domain::Conversation;
use colloquy_infra::event_store;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::testing::TestDatabase;
use cqrs_es::Aggregate;
use uuid::Uuid;

/// An instance's use cases (each has its own kept aggregates).
fn instance(db: &TestDatabase) -> Commands {
    Commands::new(db.pool.clone(), Metrics::new(), CommandSettings { hash_concurrency: 2, ..Default::default() })
}

async fn owner_and_conversation(commands: &Commands) -> (Caller, Uuid) {
    let email = format!("c{}@example.com", Uuid::new_v4().simple());
    let input = Register { email, full_name: "Cache".into(), password: "a good password".into() };
    let owner = commands.register("test".into(), input).await.unwrap().user_id;
    let caller = Caller::user(owner, "corr".into(), "req");
    let start = StartConversation { title: Some("Cached".into()), ..Default::default() };
    let id = commands.start_conversation(&caller, start).await.unwrap().value.conversation_id;
    (caller, id)
}

fn message(text: &str) -> PostMessage {
    PostMessage { id: None, content: text.into(), model: None }
}

#[tokio::test]
async fn a_copy_made_stale_by_another_instance_never_decides() {
    let db = TestDatabase::create().await;
    let (a, b) = (instance(&db), instance(&db));
    let (caller, id) = owner_and_conversation(&a).await;
    // A keeps the conversation as it stood after its post (active).
    assert_eq!(a.post_message(&caller, id, message("one")).await.unwrap().value.version, 2);
    // B archives it.
    b.change_lifecycle(&caller, id, Lifecycle::Archive).await.unwrap();
    // A's copy says active; the append conflicts, and fresh state refuses.
    let refused = a.post_message(&caller, id, message("two")).await.unwrap_err();
    assert!(matches!(refused, UseCaseError::Rejected { rejection: ConversationError::Archived, .. }), "{refused:?}");
    // B unarchives: A now keeps the archived state it just loaded, and must not answer
    // "archived" from it.
    b.change_lifecycle(&caller, id, Lifecycle::Unarchive).await.unwrap();
    let posted = a.post_message(&caller, id, message("three")).await.unwrap().value;
    assert_eq!(posted.version, 5, "start, one, archive, unarchive, three");
    let texts: Vec<String> = event_store::read_aggregate(&db.pool, Conversation::TYPE, &id.to_string(), 0, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "UserMessagePosted")
        .map(|e| e.data["content"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(texts, ["one", "three"], "the stale decision wrote nothing");
}

#[tokio::test]
async fn snapshots_written_from_kept_copies_equal_a_full_replay() {
    let every = Conversation::SNAPSHOT_EVERY.unwrap();
    let db = TestDatabase::create().await;
    let (a, b) = (instance(&db), instance(&db));
    let (caller, id) = owner_and_conversation(&a).await;
    // Both instances write, so each decides on kept copies and on fresh loads by turns,
    // across three snapshot boundaries.
    for i in 1..=(3 * every) {
        let writer = if (i / 7) % 2 == 0 { &a } else { &b };
        writer.post_message(&caller, id, message(&format!("m{i}"))).await.unwrap();
    }
    let (last_sequence, version, payload): (i64, i64, serde_json::Value) = sqlx::query_as(
        "SELECT last_sequence, current_snapshot, payload::jsonb FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(Conversation::TYPE)
    .bind(id.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((last_sequence, version), (3 * every as i64, 3), "one snapshot per boundary, versions in order");
    let replayed = event_store::read_aggregate(&db.pool, Conversation::TYPE, &id.to_string(), 0, Some(last_sequence))
        .await
        .unwrap();
    let mut expected = Conversation::default();
    for event in replayed {
        expected.apply(serde_json::from_value(event.tagged()).unwrap());
    }
    assert_eq!(payload, serde_json::to_value(&expected).unwrap());
}

#[tokio::test]
async fn one_instance_writing_alone_snapshots_on_time_from_its_kept_copy_and_writes_each_message_once() {
    let every = Conversation::SNAPSHOT_EVERY.unwrap();
    let db = TestDatabase::create().await;
    let a = instance(&db);
    let (caller, id) = owner_and_conversation(&a).await;
    let metrics = Metrics::new();
    let a =
        Commands::new(db.pool.clone(), metrics.clone(), CommandSettings { hash_concurrency: 2, ..Default::default() });
    for i in 1..=(3 * every) {
        let posted = a.post_message(&caller, id, message(&format!("m{i}"))).await.unwrap().value;
        assert_eq!(posted.version, i as i64 + 1);
    }
    // Decided on its kept copy every time but the first: no conflict, no retry, and every
    // snapshot update found the version it expected (a wrong one fails after the events
    // committed, and the retry would write the message twice).
    assert_eq!(metrics.command_retries.with_label_values(&[Conversation::TYPE]).get(), 0);
    let events = event_store::read_aggregate(&db.pool, Conversation::TYPE, &id.to_string(), 0, None).await.unwrap();
    assert_eq!(events.len(), 1 + 3 * every);
    let (last_sequence, version): (i64, i64) = sqlx::query_as(
        "SELECT last_sequence, current_snapshot FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(Conversation::TYPE)
    .bind(id.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((last_sequence, version), (3 * every as i64, 3));
}
