//! The use cases as a worker calls them: the same entry points as HTTP, with a system actor
//! recorded on the events, and the owner's authorisation still applied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_commands::conversations::{Lifecycle, StartConversation};
use colloquy_commands::users::Register;
use colloquy_commands::{Caller, CommandSettings, Commands, UseCaseError};
use colloquy_domain::conversation::ConversationError;
use colloquy_domain::metadata;
use colloquy_domain::Conversation;
use colloquy_infra::event_store;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::testing::TestDatabase;
use cqrs_es::Aggregate;
use uuid::Uuid;

fn commands(db: &TestDatabase) -> Commands {
    Commands::new(
        db.pool.clone(),
        Metrics::new(),
        CommandSettings { hash_concurrency: 2, idempotency_ttl_hours: 24, ..Default::default() },
    )
}

async fn registered(commands: &Commands) -> Uuid {
    let email = format!("u{}@example.com", Uuid::new_v4().simple());
    let input = Register { email, full_name: "Owner".into(), password: "a good password".into() };
    commands.register("test".into(), input).await.unwrap().user_id
}

#[tokio::test]
async fn a_worker_acts_for_the_owner_and_is_recorded_as_itself() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let owner = registered(&commands).await;
    let as_owner = Caller::user(owner, "chain-1".into(), "req-1");
    let started = commands
        .start_conversation(&as_owner, StartConversation { title: Some("Trip".into()), ..Default::default() })
        .await
        .unwrap()
        .value;
    let worker = Caller::system("assistant", owner, "chain-1".into(), "event:e-1".into());
    let renamed = commands.rename_conversation(&worker, started.conversation_id, "Trip to Lisbon".into()).await;
    assert_eq!(renamed.unwrap().value.version, 2);

    let events =
        event_store::read_aggregate(&db.pool, Conversation::TYPE, &started.conversation_id.to_string(), 0, None)
            .await
            .unwrap();
    let actors: Vec<Option<&str>> = events.iter().map(|e| e.meta(metadata::ACTOR)).collect();
    assert_eq!(actors, [Some(format!("user:{owner}").as_str()), Some("system:assistant")]);
    assert_eq!(events[1].meta(metadata::CAUSATION_ID), Some("event:e-1"));
    assert!(events.iter().all(|e| e.meta(metadata::CORRELATION_ID) == Some("chain-1")));
}

#[tokio::test]
async fn a_worker_acting_for_someone_else_finds_nothing() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let owner = registered(&commands).await;
    let stranger = registered(&commands).await;
    let started = commands
        .start_conversation(
            &Caller::user(owner, "c".into(), "r"),
            StartConversation { title: Some("Mine".into()), ..Default::default() },
        )
        .await
        .unwrap()
        .value;
    let worker = Caller::system("assistant", stranger, "c".into(), "event:e".into());
    let outcome = commands.change_lifecycle(&worker, started.conversation_id, Lifecycle::Delete).await;
    assert!(
        matches!(outcome, Err(UseCaseError::Rejected { rejection: ConversationError::NotFound, replayed: false })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_new_conversation_inherits_the_owners_latest_preferences() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let owner = registered(&commands).await;
    let caller = Caller::user(owner, "c".into(), "r");
    let update = colloquy_commands::users::UpdateProfile {
        default_model: Some(Some("local/smollm2-135m".into())),
        system_prompt: Some(Some("Be brief.".into())),
        ..Default::default()
    };
    commands.update_profile(&caller, update).await.unwrap();
    // No read model is involved: the preference applies from the moment it was committed.
    let started = commands
        .start_conversation(&caller, StartConversation { title: Some("t".into()), ..Default::default() })
        .await
        .unwrap()
        .value;
    let events =
        event_store::read_aggregate(&db.pool, Conversation::TYPE, &started.conversation_id.to_string(), 0, None)
            .await
            .unwrap();
    assert_eq!(events[0].data["model"], "local/smollm2-135m");
    assert_eq!(events[0].data["system_prompt"], "Be brief.");
}
