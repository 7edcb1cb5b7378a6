//! Per-user quotas through the use cases, on a real database: the N+1-th conversation is
//! refused, concurrent requests never overshoot, refused commands count nothing (neither
//! those the aggregate refuses nor those past one quota, whose other charges would fit),
//! replayed answers consume nothing, deletion frees a place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_commands::conversations::{Lifecycle, PostMessage, StartConversation};
use colloquy_commands::quotas::{Quota, QuotaExceeded};
use colloquy_commands::{Caller, CommandSettings, Commands, IdempotencyKey, UseCaseError};
use colloquy_domain::conversation::ConversationError;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::settings::QuotaSettings;
use colloquy_infra::testing::{insert_event, TestDatabase};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn commands(pool: &PgPool, limits: QuotaSettings) -> Commands {
    Commands::new(
        pool.clone(),
        Metrics::new(),
        CommandSettings { hash_concurrency: 2, idempotency_ttl_hours: 24, ..Default::default() },
    )
    .with_quotas(limits)
}

fn limits(conversations: u64, messages_per_day: u64, stored_bytes: u64) -> QuotaSettings {
    QuotaSettings { conversations, messages_per_day, stored_bytes, ..QuotaSettings::default() }
}

/// A registered user, written directly (no password hashing needed here).
async fn register(pool: &PgPool) -> Uuid {
    let user = Uuid::new_v4();
    let email = format!("u{}@example.com", user.simple());
    let payload = json!({"UserRegistered": {"user_id": user, "email": email, "full_name": "Ada", "role": "member"}});
    insert_event(pool, "User", user, 1, payload).await;
    user
}

fn caller(user: Uuid) -> Caller {
    Caller::user(user, "corr".into(), "req")
}

fn start(title: &str) -> StartConversation {
    StartConversation { title: Some(title.into()), ..Default::default() }
}

fn exceeded<T: std::fmt::Debug>(outcome: &Result<T, UseCaseError<ConversationError>>) -> Option<QuotaExceeded> {
    match outcome {
        Err(UseCaseError::QuotaExceeded(q)) => Some(*q),
        _ => None,
    }
}

async fn conversations_stored(pool: &PgPool, owner: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'ConversationStarted'
            AND (payload -> 'ConversationStarted' ->> 'owner_id') = $1",
    )
    .bind(owner.to_string())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_conversation_past_the_quota_is_refused_and_nothing_is_stored() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool, limits(3, 100, 1 << 20));
    let user = register(&db.pool).await;
    for i in 0..3 {
        commands.start_conversation(&caller(user), start(&format!("c{i}"))).await.unwrap();
    }
    let fourth = commands.start_conversation(&caller(user), start("c3")).await;
    assert_eq!(exceeded(&fourth), Some(QuotaExceeded { quota: Quota::Conversations, limit: 3 }), "{fourth:?}");
    assert_eq!(conversations_stored(&db.pool, user).await, 3);
    assert_eq!(commands.quotas().used(user, Quota::Conversations).await.unwrap(), 3);
    // Quotas are per user: someone else still has room.
    let other = register(&db.pool).await;
    commands.start_conversation(&caller(other), start("mine")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creations_never_exceed_the_quota() {
    let db = TestDatabase::create().await;
    let commands = std::sync::Arc::new(commands(&db.pool, limits(5, 100, 1 << 20)));
    let user = register(&db.pool).await;
    let attempts = (0..20).map(|i| {
        let commands = commands.clone();
        tokio::spawn(async move { commands.start_conversation(&caller(user), start(&format!("c{i}"))).await })
    });
    let outcomes = futures::future::join_all(attempts).await;
    let (mut accepted, mut refused) = (0, 0);
    for outcome in outcomes {
        match outcome.unwrap() {
            Ok(_) => accepted += 1,
            Err(UseCaseError::QuotaExceeded(q)) => {
                assert_eq!(q.quota, Quota::Conversations);
                refused += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((accepted, refused), (5, 15));
    assert_eq!(conversations_stored(&db.pool, user).await, 5);
    assert_eq!(commands.quotas().used(user, Quota::Conversations).await.unwrap(), 5);
}

#[tokio::test]
async fn a_refused_command_counts_nothing() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool, limits(1, 2, 1 << 20));
    let user = register(&db.pool).await;
    // Refused by the aggregate (empty title): it takes no place.
    let refused = commands.start_conversation(&caller(user), start("  ")).await;
    assert!(
        matches!(refused, Err(UseCaseError::Rejected { rejection: ConversationError::InvalidTitle { .. }, .. })),
        "{refused:?}"
    );
    assert_eq!(commands.quotas().used(user, Quota::Conversations).await.unwrap(), 0);
    assert_eq!(commands.quotas().used(user, Quota::StoredBytes).await.unwrap(), 0);
    let conversation = commands.start_conversation(&caller(user), start("Trip")).await.unwrap().value.conversation_id;

    // A refused post (a NUL in it) counts neither a message nor its bytes.
    let bytes_before = commands.quotas().used(user, Quota::StoredBytes).await.unwrap();
    let nul = PostMessage { id: None, content: "a\u{0}b".into(), model: None };
    let refused = commands.post_message(&caller(user), conversation, nul).await;
    assert!(matches!(refused, Err(UseCaseError::Rejected { .. })), "{refused:?}");
    assert_eq!(commands.quotas().used(user, Quota::MessagesPerDay).await.unwrap(), 0);
    assert_eq!(commands.quotas().used(user, Quota::StoredBytes).await.unwrap(), bytes_before);

    // So the day's two messages are still both available, and the third is refused.
    for text in ["one", "two"] {
        commands
            .post_message(&caller(user), conversation, PostMessage { id: None, content: text.into(), model: None })
            .await
            .unwrap();
    }
    let third = commands
        .post_message(&caller(user), conversation, PostMessage { id: None, content: "3".into(), model: None })
        .await;
    assert_eq!(exceeded(&third), Some(QuotaExceeded { quota: Quota::MessagesPerDay, limit: 2 }), "{third:?}");
    // Its bytes would have fitted: counted in the same statement, they went back with it.
    assert_eq!(commands.quotas().used(user, Quota::StoredBytes).await.unwrap(), bytes_before + 6);
    assert_eq!(commands.quotas().used(user, Quota::MessagesPerDay).await.unwrap(), 2);
    let posted: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'UserMessagePosted'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(posted, 2, "the refused message is not in the event store");
    // The conversation takes commands as before: the refusal left its state untouched.
    commands.rename_conversation(&caller(user), conversation, "Renamed".into()).await.unwrap();
}

#[tokio::test]
async fn a_stranger_posting_to_someone_elses_conversation_consumes_nothing() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool, limits(10, 10, 1 << 20));
    let (owner, stranger) = (register(&db.pool).await, register(&db.pool).await);
    let conversation = commands.start_conversation(&caller(owner), start("Trip")).await.unwrap().value.conversation_id;
    let post = PostMessage { id: None, content: "hello".into(), model: None };
    let refused = commands.post_message(&caller(stranger), conversation, post).await;
    assert!(matches!(refused, Err(UseCaseError::Rejected { rejection: ConversationError::NotFound, .. })));
    assert_eq!(commands.quotas().used(stranger, Quota::MessagesPerDay).await.unwrap(), 0);
    assert_eq!(commands.quotas().used(stranger, Quota::StoredBytes).await.unwrap(), 0);
}

#[tokio::test]
async fn stored_bytes_count_titles_prompts_and_messages() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool, limits(10, 100, 20));
    let user = register(&db.pool).await;
    let input = StartConversation { system_prompt: Some("Be brief".into()), ..start("Trip") };
    let conversation = commands.start_conversation(&caller(user), input).await.unwrap().value.conversation_id;
    assert_eq!(commands.quotas().used(user, Quota::StoredBytes).await.unwrap(), 12);
    // "é" is two bytes: 4 × 2 = 8 would make 20 (allowed); 5 × 2 = 10 would not.
    let over = PostMessage { id: None, content: "ééééé".into(), model: None };
    let refused = commands.post_message(&caller(user), conversation, over).await;
    assert_eq!(exceeded(&refused), Some(QuotaExceeded { quota: Quota::StoredBytes, limit: 20 }), "{refused:?}");
    // All or nothing: the refused post did not keep its message-count reservation either.
    assert_eq!(commands.quotas().used(user, Quota::MessagesPerDay).await.unwrap(), 0);
    let fits = PostMessage { id: None, content: "éééé".into(), model: None };
    commands.post_message(&caller(user), conversation, fits).await.unwrap();
    assert_eq!(commands.quotas().used(user, Quota::StoredBytes).await.unwrap(), 20);
    let rename = commands.rename_conversation(&caller(user), conversation, "X".into()).await;
    assert_eq!(exceeded(&rename), Some(QuotaExceeded { quota: Quota::StoredBytes, limit: 20 }), "{rename:?}");
}

#[tokio::test]
async fn a_replayed_answer_consumes_nothing() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool, limits(1, 1, 1 << 20));
    let user = register(&db.pool).await;
    let keyed = caller(user).with_idempotency_key(IdempotencyKey::parse("start-1"));
    let first = commands.start_conversation(&keyed, start("Trip")).await.unwrap();
    // The quota is full, yet the same keyed request answers its recorded answer.
    let again = commands.start_conversation(&keyed, start("Trip")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.value, first.value);
    let conversation = first.value.conversation_id;
    let keyed = caller(user).with_idempotency_key(IdempotencyKey::parse("post-1"));
    let post = PostMessage { id: None, content: "hello".into(), model: None };
    let posted = commands.post_message(&keyed, conversation, post.clone()).await.unwrap();
    let replayed = commands.post_message(&keyed, conversation, post).await.unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.value, posted.value);
    assert_eq!(commands.quotas().used(user, Quota::Conversations).await.unwrap(), 1);
    assert_eq!(commands.quotas().used(user, Quota::MessagesPerDay).await.unwrap(), 1);
}

#[tokio::test]
async fn a_refusal_for_quota_is_not_recorded_under_the_idempotency_key() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool, limits(1, 10, 1 << 20));
    let user = register(&db.pool).await;
    let first = commands.start_conversation(&caller(user), start("Trip")).await.unwrap().value.conversation_id;
    let keyed = caller(user).with_idempotency_key(IdempotencyKey::parse("start-2"));
    let refused = commands.start_conversation(&keyed, start("Plans")).await;
    assert!(exceeded(&refused).is_some(), "{refused:?}");
    // Deleting frees the place; the same keyed request then runs (it was not answered for good).
    commands.change_lifecycle(&caller(user), first, Lifecycle::Delete).await.unwrap();
    assert_eq!(commands.quotas().used(user, Quota::Conversations).await.unwrap(), 0);
    let retried = commands.start_conversation(&keyed, start("Plans")).await.unwrap();
    assert!(!retried.replayed);
    assert_eq!(commands.quotas().used(user, Quota::Conversations).await.unwrap(), 1);
}
