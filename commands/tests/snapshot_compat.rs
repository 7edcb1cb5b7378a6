//! Snapshots survive code changes: a snapshot that no longer deserialises into the
//! aggregate (as after a release that changed its shape) is replayed past, commands keep
//! committing across the next snapshot boundary, and the unreadable row is replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_commands::conversations::{PostMessage, StartConversation};
use colloquy_commands::users::Register;
use colloquy_commands::{Caller, CommandSettings, Commands};
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

#[tokio::test]
async fn an_unreadable_snapshot_is_replayed_past_and_replaced_at_the_next_boundary() {
    let db = TestDatabase::create().await;
    let new_commands = || {
        Commands::new(
            db.pool.clone(),
            Metrics::new(),
            CommandSettings { hash_concurrency: 2, idempotency_ttl_hours: 24, ..Default::default() },
        )
    };
    let commands = new_commands();
    let email = format!("s{}@example.com", Uuid::new_v4().simple());
    let input = Register { email, full_name: "Snap".into(), password: "a good password".into() };
    let owner = commands.register("test".into(), input).await.unwrap().user_id;
    let caller = Caller::user(owner, "corr".into(), "req");
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
