//! The event store through the command service: snapshots keep long aggregates cheap to
//! load and equal to a full replay; events are immutable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use colloquy_commands::{Actor, CommandMeta, CommandService};
use std::sync::Arc;

use colloquy_domain::conversation::{
    ConversationCommand, ConversationError, ConversationKind, ConversationServices, NewMessageId, SNAPSHOT_EVERY,
};
use colloquy_domain::Conversation;
use colloquy_infra::event_store::EventStoreMessages;
use colloquy_infra::metrics::Metrics;
use support::{isolated_settings, TestApp};
use uuid::Uuid;

/// The Conversation command service as the API builds it.
fn conversation_service(app: &TestApp) -> CommandService<Conversation> {
    let services = ConversationServices::new(Arc::new(EventStoreMessages::new(app.pool().clone())));
    CommandService::new(app.pool().clone(), services, Metrics::new())
}

/// Starts a conversation of a new owner through `service`; returns (conversation, owner, meta).
async fn started(service: &CommandService<Conversation>) -> (Uuid, Uuid, CommandMeta) {
    let (id, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let meta = CommandMeta { actor: Actor::User(owner), correlation_id: "test".into(), causation_id: None };
    let start = ConversationCommand::StartConversation {
        conversation_id: id,
        owner_id: owner,
        title: Some("test".into()),
        kind: ConversationKind::Chat,
        model: "offline".into(),
        system_prompt: None,
    };
    service.execute(&id.to_string(), start, &meta).await.unwrap();
    (id, owner, meta)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_conversations_load_from_a_snapshot_equal_to_a_full_replay() {
    let app = TestApp::spawn_with(isolated_settings(), Processes::default()).await;
    let service = conversation_service(&app);
    let (id, owner, meta) = started(&service).await;
    let messages = 2 * SNAPSHOT_EVERY + 7;
    let mut first_message = None;
    for i in 0..messages {
        let message_id = Uuid::new_v4();
        first_message.get_or_insert(message_id);
        let cmd = ConversationCommand::PostUserMessage {
            actor_id: owner,
            message_id: message_id.into(),
            content: format!("m{i}"),
            model: None,
        };
        let committed = service.execute(&id.to_string(), cmd, &meta).await.unwrap();
        assert_eq!(committed.version, i as i64 + 2);
    }
    // The duplicate check reaches back past every snapshot, to the first message.
    let again = ConversationCommand::PostUserMessage {
        actor_id: owner,
        message_id: first_message.unwrap().into(),
        content: "again".into(),
        model: None,
    };
    let rejected = service.execute(&id.to_string(), again, &meta).await;
    assert!(
        matches!(rejected, Err(colloquy_commands::CommandError::Rejected(ConversationError::DuplicateMessage))),
        "{rejected:?}"
    );
    let (last_sequence,): (i64,) = sqlx::query_as(
        "SELECT last_sequence FROM snapshots WHERE aggregate_type = 'Conversation' AND aggregate_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(last_sequence, 2 * SNAPSHOT_EVERY as i64, "one snapshot, at the last multiple of {SNAPSHOT_EVERY}");
    let (loaded, version) = service.current_state(&id.to_string()).await.unwrap();
    assert_eq!(version, messages as i64 + 1);
    assert_eq!(loaded.message_count, messages as u64);
    let replayed = colloquy::audit::state_at(app.pool(), "Conversation", &id.to_string(), None).await.unwrap();
    assert_eq!(serde_json::to_value(&loaded).unwrap(), replayed, "snapshot + tail equals a full replay");
    // And the state at an earlier version is a prefix of the history.
    let early = colloquy::audit::state_at(app.pool(), "Conversation", &id.to_string(), Some(3)).await.unwrap();
    assert_eq!(early["message_count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_load_from_a_snapshot_equal_to_a_full_replay() {
    use colloquy_domain::user::{UserCommand, SNAPSHOT_EVERY as USER_SNAPSHOT_EVERY};
    use colloquy_domain::User;
    let app = TestApp::spawn_with(isolated_settings(), Processes::default()).await;
    let service: CommandService<User> = CommandService::new(app.pool().clone(), (), Metrics::new());
    let id = Uuid::new_v4();
    let meta = CommandMeta { actor: Actor::User(id), correlation_id: "test".into(), causation_id: None };
    let register = UserCommand::RegisterUser {
        user_id: id,
        email: format!("u{}@example.com", id.simple()),
        full_name: "Ada".into(),
    };
    service.execute(&id.to_string(), register, &meta).await.unwrap();
    let updates = 2 * USER_SNAPSHOT_EVERY + 3;
    for i in 0..updates {
        let update = UserCommand::UpdateProfile {
            full_name: Some(format!("Ada {i}")),
            default_model: (i % 2 == 0).then(|| Some(format!("model-{i}"))),
            system_prompt: (i % 3 == 0).then(|| Some(format!("prompt {i}"))),
        };
        let committed = service.execute(&id.to_string(), update, &meta).await.unwrap();
        assert_eq!(committed.version, i as i64 + 2);
    }
    let (last_sequence,): (i64,) =
        sqlx::query_as("SELECT last_sequence FROM snapshots WHERE aggregate_type = 'User' AND aggregate_id = $1")
            .bind(id.to_string())
            .fetch_one(app.pool())
            .await
            .expect("a User snapshot");
    assert_eq!(
        last_sequence,
        2 * USER_SNAPSHOT_EVERY as i64,
        "one snapshot, at the last multiple of {USER_SNAPSHOT_EVERY}"
    );
    let (loaded, version) = service.current_state(&id.to_string()).await.unwrap();
    assert_eq!(version, updates as i64 + 1);
    assert_eq!(loaded.full_name, format!("Ada {}", updates - 1));
    let replayed = colloquy::audit::state_at(app.pool(), "User", &id.to_string(), None).await.unwrap();
    assert_eq!(serde_json::to_value(&loaded).unwrap(), replayed, "snapshot + tail equals a full replay");
    // Commands keep deciding on the loaded state: a deactivated user (after the snapshot) is refused.
    service.execute(&id.to_string(), UserCommand::DeactivateUser { reason: None }, &meta).await.unwrap();
    let refused = service.execute(&id.to_string(), UserCommand::DeactivateUser { reason: None }, &meta).await;
    assert!(matches!(refused, Err(colloquy_commands::CommandError::Rejected(_))), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stored_events_cannot_be_changed_or_removed() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    app.conversation(&token, "immutable").await;
    let update = sqlx::query("UPDATE events SET payload = '{}'").execute(app.pool()).await;
    assert!(update.unwrap_err().to_string().contains("immutable"));
    let delete = sqlx::query("DELETE FROM events").execute(app.pool()).await;
    assert!(delete.unwrap_err().to_string().contains("immutable"));
    // Our columns are filled for every event.
    let missing: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id IS NULL OR recorded_at IS NULL OR tx_id IS NULL OR position IS NULL")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(missing, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_holes_and_unreadable_events() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "audited").await;
    let v = app.message(&token, conv, "hello").await;
    let (s, _) = app.get(&format!("/conversations/{conv}/messages?min_version={v}"), &token).await;
    assert_eq!(s, 200);
    let report = colloquy::audit::verify(app.pool(), &app.settings.relay.name).await.unwrap();
    assert!(report.is_sound(), "{report:?}");
    // The export is the same CloudEvents the relay publishes, in commit order.
    let mut exported = Vec::new();
    let written = colloquy::audit::export(app.pool(), Some("Conversation"), &mut exported).await.unwrap();
    assert_eq!(written, 2);
    let lines: Vec<serde_json::Value> =
        exported.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!(lines[0]["type"], "colloquy.conversation.ConversationStarted.v1");
    assert_eq!(lines[1]["data"]["content"], "hello");
    assert_eq!(lines[1]["subject"], conv.to_string());
    assert_eq!(report.events, 3);
    assert_eq!(report.projections_behind.get("messages"), Some(&0));

    // Damage written straight into the table (the API can do neither): a hole in one
    // aggregate's sequence, and a payload its type cannot read.
    let bad = Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES ('Conversation', $1, 2, 'UserMessagePosted', '1.0', '{\"UserMessagePosted\": {\"bogus\": 1}}', '{}')")
        .bind(&bad)
        .execute(app.pool())
        .await
        .unwrap();
    // The damaged row becomes readable once older transactions in the cluster ended.
    let report = support::eventually("the damaged event to be read", || async {
        let report = colloquy::audit::verify(app.pool(), &app.settings.relay.name).await.unwrap();
        (!report.undecodable.is_empty()).then_some(report)
    })
    .await;
    assert!(!report.is_sound());
    assert_eq!(report.sequence_gaps.len(), 1);
    assert_eq!((report.sequence_gaps[0].aggregate_id.as_str(), report.sequence_gaps[0].first), (bad.as_str(), 2));
    assert_eq!(report.undecodable.len(), 1);
    assert!(report.undecodable[0].aggregate.ends_with(&bad));
}

/// Appends `UserMessagePosted` at `sequence` in a transaction the caller commits later: a
/// writer on another instance, caught between its insert and its commit.
async fn racing_writer(
    pool: &sqlx::PgPool,
    conv: Uuid,
    owner: Uuid,
    sequence: i64,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    let payload = serde_json::json!({"UserMessagePosted": {"message_id": Uuid::new_v4(), "author_id": owner, "content": "from elsewhere"}});
    colloquy_infra::testing::insert_event(&mut *tx, "Conversation", conv, sequence, payload).await;
    tx
}

/// Waits until some session is blocked on another transaction (our command, stuck on the
/// racing writer's uncommitted row).
async fn until_a_writer_waits(pool: &sqlx::PgPool) {
    support::eventually("the command to block on its append", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'transactionid'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_append_is_retried_then_answered_as_a_conflict() {
    let app = TestApp::spawn_with(isolated_settings(), Processes::default()).await;
    let patient = conversation_service(&app);
    let (conv, owner, meta) = started(&patient).await;
    let post = || ConversationCommand::PostUserMessage {
        actor_id: owner,
        message_id: NewMessageId::mint(),
        content: "mine".into(),
        model: None,
    };

    // With retries: the command loses the race for sequence 2, decides again on fresh state
    // and lands at 3.
    let other = racing_writer(app.pool(), conv, owner, 2).await;
    let command = tokio::spawn({
        let (id, cmd, meta) = (conv.to_string(), post(), meta.clone());
        async move { patient.execute(&id, cmd, &meta).await.map(|c| c.version) }
    });
    until_a_writer_waits(app.pool()).await;
    other.commit().await.unwrap();
    assert_eq!(command.await.unwrap().unwrap(), 3);

    // Without retries left: the same race is answered as a conflict, and nothing of it stored.
    let impatient = conversation_service(&app).with_max_attempts(1);
    let other = racing_writer(app.pool(), conv, owner, 4).await;
    let command = tokio::spawn({
        let (id, cmd, meta) = (conv.to_string(), post(), meta.clone());
        async move { impatient.execute(&id, cmd, &meta).await.map(|c| c.version) }
    });
    until_a_writer_waits(app.pool()).await;
    other.commit().await.unwrap();
    assert!(matches!(command.await.unwrap(), Err(colloquy_commands::CommandError::Conflict)));
    assert_eq!(support::sequences(app.pool(), &conv.to_string()).await, [1, 2, 3, 4]);
}
