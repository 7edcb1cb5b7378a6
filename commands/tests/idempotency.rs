//! Idempotency-Key on a real database, through the use cases and through
//! `Idempotency::once` itself: a repeated request answers the recorded answer without
//! running again, a reused key with another request is refused, business rejections are
//! final, infrastructure failures release the key, and keys expire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use colloquy_commands::conversations::{ConversationAccepted, Lifecycle, PostMessage, StartConversation};
use colloquy_commands::idempotency::Idempotency;
use colloquy_commands::users::UpdateProfile;
use colloquy_commands::{Answer, Caller, CommandSettings, Commands, Failure, IdempotencyKey, UseCaseError};
use colloquy_domain::conversation::ConversationError;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::testing::{insert_event, TestDatabase};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

const TTL_HOURS: u32 = 24;

fn commands(pool: &PgPool) -> Commands {
    Commands::new(
        pool.clone(),
        Metrics::new(),
        CommandSettings { hash_concurrency: 2, idempotency_ttl_hours: TTL_HOURS, ..Default::default() },
    )
}

/// A registered user. The `UserRegistered` event is written directly: registering through
/// the use case would hash a password, a second of CPU in a debug build, for nothing these
/// tests look at.
async fn register(pool: &PgPool, email: &str) -> Uuid {
    let user = Uuid::new_v4();
    let payload = json!({"UserRegistered": {"user_id": user, "email": email, "full_name": "Ada", "role": "member"}});
    insert_event(pool, "User", user, 1, payload).await;
    user
}

fn key(raw: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey::parse(raw).expect("a valid key"))
}

/// `user` sending a request with the Idempotency-Key `raw`.
fn with_key(user: Uuid, raw: &str) -> Caller {
    Caller::user(user, "corr".into(), "req").with_idempotency_key(key(raw))
}

fn without_key(user: Uuid) -> Caller {
    Caller::user(user, "corr".into(), "req")
}

fn start(title: &str) -> StartConversation {
    StartConversation { title: Some(title.into()), ..Default::default() }
}

fn message(content: &str) -> PostMessage {
    PostMessage { id: None, content: content.into(), model: None }
}

async fn start_conversation(commands: &Commands, user: Uuid) -> Uuid {
    commands.start_conversation(&without_key(user), start("chat")).await.unwrap().value.conversation_id
}

/// How many events of `event_type` the store holds.
async fn events_of(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The keys remembered, as (user, key), sorted.
async fn keys(pool: &PgPool) -> Vec<(Uuid, String)> {
    sqlx::query_as("SELECT user_id, key FROM idempotency_keys ORDER BY user_id, key").fetch_all(pool).await.unwrap()
}

async fn age_key(pool: &PgPool, user: Uuid, key: &str, age: &str) {
    let aged =
        sqlx::query("UPDATE idempotency_keys SET created_at = now() - $3::interval WHERE user_id = $1 AND key = $2")
            .bind(user)
            .bind(key)
            .bind(age)
            .execute(pool)
            .await
            .unwrap();
    assert_eq!(aged.rows_affected(), 1, "no key {key} of {user}");
}

fn assert_reused<T: std::fmt::Debug>(outcome: Result<T, UseCaseError<impl std::error::Error>>) {
    assert!(
        matches!(outcome, Err(UseCaseError::IdempotencyKeyReused)),
        "expected IdempotencyKeyReused, got {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_start_replays_the_same_conversation_without_starting_another() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "ada@example.com").await;
    // No client-chosen id: a second run would start a second conversation under a new id.
    let first = commands.start_conversation(&with_key(user, "k-1"), start("plans")).await.unwrap();
    assert!(!first.replayed);
    let again = commands.start_conversation(&with_key(user, "k-1"), start("plans")).await.unwrap();
    assert_eq!(again, Answer { value: first.value, replayed: true });
    assert_eq!(events_of(&db.pool, "ConversationStarted").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_post_replays_the_same_message_without_posting_again() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "ada@example.com").await;
    let conversation = start_conversation(&commands, user).await;
    let first = commands.post_message(&with_key(user, "k-1"), conversation, message("hello")).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.value.version, 2);
    let again = commands.post_message(&with_key(user, "k-1"), conversation, message("hello")).await.unwrap();
    assert_eq!(again, Answer { value: first.value, replayed: true });
    assert_eq!(events_of(&db.pool, "UserMessagePosted").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_profile_update_replays_its_version_without_updating_again() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "ada@example.com").await;
    let update = || UpdateProfile { full_name: Some("Ada Lovelace".into()), ..Default::default() };
    let first = commands.update_profile(&with_key(user, "k-1"), update()).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.value.version, 2);
    let again = commands.update_profile(&with_key(user, "k-1"), update()).await.unwrap();
    assert_eq!(again, Answer { value: first.value, replayed: true });
    assert_eq!(events_of(&db.pool, "ProfileUpdated").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_key_run_every_time() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "ada@example.com").await;
    let conversation = start_conversation(&commands, user).await;
    let first = commands.post_message(&without_key(user), conversation, message("hello")).await.unwrap();
    let second = commands.post_message(&without_key(user), conversation, message("hello")).await.unwrap();
    assert!(!first.replayed && !second.replayed);
    assert_ne!(first.value.message_id, second.value.message_id);
    assert_eq!(events_of(&db.pool, "UserMessagePosted").await, 2);
    assert_eq!(keys(&db.pool).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_input_is_refused_and_changes_nothing() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "ada@example.com").await;
    let conversation = start_conversation(&commands, user).await;
    let first = commands.post_message(&with_key(user, "k-1"), conversation, message("hello")).await.unwrap();

    assert_reused(commands.post_message(&with_key(user, "k-1"), conversation, message("goodbye")).await);
    let other = start_conversation(&commands, user).await;
    assert_reused(commands.post_message(&with_key(user, "k-1"), other, message("hello")).await);
    assert_eq!(events_of(&db.pool, "UserMessagePosted").await, 1);
    // The recorded answer is intact.
    let again = commands.post_message(&with_key(user, "k-1"), conversation, message("hello")).await.unwrap();
    assert_eq!(again, Answer { value: first.value, replayed: true });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_on_another_use_case_is_refused_and_changes_nothing() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "ada@example.com").await;
    let update = UpdateProfile { default_model: Some(Some("gpt-x".into())), ..Default::default() };
    commands.update_profile(&with_key(user, "k-1"), update).await.unwrap();

    assert_reused(commands.start_conversation(&with_key(user, "k-1"), start("plans")).await);
    assert_eq!(events_of(&db.pool, "ConversationStarted").await, 0);
    let conversation = start_conversation(&commands, user).await;
    assert_reused(commands.change_lifecycle(&with_key(user, "k-1"), conversation, Lifecycle::Archive).await);
    assert_eq!(events_of(&db.pool, "ConversationArchived").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_may_use_the_same_key_independently() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let ada = register(&db.pool, "ada@example.com").await;
    let grace = register(&db.pool, "grace@example.com").await;
    let of_ada = commands.start_conversation(&with_key(ada, "k-1"), start("plans")).await.unwrap();
    let of_grace = commands.start_conversation(&with_key(grace, "k-1"), start("plans")).await.unwrap();
    assert!(!of_ada.replayed && !of_grace.replayed);
    assert_ne!(of_ada.value.conversation_id, of_grace.value.conversation_id);
    assert_eq!(events_of(&db.pool, "ConversationStarted").await, 2);
    // And another input from the other user is no reuse either.
    let update = UpdateProfile { full_name: Some("Grace Hopper".into()), ..Default::default() };
    assert!(commands.update_profile(&with_key(grace, "k-2"), update.clone()).await.is_ok());
    assert!(commands.update_profile(&with_key(ada, "k-2"), update).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_rejection_is_recorded_and_replayed_without_running_the_command_again() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "ada@example.com").await;
    let conversation = start_conversation(&commands, user).await;
    commands.change_lifecycle(&without_key(user), conversation, Lifecycle::Archive).await.unwrap();

    let refused = commands.post_message(&with_key(user, "k-1"), conversation, message("hello")).await;
    assert!(
        matches!(refused, Err(UseCaseError::Rejected { rejection: ConversationError::Archived, replayed: false })),
        "{refused:?}"
    );
    // Now the command would succeed: a retry that ran it would post.
    commands.change_lifecycle(&without_key(user), conversation, Lifecycle::Unarchive).await.unwrap();
    let retried = commands.post_message(&with_key(user, "k-1"), conversation, message("hello")).await;
    assert!(
        matches!(retried, Err(UseCaseError::Rejected { rejection: ConversationError::Archived, replayed: true })),
        "{retried:?}"
    );
    assert_eq!(events_of(&db.pool, "UserMessagePosted").await, 0);
    // A fresh key runs the command.
    assert!(!commands.post_message(&with_key(user, "k-2"), conversation, message("hello")).await.unwrap().replayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_first_request_is_still_running_answers_in_progress() {
    let db = TestDatabase::create().await;
    let idempotency = Idempotency::new(db.pool.clone(), TTL_HOURS);
    let user = Uuid::new_v4();
    let (started, first_started) = oneshot::channel::<()>();
    let (finish, may_finish) = oneshot::channel::<()>();
    let first = tokio::spawn({
        let idempotency = idempotency.clone();
        async move {
            idempotency
                .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", || async {
                    started.send(()).unwrap();
                    may_finish.await.unwrap();
                    Ok("first".to_string())
                })
                .await
        }
    });
    first_started.await.unwrap();

    let runs = AtomicUsize::new(0);
    let run = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok("second".to_string())
    };
    let second =
        idempotency.once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", run).await;
    assert!(matches!(second, Err(UseCaseError::RequestInProgress)), "{second:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the second request ran while the first was running");

    finish.send(()).unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first, Answer { value: "first".to_string(), replayed: false });
    let third =
        idempotency.once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", run).await;
    assert_eq!(third.unwrap(), Answer { value: "first".to_string(), replayed: true });
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infrastructure_failure_releases_the_key_for_a_retry() {
    let db = TestDatabase::create().await;
    let idempotency = Idempotency::new(db.pool.clone(), TTL_HOURS);
    let user = Uuid::new_v4();
    let runs = AtomicUsize::new(0);

    let failed = idempotency
        .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(UseCaseError::Failed(Failure::Database(sqlx::Error::PoolTimedOut)))
        })
        .await;
    assert!(matches!(failed, Err(UseCaseError::Failed(Failure::Database(_)))), "{failed:?}");
    assert_eq!(keys(&db.pool).await, []);

    let retried = idempotency
        .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok("done".to_string())
        })
        .await;
    assert_eq!(retried.unwrap(), Answer { value: "done".to_string(), replayed: false });
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(keys(&db.pool).await, [(user, "k-1".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_releases_the_key_for_a_retry() {
    let db = TestDatabase::create().await;
    let idempotency = Idempotency::new(db.pool.clone(), TTL_HOURS);
    let user = Uuid::new_v4();
    let conflicted = idempotency
        .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", || async {
            Err(UseCaseError::Conflict)
        })
        .await;
    assert!(matches!(conflicted, Err(UseCaseError::Conflict)), "{conflicted:?}");
    assert_eq!(keys(&db.pool).await, []);
    let retried = idempotency
        .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", || async {
            Ok("done".to_string())
        })
        .await;
    assert_eq!(retried.unwrap(), Answer { value: "done".to_string(), replayed: false });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_claimed_afresh() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "ada@example.com").await;
    let first = commands.start_conversation(&with_key(user, "k-1"), start("plans")).await.unwrap();
    age_key(&db.pool, user, "k-1", "25 hours").await;

    let again = commands.start_conversation(&with_key(user, "k-1"), start("plans")).await.unwrap();
    assert!(!again.replayed);
    assert_ne!(again.value.conversation_id, first.value.conversation_id);
    assert_eq!(events_of(&db.pool, "ConversationStarted").await, 2);
    // The key now records the new request, and is young again.
    let replay = commands.start_conversation(&with_key(user, "k-1"), start("plans")).await.unwrap();
    assert_eq!(replay, Answer { value: again.value, replayed: true });
    age_key(&db.pool, user, "k-1", "25 hours").await;
    // Once expired, another input under the key is no reuse.
    let other: Answer<ConversationAccepted> =
        commands.start_conversation(&with_key(user, "k-1"), start("other plans")).await.unwrap();
    assert!(!other.replayed);
    assert_eq!(events_of(&db.pool, "ConversationStarted").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_younger_than_the_ttl_is_still_replayed() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "ada@example.com").await;
    let first = commands.start_conversation(&with_key(user, "k-1"), start("plans")).await.unwrap();
    age_key(&db.pool, user, "k-1", "23 hours 59 minutes").await;
    let again = commands.start_conversation(&with_key(user, "k-1"), start("plans")).await.unwrap();
    assert_eq!(again, Answer { value: first.value, replayed: true });
    assert_eq!(events_of(&db.pool, "ConversationStarted").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_expired_deletes_exactly_the_expired_keys() {
    let db = TestDatabase::create().await;
    let idempotency = Idempotency::new(db.pool.clone(), TTL_HOURS);
    let (ada, grace) = (Uuid::new_v4(), Uuid::new_v4());
    for (user, raw) in [(ada, "old-1"), (ada, "young"), (grace, "old-2"), (grace, "almost")] {
        idempotency
            .once::<String, ConversationError, _, _, _>(user, key(raw).as_ref(), "test", &raw, || async {
                Ok(raw.to_string())
            })
            .await
            .unwrap();
    }
    age_key(&db.pool, ada, "old-1", "25 hours").await;
    age_key(&db.pool, grace, "old-2", "30 days").await;
    age_key(&db.pool, grace, "almost", "23 hours").await;

    assert_eq!(idempotency.purge_expired().await.unwrap(), 2);
    let mut expected = vec![(ada, "young".to_string()), (grace, "almost".to_string())];
    expected.sort();
    assert_eq!(keys(&db.pool).await, expected);
    assert_eq!(idempotency.purge_expired().await.unwrap(), 0);
}

/// Ages the key's claim by `secs` (as if its first request started that long ago).
async fn age_claim(pool: &PgPool, user: Uuid, key_text: &str, secs: f64) {
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = created_at - make_interval(secs => $3) WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key_text)
    .bind(secs)
    .execute(pool)
    .await
    .unwrap();
}

/// A first request that was dropped mid-way (its client went away) leaves its key in
/// progress; once the lease has run out, the same request runs again, and the abandoned one
/// can no longer overwrite the answer its successor recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_claim_is_taken_over_by_the_same_request_after_its_lease() {
    use colloquy_commands::idempotency::IN_PROGRESS_LEASE_SECS;
    let db = TestDatabase::create().await;
    let idempotency = Idempotency::new(db.pool.clone(), TTL_HOURS);
    let user = Uuid::new_v4();
    let (started, first_started) = oneshot::channel::<()>();
    let (finish, may_finish) = oneshot::channel::<()>();
    let abandoned = tokio::spawn({
        let idempotency = idempotency.clone();
        async move {
            idempotency
                .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", || async {
                    started.send(()).unwrap();
                    let _ = may_finish.await;
                    Ok("abandoned".to_string())
                })
                .await
        }
    });
    first_started.await.unwrap();

    let retry = || async { Ok("retried".to_string()) };
    // Within the lease the key is still in progress.
    let early = idempotency
        .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", retry)
        .await;
    assert!(matches!(early, Err(UseCaseError::RequestInProgress)), "{early:?}");
    // Past the lease, another request with the same key is still refused...
    age_claim(&db.pool, user, "k-1", IN_PROGRESS_LEASE_SECS + 1.0).await;
    let other = idempotency
        .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"other", retry)
        .await;
    assert!(matches!(other, Err(UseCaseError::IdempotencyKeyReused)), "{other:?}");
    // ...and the same request runs again.
    let retried = idempotency
        .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", retry)
        .await;
    assert_eq!(retried.unwrap(), Answer { value: "retried".to_string(), replayed: false });

    // The abandoned request finishing late does not replace its successor's answer.
    finish.send(()).unwrap();
    assert_eq!(abandoned.await.unwrap().unwrap().value, "abandoned");
    let replay = idempotency
        .once::<String, ConversationError, _, _, _>(user, key("k-1").as_ref(), "test", &"input", retry)
        .await;
    assert_eq!(replay.unwrap(), Answer { value: "retried".to_string(), replayed: true });
}

/// The key's record of a request that committed is lost when the commit's answer is (the
/// connection dropped during COMMIT: the use case saw a failure and released the key).
async fn forget_key(pool: &PgPool, user: Uuid, key: &str) {
    let forgotten = sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2")
        .bind(user)
        .bind(key)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(forgotten.rows_affected(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_post_whose_answer_was_lost_is_answered_like_the_first_attempt() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "lost@example.com").await;
    let conversation = start_conversation(&commands, user).await;
    let id = Uuid::new_v4();
    let post = |content: &str| PostMessage { id: Some(id), content: content.into(), model: None };
    let first = commands.post_message(&with_key(user, "p-1"), conversation, post("hello")).await.unwrap();
    forget_key(&db.pool, user, "p-1").await;

    let retried = commands.post_message(&with_key(user, "p-1"), conversation, post("hello")).await.unwrap();
    assert_eq!(retried.value, first.value, "the same message id and version");
    assert_eq!(events_of(&db.pool, "UserMessagePosted").await, 1, "posted once");
    // Another text under that id is another message: refused, with or without a key.
    let other = commands.post_message(&with_key(user, "p-2"), conversation, post("goodbye")).await;
    assert!(matches!(other, Err(UseCaseError::Rejected { rejection: ConversationError::DuplicateMessage, .. })));
    // Without a key a repeat stays detectable, as before.
    let repeat = commands.post_message(&without_key(user), conversation, post("hello")).await;
    assert!(matches!(repeat, Err(UseCaseError::Rejected { rejection: ConversationError::DuplicateMessage, .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_start_whose_answer_was_lost_is_answered_like_the_first_attempt() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&db.pool, "lost-start@example.com").await;
    let stranger = register(&db.pool, "stranger@example.com").await;
    let id = Uuid::new_v4();
    let start_as = |title: &str| StartConversation { id: Some(id), title: Some(title.into()), ..Default::default() };
    let first = commands.start_conversation(&with_key(user, "s-1"), start_as("Plans")).await.unwrap();
    commands.rename_conversation(&without_key(user), id, "Renamed since".into()).await.unwrap();
    forget_key(&db.pool, user, "s-1").await;

    let retried = commands.start_conversation(&with_key(user, "s-1"), start_as("Plans")).await.unwrap();
    assert_eq!(retried.value, first.value, "version 1, the start's own");
    assert_eq!(events_of(&db.pool, "ConversationStarted").await, 1);
    for (caller, title) in [(with_key(user, "s-2"), "Other"), (with_key(stranger, "s-1"), "Plans")] {
        let refused = commands.start_conversation(&caller, start_as(title)).await;
        assert!(matches!(refused, Err(UseCaseError::Rejected { rejection: ConversationError::AlreadyStarted, .. })));
    }
}
