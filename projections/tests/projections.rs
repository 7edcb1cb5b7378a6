//! The projections and queries on a real database, without Kafka or HTTP: events made by
//! the command use cases (or, for damaged logs, written straight into `events`) are applied
//! with the same exactly-once routine the projector and rebuilds use, and the queries read
//! the result.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use colloquy_commands::conversations::{Lifecycle, MessageAccepted, PostMessage, StartConversation};
use colloquy_commands::models::ModelCatalog;
use colloquy_commands::users::{Register, UpdateProfile};
use colloquy_commands::{Caller, CommandSettings, Commands};
use colloquy_domain::conversation::ConversationKind;
use colloquy_infra::event_store::{self, StoredEvent};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::redis_store::RedisStore;
use colloquy_infra::settings::RedisSettings;
use colloquy_infra::testing::{eventually, insert_event, TestDatabase};
use colloquy_projections::conversations::{self, ConversationSummary, ConversationsProjection};
use colloquy_projections::messages::{self, MessagesProjection};
use colloquy_projections::projection::{apply_all_in_order, apply_in_order, Applied, BatchFailure};
use colloquy_projections::queries::{
    ListConversations, Queries, QueryError, Resource, DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE,
};
use colloquy_projections::users::{self, UserProfile, UsersProjection};
use colloquy_projections::{cache, freshness, ApplyError, Projection};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Writing events.

fn commands(pool: &PgPool) -> Commands {
    Commands::new(
        pool.clone(),
        Metrics::new(),
        CommandSettings { hash_concurrency: 2, idempotency_ttl_hours: 24, ..Default::default() },
    )
    .with_models(ModelCatalog::new(["gpt-x".to_string()], "local/smollm2-135m".into()))
}

fn caller(user: Uuid) -> Caller {
    Caller::user(user, "corr".into(), "req")
}

/// A user registered through the use case (a password hash: about a second in debug).
async fn register(commands: &Commands, email: &str, full_name: &str) -> Uuid {
    let input = Register { email: email.into(), full_name: full_name.into(), password: "correct horse battery".into() };
    commands.register("corr".into(), input).await.expect("registration").user_id
}

/// A user whose `UserRegistered` is written directly, for tests about conversations.
async fn owner(pool: &PgPool) -> Uuid {
    let user = Uuid::new_v4();
    let email = format!("{}@example.com", user.simple());
    let payload = json!({"UserRegistered": {"user_id": user, "email": email, "full_name": "Ada", "role": "member"}});
    insert_event(pool, "User", user, 1, payload).await;
    user
}

fn started(conversation: Uuid, owner: Uuid, title: &str) -> Value {
    json!({"ConversationStarted": {
        "conversation_id": conversation, "owner_id": owner, "title": title, "kind": "chat", "model": "offline",
        "system_prompt": null
    }})
}

fn posted(message: Uuid, author: Uuid, content: &str) -> Value {
    json!({"UserMessagePosted": {"message_id": message, "author_id": author, "content": content}})
}

async fn start(commands: &Commands, user: Uuid, title: &str) -> Uuid {
    let input = StartConversation { title: Some(title.into()), ..Default::default() };
    commands.start_conversation(&caller(user), input).await.unwrap().value.conversation_id
}

async fn post(commands: &Commands, user: Uuid, conversation: Uuid, content: &str) -> MessageAccepted {
    let input = PostMessage { id: None, content: content.into(), model: None };
    commands.post_message(&caller(user), conversation, input).await.unwrap().value
}

async fn rename(commands: &Commands, user: Uuid, conversation: Uuid, title: &str) {
    commands.rename_conversation(&caller(user), conversation, title.into()).await.unwrap();
}

async fn change(commands: &Commands, user: Uuid, conversation: Uuid, change: Lifecycle) {
    commands.change_lifecycle(&caller(user), conversation, change).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Reading and projecting them.

/// The events of an aggregate after sequence `from`, as the event store holds them.
async fn stored(pool: &PgPool, aggregate_type: &str, id: Uuid, from: i64) -> Vec<StoredEvent> {
    event_store::read_aggregate(pool, aggregate_type, &id.to_string(), from, None).await.unwrap()
}

/// Applies `events` in one committed transaction, as the projector's fast path does.
async fn project(pool: &PgPool, projection: &dyn Projection, events: &[StoredEvent]) -> Vec<Applied> {
    let mut tx = pool.begin().await.unwrap();
    let outcomes = apply_all_in_order(&mut tx, projection, projection.name(), projection.table(), events)
        .await
        .unwrap_or_else(|f| panic!("{}: event {} failed: {}", projection.name(), f.index, f.error));
    tx.commit().await.unwrap();
    outcomes
}

/// Delivers one event in a transaction of its own, committed when it applied.
async fn deliver(pool: &PgPool, projection: &dyn Projection, event: &StoredEvent) -> Result<Applied, ApplyError> {
    let mut tx = pool.begin().await.unwrap();
    let outcome = apply_in_order(&mut tx, projection, projection.name(), projection.table(), event).await;
    match outcome {
        Ok(_) => tx.commit().await.unwrap(),
        Err(_) => tx.rollback().await.unwrap(),
    }
    outcome
}

async fn progress(pool: &PgPool, projection: &dyn Projection, id: Uuid) -> i64 {
    freshness::applied_version(pool, projection.name(), &id.to_string()).await.unwrap()
}

fn applied(filled: usize, touched: &[Uuid]) -> Applied {
    Applied::Applied { filled, touched: touched.to_vec() }
}

async fn user_row(pool: &PgPool, user: Uuid) -> UserProfile {
    users::find(pool, user).await.unwrap().expect("a projected user")
}

async fn conversation_row(pool: &PgPool, owner: Uuid, conversation: Uuid) -> ConversationSummary {
    conversations::find(pool, owner, conversation).await.unwrap().expect("a projected conversation")
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.unwrap()
}

/// Every row of `table` as JSON, in `order`.
async fn dump(pool: &PgPool, table: &str, order: &str) -> Value {
    sqlx::query_scalar(&format!("SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {order}), '[]') FROM {table} t"))
        .fetch_one(pool)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Users.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_projects_an_active_member() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&commands, " Ada@Example.com ", " Ada Lovelace ").await;
    let events = stored(&db.pool, "User", user, 0).await;

    assert_eq!(project(&db.pool, &UsersProjection, &events).await, [applied(0, &[user])]);
    let at = events[0].recorded_at;
    let expected = UserProfile {
        user_id: user,
        email: "ada@example.com".into(),
        full_name: "Ada Lovelace".into(),
        role: "member".into(),
        active: true,
        default_model: None,
        system_prompt: None,
        version: 1,
        registered_at: at,
        updated_at: at,
    };
    assert_eq!(user_row(&db.pool, user).await, expected);
    assert_eq!(progress(&db.pool, &UsersProjection, user).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_update_sets_and_then_clears_the_default_model() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&commands, "ada@example.com", "Ada").await;
    let set = UpdateProfile {
        default_model: Some(Some("gpt-x".into())),
        system_prompt: Some(Some("Be brief.".into())),
        ..Default::default()
    };
    commands.update_profile(&caller(user), set).await.unwrap();
    project(&db.pool, &UsersProjection, &stored(&db.pool, "User", user, 0).await).await;
    let row = user_row(&db.pool, user).await;
    assert_eq!((row.default_model.as_deref(), row.system_prompt.as_deref()), (Some("gpt-x"), Some("Be brief.")));
    assert_eq!(row.version, 2);

    let clear = UpdateProfile { default_model: Some(None), ..Default::default() };
    let accepted = commands.update_profile(&caller(user), clear).await.unwrap().value;
    let cleared = stored(&db.pool, "User", user, 2).await;
    assert_eq!(project(&db.pool, &UsersProjection, &cleared).await, [applied(0, &[user])]);
    let after = user_row(&db.pool, user).await;
    assert_eq!(
        after,
        UserProfile { default_model: None, version: accepted.version, updated_at: cleared[0].recorded_at, ..row },
        "only the default model, the version and the update time change"
    );
    assert_eq!(accepted.version, 3);
    assert_eq!(progress(&db.pool, &UsersProjection, user).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_user_is_projected_inactive() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&commands, "ada@example.com", "Ada").await;
    project(&db.pool, &UsersProjection, &stored(&db.pool, "User", user, 0).await).await;
    assert!(user_row(&db.pool, user).await.active);

    commands.deactivate(&caller(user)).await.unwrap();
    let deactivated = stored(&db.pool, "User", user, 1).await;
    project(&db.pool, &UsersProjection, &deactivated).await;
    let row = user_row(&db.pool, user).await;
    assert!(!row.active);
    assert_eq!((row.version, row.updated_at), (2, deactivated[0].recorded_at));
    assert_eq!(progress(&db.pool, &UsersProjection, user).await, 2);
}

// ---------------------------------------------------------------------------------------
// Conversations.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_conversation_is_projected_with_its_settings() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let input = StartConversation {
        id: None,
        title: Some(" Plans ".into()),
        kind: Some(ConversationKind::Knowledge),
        model: Some("gpt-x".into()),
        system_prompt: Some("Be brief.".into()),
    };
    let conversation = commands.start_conversation(&caller(user), input).await.unwrap().value.conversation_id;
    let events = stored(&db.pool, "Conversation", conversation, 0).await;

    assert_eq!(project(&db.pool, &ConversationsProjection, &events).await, [applied(0, &[user])]);
    let at = events[0].recorded_at;
    let expected = ConversationSummary {
        conversation_id: conversation,
        owner_id: user,
        title: "Plans".into(),
        kind: "knowledge".into(),
        model: "gpt-x".into(),
        system_prompt: Some("Be brief.".into()),
        archived: false,
        // A knowledge conversation starts grounded.
        grounded: true,
        message_count: 0,
        version: 1,
        created_at: at,
        last_activity_at: at,
        origin: "app".into(),
    };
    assert_eq!(conversation_row(&db.pool, user, conversation).await, expected);
    assert_eq!(progress(&db.pool, &ConversationsProjection, conversation).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_changes_the_title_and_the_last_activity() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let conversation = start(&commands, user, "Plans").await;
    project(&db.pool, &ConversationsProjection, &stored(&db.pool, "Conversation", conversation, 0).await).await;
    let before = conversation_row(&db.pool, user, conversation).await;

    rename(&commands, user, conversation, "Holiday plans").await;
    let renamed = stored(&db.pool, "Conversation", conversation, 1).await;
    project(&db.pool, &ConversationsProjection, &renamed).await;
    let after = conversation_row(&db.pool, user, conversation).await;
    assert_eq!(
        after,
        ConversationSummary {
            title: "Holiday plans".into(),
            version: 2,
            last_activity_at: renamed[0].recorded_at,
            ..before.clone()
        }
    );
    assert!(after.last_activity_at > before.last_activity_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_and_unarchiving_toggle_the_archived_flag() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let conversation = start(&commands, user, "Plans").await;
    project(&db.pool, &ConversationsProjection, &stored(&db.pool, "Conversation", conversation, 0).await).await;

    change(&commands, user, conversation, Lifecycle::Archive).await;
    project(&db.pool, &ConversationsProjection, &stored(&db.pool, "Conversation", conversation, 1).await).await;
    let archived = conversation_row(&db.pool, user, conversation).await;
    assert_eq!((archived.archived, archived.version), (true, 2));
    assert_eq!(conversations::list(&db.pool, user, false, None, 10).await.unwrap(), []);
    assert_eq!(conversations::list(&db.pool, user, true, None, 10).await.unwrap(), [archived]);

    change(&commands, user, conversation, Lifecycle::Unarchive).await;
    project(&db.pool, &ConversationsProjection, &stored(&db.pool, "Conversation", conversation, 2).await).await;
    let unarchived = conversation_row(&db.pool, user, conversation).await;
    assert_eq!((unarchived.archived, unarchived.version), (false, 3));
    assert_eq!(conversations::list(&db.pool, user, true, None, 10).await.unwrap(), []);
    assert_eq!(conversations::list(&db.pool, user, false, None, 10).await.unwrap(), [unarchived]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_messages_are_counted() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let conversation = start(&commands, user, "Plans").await;
    for content in ["one", "two", "three"] {
        post(&commands, user, conversation, content).await;
    }
    rename(&commands, user, conversation, "Still plans").await;
    let events = stored(&db.pool, "Conversation", conversation, 0).await;

    let outcomes = project(&db.pool, &ConversationsProjection, &events).await;
    assert_eq!(outcomes, vec![applied(0, &[user]); 5]);
    let row = conversation_row(&db.pool, user, conversation).await;
    assert_eq!((row.message_count, row.version, row.title.as_str()), (3, 5, "Still plans"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_conversation_leaves_the_conversations_read_model_for_good() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let (doomed, kept) = (start(&commands, user, "Doomed").await, start(&commands, user, "Kept").await);
    post(&commands, user, doomed, "hello").await;
    project(&db.pool, &ConversationsProjection, &stored(&db.pool, "Conversation", kept, 0).await).await;
    project(&db.pool, &ConversationsProjection, &stored(&db.pool, "Conversation", doomed, 0).await).await;

    change(&commands, user, doomed, Lifecycle::Delete).await;
    let events = stored(&db.pool, "Conversation", doomed, 0).await;
    let deleted = events.last().unwrap();
    // The owner's cached views are stale: the delete touches them.
    assert_eq!(deliver(&db.pool, &ConversationsProjection, deleted).await.unwrap(), applied(0, &[user]));
    assert_eq!(conversations::find(&db.pool, user, doomed).await.unwrap(), None);
    assert_eq!(progress(&db.pool, &ConversationsProjection, doomed).await, 3);
    // A late redelivery of an earlier event does not bring it back.
    for event in &events {
        assert_eq!(deliver(&db.pool, &ConversationsProjection, event).await.unwrap(), Applied::Duplicate);
    }
    assert_eq!(conversations::find(&db.pool, user, doomed).await.unwrap(), None);
    let listed: Vec<Uuid> =
        conversations::list(&db.pool, user, false, None, 10).await.unwrap().iter().map(|c| c.conversation_id).collect();
    assert_eq!(listed, [kept]);
}

// ---------------------------------------------------------------------------------------
// Messages.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_listed_in_sequence_order() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let conversation = start(&commands, user, "Plans").await;
    let one = post(&commands, user, conversation, "one").await;
    rename(&commands, user, conversation, "More plans").await;
    let two = post(&commands, user, conversation, "two").await;
    change(&commands, user, conversation, Lifecycle::Archive).await;
    change(&commands, user, conversation, Lifecycle::Unarchive).await;
    let three = post(&commands, user, conversation, "  three\n").await;
    let events = stored(&db.pool, "Conversation", conversation, 0).await;

    // Messages carry no cached view: nothing is touched.
    assert_eq!(project(&db.pool, &MessagesProjection, &events).await, vec![applied(0, &[]); 7]);
    let listed = messages::list(&db.pool, user, conversation, 0, 100).await.unwrap();
    let seen: Vec<(Uuid, i64, &str, &str)> =
        listed.iter().map(|m| (m.message_id, m.sequence, m.role.as_str(), m.content.as_str())).collect();
    assert_eq!(
        seen,
        [
            (one.message_id, 2, "user", "one"),
            (two.message_id, 4, "user", "two"),
            (three.message_id, 7, "user", "  three\n")
        ]
    );
    assert_eq!([one.version, two.version, three.version], [2, 4, 7]);
    let times: Vec<_> = listed.iter().map(|m| m.created_at).collect();
    assert_eq!(times, [events[1].recorded_at, events[3].recorded_at, events[6].recorded_at]);
    // Paging after a sequence.
    let after: Vec<i64> =
        messages::list(&db.pool, user, conversation, 2, 1).await.unwrap().iter().map(|m| m.sequence).collect();
    assert_eq!(after, [4]);
    assert_eq!(progress(&db.pool, &MessagesProjection, conversation).await, 7);
    // The tree: each message follows the one before (no replies here), the newest is the leaf.
    let parents: Vec<(Uuid, Option<Uuid>)> =
        sqlx::query_as("SELECT message_id, parent_id FROM rm_messages WHERE conversation_id = $1 ORDER BY sequence")
            .bind(conversation)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        parents,
        [(one.message_id, None), (two.message_id, Some(one.message_id)), (three.message_id, Some(two.message_id))]
    );
    let leaf: Uuid = sqlx::query_scalar(
        "SELECT message_id FROM rm_messages WHERE conversation_id = $1 ORDER BY leaf_since DESC NULLS LAST LIMIT 1",
    )
    .bind(conversation)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(leaf, three.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_conversation_removes_its_messages() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let (doomed, kept) = (start(&commands, user, "Doomed").await, start(&commands, user, "Kept").await);
    for content in ["one", "two"] {
        post(&commands, user, doomed, content).await;
        post(&commands, user, kept, content).await;
    }
    project(&db.pool, &MessagesProjection, &stored(&db.pool, "Conversation", doomed, 0).await).await;
    project(&db.pool, &MessagesProjection, &stored(&db.pool, "Conversation", kept, 0).await).await;
    assert_eq!(count(&db.pool, "rm_messages").await, 4);

    change(&commands, user, doomed, Lifecycle::Delete).await;
    project(&db.pool, &MessagesProjection, &stored(&db.pool, "Conversation", doomed, 3).await).await;
    assert_eq!(messages::list(&db.pool, user, doomed, 0, 100).await.unwrap(), []);
    let kept_contents: Vec<String> =
        messages::list(&db.pool, user, kept, 0, 100).await.unwrap().into_iter().map(|m| m.content).collect();
    assert_eq!(kept_contents, ["one", "two"]);
    assert_eq!(count(&db.pool, "rm_messages").await, 2);
}

// ---------------------------------------------------------------------------------------
// Exactly once, in order.

/// A conversation of four events: started, a message, renamed, a message.
async fn four_events(pool: &PgPool) -> (Uuid, Uuid, Vec<StoredEvent>) {
    let commands = commands(pool);
    let user = owner(pool).await;
    let conversation = start(&commands, user, "Plans").await;
    post(&commands, user, conversation, "one").await;
    rename(&commands, user, conversation, "Holiday plans").await;
    post(&commands, user, conversation, "two").await;
    let events = stored(pool, "Conversation", conversation, 0).await;
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 3, 4]);
    (user, conversation, events)
}

/// What `projection` makes of `events` delivered once and in order, into a copy of its
/// table with progress of its own.
async fn once_in_order(pool: &PgPool, projection: &dyn Projection, events: &[StoredEvent]) -> String {
    let table = format!("{}_once", projection.table());
    sqlx::query(&format!("CREATE TABLE {table} (LIKE {} INCLUDING ALL)", projection.table()))
        .execute(pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let state = format!("{}_once", projection.name());
    apply_all_in_order(&mut tx, projection, &state, &table, events).await.unwrap();
    tx.commit().await.unwrap();
    table
}

const REDELIVERY: [usize; 7] = [3, 1, 3, 2, 4, 4, 1];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_redeliveries_apply_each_event_exactly_once() {
    let db = TestDatabase::create().await;
    let (user, conversation, events) = four_events(&db.pool).await;

    let projections: [(&dyn Projection, &[Uuid], &str); 2] =
        [(&ConversationsProjection, &[user], "conversation_id"), (&MessagesProjection, &[], "sequence")];
    for (projection, touched, order) in projections {
        let mut outcomes = Vec::new();
        for n in REDELIVERY {
            outcomes.push(deliver(&db.pool, projection, &events[n - 1]).await.unwrap());
        }
        let d = Applied::Duplicate;
        let expected = [applied(2, touched), d.clone(), d.clone(), d.clone(), applied(0, touched), d.clone(), d];
        assert_eq!(outcomes, expected, "{}", projection.name());
        assert_eq!(progress(&db.pool, projection, conversation).await, 4, "{}", projection.name());

        let reference = once_in_order(&db.pool, projection, &events).await;
        let (live, once) = (dump(&db.pool, projection.table(), order).await, dump(&db.pool, &reference, order).await);
        assert_eq!(live, once, "{}: redelivered differs from delivered once in order", projection.name());
    }
    // And what was delivered once is right.
    let row = conversation_row(&db.pool, user, conversation).await;
    assert_eq!((row.title.as_str(), row.message_count, row.version), ("Holiday plans", 2, 4));
    let contents: Vec<String> =
        messages::list(&db.pool, user, conversation, 0, 100).await.unwrap().into_iter().map(|m| m.content).collect();
    assert_eq!(contents, ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_redeliveries_out_of_order_applies_each_event_exactly_once() {
    let db = TestDatabase::create().await;
    let (user, conversation, events) = four_events(&db.pool).await;
    let batch: Vec<StoredEvent> = REDELIVERY.iter().map(|n| events[n - 1].clone()).collect();

    let outcomes = project(&db.pool, &ConversationsProjection, &batch).await;
    let d = Applied::Duplicate;
    let expected = [applied(2, &[user]), d.clone(), d.clone(), d.clone(), applied(0, &[user]), d.clone(), d];
    assert_eq!(outcomes, expected);
    assert_eq!(progress(&db.pool, &ConversationsProjection, conversation).await, 4);
    let reference = once_in_order(&db.pool, &ConversationsProjection, &events).await;
    assert_eq!(
        dump(&db.pool, "rm_conversations", "conversation_id").await,
        dump(&db.pool, &reference, "conversation_id").await
    );
    // The same batch again changes nothing.
    assert_eq!(project(&db.pool, &ConversationsProjection, &batch).await, vec![Applied::Duplicate; 7]);
    let row = conversation_row(&db.pool, user, conversation).await;
    assert_eq!((row.title.as_str(), row.message_count, row.version), ("Holiday plans", 2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_spanning_several_aggregates_records_progress_for_each() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let (a, b, c) =
        (start(&commands, user, "A").await, start(&commands, user, "B").await, start(&commands, user, "C").await);
    post(&commands, user, a, "a1").await;
    post(&commands, user, a, "a2").await;
    post(&commands, user, c, "c1").await;
    let (ea, eb, ec) = (
        stored(&db.pool, "Conversation", a, 0).await,
        stored(&db.pool, "Conversation", b, 0).await,
        stored(&db.pool, "Conversation", c, 0).await,
    );
    // A is already projected up to 2.
    project(&db.pool, &ConversationsProjection, &ea[..2]).await;

    let batch = [ea[0].clone(), eb[0].clone(), ec[0].clone(), ea[1].clone(), ec[1].clone(), ea[2].clone()];
    let outcomes = project(&db.pool, &ConversationsProjection, &batch).await;
    let new = applied(0, &[user]);
    assert_eq!(outcomes, [Applied::Duplicate, new.clone(), new.clone(), Applied::Duplicate, new.clone(), new]);
    for (id, version, messages) in [(a, 3, 2), (b, 1, 0), (c, 2, 1)] {
        assert_eq!(progress(&db.pool, &ConversationsProjection, id).await, version);
        let row = conversation_row(&db.pool, user, id).await;
        assert_eq!((row.version, row.message_count), (version, messages));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_missing_from_the_event_store_is_poison_and_applies_nothing() {
    let db = TestDatabase::create().await;
    let (user, conversation) = (owner(&db.pool).await, Uuid::new_v4());
    // A damaged log: sequence 2 is missing.
    insert_event(&db.pool, "Conversation", conversation, 1, started(conversation, user, "Plans")).await;
    let renamed = json!({"ConversationRenamed": {"title": "Holiday plans"}});
    insert_event(&db.pool, "Conversation", conversation, 3, renamed).await;
    let events = stored(&db.pool, "Conversation", conversation, 0).await;
    project(&db.pool, &ConversationsProjection, &events[..1]).await;

    let mut tx = db.pool.begin().await.unwrap();
    let refused =
        apply_in_order(&mut tx, &ConversationsProjection, "conversations", "rm_conversations", &events[1]).await;
    match &refused {
        Err(ApplyError::Poison(poison)) => {
            assert!(poison.describe().contains("missing from the event store"), "{}", poison.describe())
        }
        other => panic!("expected poison, got {other:?}"),
    }
    // Committed anyway: the refused event left nothing behind.
    tx.commit().await.unwrap();
    let row = conversation_row(&db.pool, user, conversation).await;
    assert_eq!((row.title.as_str(), row.version), ("Plans", 1));
    assert_eq!(progress(&db.pool, &ConversationsProjection, conversation).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stops_at_a_gap_missing_from_the_event_store() {
    let db = TestDatabase::create().await;
    let (user, conversation) = (owner(&db.pool).await, Uuid::new_v4());
    insert_event(&db.pool, "Conversation", conversation, 1, started(conversation, user, "Plans")).await;
    insert_event(&db.pool, "Conversation", conversation, 3, json!({"ConversationRenamed": {"title": "Later"}})).await;
    let events = stored(&db.pool, "Conversation", conversation, 0).await;

    let mut tx = db.pool.begin().await.unwrap();
    let failed =
        apply_all_in_order(&mut tx, &ConversationsProjection, "conversations", "rm_conversations", &events).await;
    assert!(matches!(failed, Err(BatchFailure { index: 1, error: ApplyError::Poison(_) })), "{failed:?}");
    tx.rollback().await.unwrap();
    assert_eq!(count(&db.pool, "rm_conversations").await, 0);
    assert_eq!(progress(&db.pool, &ConversationsProjection, conversation).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_is_not_the_domain_event_is_poison() {
    let db = TestDatabase::create().await;
    let user = Uuid::new_v4();
    let payload = json!({"UserRegistered": {"user_id": "not a uuid", "email": "ada@example.com", "full_name": "Ada"}});
    insert_event(&db.pool, "User", user, 1, payload).await;
    let events = stored(&db.pool, "User", user, 0).await;

    let refused = deliver(&db.pool, &UsersProjection, &events[0]).await;
    match &refused {
        Err(ApplyError::Poison(poison)) => {
            assert!(poison.describe().contains("is not a valid User"), "{}", poison.describe())
        }
        other => panic!("expected poison, got {other:?}"),
    }
    assert_eq!(count(&db.pool, "rm_users").await, 0);
    assert_eq!(progress(&db.pool, &UsersProjection, user).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_event_read_to_fill_a_gap_is_poison() {
    let db = TestDatabase::create().await;
    let (user, conversation) = (owner(&db.pool).await, Uuid::new_v4());
    // Sequence 1's payload is tagged with another event type than its row says.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Conversation', $1, 1, 'ConversationStarted', '1.0', $2, '{}')",
    )
    .bind(conversation.to_string())
    .bind(json!({"ConversationRenamed": {"title": "Plans"}}))
    .execute(&db.pool)
    .await
    .unwrap();
    insert_event(&db.pool, "Conversation", conversation, 2, posted(Uuid::new_v4(), user, "hello")).await;
    let second = stored(&db.pool, "Conversation", conversation, 1).await;

    let refused = deliver(&db.pool, &ConversationsProjection, &second[0]).await;
    match &refused {
        Err(ApplyError::Poison(poison)) => {
            assert!(poison.describe().contains("payload tag differs"), "{}", poison.describe())
        }
        other => panic!("expected poison, got {other:?}"),
    }
    assert_eq!(progress(&db.pool, &ConversationsProjection, conversation).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_read_model_refuses_is_poison() {
    let db = TestDatabase::create().await;
    let (user, conversation, message) = (owner(&db.pool).await, Uuid::new_v4(), Uuid::new_v4());
    // The aggregate refuses a second message with one id; a damaged log has it anyway.
    insert_event(&db.pool, "Conversation", conversation, 1, started(conversation, user, "Plans")).await;
    insert_event(&db.pool, "Conversation", conversation, 2, posted(message, user, "hello")).await;
    insert_event(&db.pool, "Conversation", conversation, 3, posted(message, user, "hello again")).await;
    let events = stored(&db.pool, "Conversation", conversation, 0).await;
    project(&db.pool, &MessagesProjection, &events[..2]).await;

    let refused = deliver(&db.pool, &MessagesProjection, &events[2]).await;
    assert!(matches!(refused, Err(ApplyError::Poison(_))), "a unique violation must be poison: {refused:?}");
    let contents: Vec<String> =
        messages::list(&db.pool, user, conversation, 0, 100).await.unwrap().into_iter().map(|m| m.content).collect();
    assert_eq!(contents, ["hello"]);
    assert_eq!(progress(&db.pool, &MessagesProjection, conversation).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_read_model_table_is_a_database_error_and_a_retry_applies() {
    let db = TestDatabase::create().await;
    let user = owner(&db.pool).await;
    let events = stored(&db.pool, "User", user, 0).await;
    sqlx::query("ALTER TABLE rm_users RENAME TO rm_users_away").execute(&db.pool).await.unwrap();

    let failed = deliver(&db.pool, &UsersProjection, &events[0]).await;
    assert!(matches!(failed, Err(ApplyError::Database(_))), "expected a database error, got {failed:?}");
    assert_eq!(progress(&db.pool, &UsersProjection, user).await, 0);

    sqlx::query("ALTER TABLE rm_users_away RENAME TO rm_users").execute(&db.pool).await.unwrap();
    assert_eq!(deliver(&db.pool, &UsersProjection, &events[0]).await.unwrap(), applied(0, &[user]));
    assert_eq!(user_row(&db.pool, user).await.version, 1);
}

// ---------------------------------------------------------------------------------------
// Queries.

/// A Redis key prefix of the test's own, removed afterwards (also when the test fails).
struct TestRedis {
    store: RedisStore,
    url: String,
}

impl TestRedis {
    async fn connect() -> Self {
        let settings = RedisSettings {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: format!("colloquy_test_{}:", Uuid::new_v4().simple()),
            ..Default::default()
        };
        Self { store: RedisStore::connect(&settings).await.expect("redis"), url: settings.url }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // Synchronously, on a thread of its own: the test's runtime may be unwinding.
        let (url, pattern) = (self.url.clone(), format!("{}*", self.store.prefix()));
        let _ = std::thread::spawn(move || -> redis::RedisResult<()> {
            let mut conn = redis::Client::open(url)?.get_connection()?;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) =
                    redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(500).query(&mut conn)?;
                if !keys.is_empty() {
                    redis::cmd("DEL").arg(&keys).query::<()>(&mut conn)?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })
        .join();
    }
}

fn queries(pool: &PgPool, redis: &TestRedis, wait: Duration) -> Queries {
    Queries::new(pool.clone(), redis.store.clone(), Metrics::new(), wait)
}

/// The ids of a conversation page and its next cursor.
fn page(body: &str) -> (Vec<Uuid>, Option<String>) {
    let page: Value = serde_json::from_str(body).unwrap();
    let ids = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["conversation_id"].as_str().unwrap().parse().unwrap())
        .collect();
    (ids, page["next_cursor"].as_str().map(String::from))
}

async fn project_conversation(pool: &PgPool, conversation: Uuid) {
    let events = stored(pool, "Conversation", conversation, 0).await;
    project(pool, &ConversationsProjection, &events).await;
    project(pool, &MessagesProjection, &events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_conversation_is_not_found() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let commands = commands(&db.pool);
    let (ada, grace) = (owner(&db.pool).await, owner(&db.pool).await);
    let conversation = start(&commands, ada, "Plans").await;
    post(&commands, ada, conversation, "secret").await;
    project_conversation(&db.pool, conversation).await;
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));

    assert_eq!(queries.conversation(ada, conversation, None).await.unwrap().conversation_id, conversation);
    assert_eq!(queries.messages(ada, conversation, None, 0, None, None).await.unwrap().messages.len(), 1);
    let not_found = |e: &QueryError| matches!(e, QueryError::NotFound(Resource::Conversation));
    let of_grace = queries.conversation(grace, conversation, None).await.unwrap_err();
    assert!(not_found(&of_grace), "{of_grace:?}");
    let messages_of_grace = queries.messages(grace, conversation, None, 0, None, None).await.unwrap_err();
    assert!(not_found(&messages_of_grace), "{messages_of_grace:?}");
    let list_of_grace = queries.conversations(grace, ListConversations::default()).await.unwrap();
    assert_eq!(page(&list_of_grace), (vec![], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_version_beyond_the_projection_is_not_yet_visible_after_the_wait() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let conversation = start(&commands, user, "Plans").await;
    rename(&commands, user, conversation, "Holiday plans").await;
    project(&db.pool, &ConversationsProjection, &stored(&db.pool, "Conversation", conversation, 0).await[..1]).await;
    let wait = Duration::from_millis(200);
    let queries = queries(&db.pool, &redis, wait);

    let asked = Instant::now();
    let outcome = queries.conversation(user, conversation, Some(2)).await;
    let waited = asked.elapsed();
    assert!(matches!(outcome, Err(QueryError::NotYetVisible { min_version: 2 })), "{outcome:?}");
    // The wait gives up at most one poll interval (50 ms) before its end.
    assert!(waited >= wait - Duration::from_millis(50), "gave up after {waited:?}");
    let list = ListConversations { conversation_id: Some(conversation), min_version: Some(2), ..Default::default() };
    let listed = queries.conversations(user, list).await;
    assert!(matches!(listed, Err(QueryError::NotYetVisible { min_version: 2 })), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reached_min_version_answers_at_once() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let conversation = start(&commands, user, "Plans").await;
    rename(&commands, user, conversation, "Holiday plans").await;
    project_conversation(&db.pool, conversation).await;
    let queries = queries(&db.pool, &redis, Duration::from_secs(10));

    let asked = Instant::now();
    let row = queries.conversation(user, conversation, Some(2)).await.unwrap();
    let older = queries.messages(user, conversation, None, 0, None, Some(1)).await.unwrap();
    assert!(asked.elapsed() < Duration::from_secs(5), "waited {:?} for a version already there", asked.elapsed());
    assert_eq!((row.version, row.title.as_str()), (2, "Holiday plans"));
    assert!(older.messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_waiting_for_a_version_answers_once_it_is_projected() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let conversation = start(&commands, user, "Plans").await;
    let metrics = Metrics::new();
    let queries = Queries::new(db.pool.clone(), redis.store.clone(), metrics.clone(), Duration::from_secs(20));

    let waiting = tokio::spawn(async move { queries.conversation(user, conversation, Some(1)).await });
    eventually("the query to wait for version 1", || async { (metrics.min_version_waiting.get() == 1).then_some(()) })
        .await;
    project(&db.pool, &ConversationsProjection, &stored(&db.pool, "Conversation", conversation, 0).await).await;
    let row = waiting.await.unwrap().unwrap();
    assert_eq!((row.conversation_id, row.version), (conversation, 1));
    assert_eq!(metrics.min_version_waiting.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_size_out_of_range_is_an_invalid_limit() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));
    let (user, conversation) = (Uuid::new_v4(), Uuid::new_v4());
    for limit in [0, -1, 101] {
        let list = queries.conversations(user, ListConversations { limit: Some(limit), ..Default::default() }).await;
        assert!(matches!(list, Err(QueryError::InvalidLimit)), "limit {limit}: {list:?}");
        let messages = queries.messages(user, conversation, None, 0, Some(limit), None).await;
        assert!(matches!(messages, Err(QueryError::InvalidLimit)), "limit {limit}: {messages:?}");
    }
    let full = queries.conversations(user, ListConversations { limit: Some(100), ..Default::default() }).await;
    assert_eq!(page(&full.unwrap()), (vec![], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_api_did_not_issue_is_an_invalid_cursor() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));
    let valid = conversations::PageCursor { last_activity_at: chrono::Utc::now(), conversation_id: Uuid::new_v4() };
    for cursor in ["", "garbage", "12_not-a-uuid", &format!("x_{}", Uuid::new_v4().simple())] {
        let list = ListConversations { cursor: Some(cursor.into()), ..Default::default() };
        let outcome = queries.conversations(Uuid::new_v4(), list).await;
        assert!(matches!(outcome, Err(QueryError::InvalidCursor)), "{cursor:?}: {outcome:?}");
    }
    let list = ListConversations { cursor: Some(valid.encode()), ..Default::default() };
    assert!(queries.conversations(Uuid::new_v4(), list).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_min_version_is_an_invalid_min_version() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));
    let (user, conversation) = (Uuid::new_v4(), Uuid::new_v4());
    let invalid = |e: Result<(), QueryError>| assert!(matches!(e, Err(QueryError::InvalidMinVersion)), "{e:?}");
    invalid(queries.profile(user, Some(-1)).await.map(drop));
    invalid(queries.conversation(user, conversation, Some(-1)).await.map(drop));
    invalid(queries.messages(user, conversation, None, 0, None, Some(-1)).await.map(drop));
    let list = ListConversations { min_version: Some(-1), conversation_id: Some(conversation), ..Default::default() };
    invalid(queries.conversations(user, list).await.map(drop));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_min_version_without_its_conversation_is_refused() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));
    let list = ListConversations { min_version: Some(1), ..Default::default() };
    let outcome = queries.conversations(Uuid::new_v4(), list).await;
    assert!(matches!(outcome, Err(QueryError::MinVersionNeedsConversation)), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pagination_walks_every_conversation_once_in_order() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    // Five started in one transaction share their last activity: only the id tells them apart.
    let mut tied = Vec::new();
    let mut tx = db.pool.begin().await.unwrap();
    for n in 0..5 {
        let id = Uuid::new_v4();
        insert_event(&mut *tx, "Conversation", id, 1, started(id, user, &format!("tied {n}"))).await;
        tied.push(id);
    }
    tx.commit().await.unwrap();
    let mut all = tied.clone();
    for n in 0..4 {
        all.push(start(&commands, user, &format!("own {n}")).await);
    }
    let archived = start(&commands, user, "archived").await;
    change(&commands, user, archived, Lifecycle::Archive).await;
    let someone_elses = start(&commands, owner(&db.pool).await, "not ours").await;
    for id in all.iter().chain([&archived, &someone_elses]) {
        project_conversation(&db.pool, *id).await;
    }
    let expected: Vec<Uuid> = sqlx::query_scalar(
        "SELECT conversation_id FROM rm_conversations WHERE owner_id = $1 AND NOT archived
          ORDER BY last_activity_at DESC, conversation_id DESC",
    )
    .bind(user)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(expected.len(), 9);
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));

    let (mut walked, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let list = ListConversations { limit: Some(2), cursor: cursor.clone(), ..Default::default() };
        let (ids, next) = page(&queries.conversations(user, list).await.unwrap());
        pages += 1;
        assert!(ids.len() <= 2);
        walked.extend(ids);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages <= 10, "the walk does not end: {walked:?}");
    }
    assert_eq!(walked, expected, "every active conversation once, newest activity first");
    assert_eq!(pages, 5);
    let archived_page = queries.conversations(user, ListConversations { archived: true, ..Default::default() }).await;
    assert_eq!(page(&archived_page.unwrap()), (vec![archived], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_first_page_is_refreshed_when_a_projection_touches_its_owner() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let first = start(&commands, user, "First").await;
    project_conversation(&db.pool, first).await;
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));
    assert_eq!(page(&queries.conversations(user, ListConversations::default()).await.unwrap()).0, [first]);

    // What the projector does: apply, then bump the generation of every touched user.
    let second = start(&commands, user, "Second").await;
    let outcomes =
        project(&db.pool, &ConversationsProjection, &stored(&db.pool, "Conversation", second, 0).await).await;
    for outcome in outcomes {
        if let Applied::Applied { touched, .. } = outcome {
            for touched in touched {
                cache::invalidate(&redis.store, touched).await.unwrap();
            }
        }
    }
    assert_eq!(page(&queries.conversations(user, ListConversations::default()).await.unwrap()).0, [second, first]);
}

#[tokio::test]
async fn a_value_read_before_a_change_and_stored_after_it_is_never_served() {
    let redis = TestRedis::connect().await;
    let user = Uuid::new_v4();
    assert_eq!(cache::get(&redis.store, user, "profile").await.unwrap(), (0, None));
    cache::put(&redis.store, user, 0, "profile", "fresh at 0").await.unwrap();
    assert_eq!(cache::get(&redis.store, user, "profile").await.unwrap(), (0, Some("fresh at 0".into())));

    // A reader looks up at generation 0 and loads; a change bumps the generation; the
    // reader stores what it loaded before the change.
    cache::invalidate(&redis.store, user).await.unwrap();
    cache::put(&redis.store, user, 0, "profile", "stale").await.unwrap();
    assert_eq!(cache::get(&redis.store, user, "profile").await.unwrap(), (1, None), "the stale value is not served");

    // The next reader stores at the current generation, and is served.
    cache::put(&redis.store, user, 1, "profile", "fresh at 1").await.unwrap();
    assert_eq!(cache::get(&redis.store, user, "profile").await.unwrap(), (1, Some("fresh at 1".into())));
    // Another user's generation is their own.
    assert_eq!(cache::get(&redis.store, Uuid::new_v4(), "profile").await.unwrap(), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_the_owners_alone_and_outlives_a_delete() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let commands = commands(&db.pool);
    let (ada, grace) = (owner(&db.pool).await, owner(&db.pool).await);
    let conversation = start(&commands, ada, "Plans").await;
    post(&commands, ada, conversation, "hello").await;
    rename(&commands, ada, conversation, "Holiday plans").await;
    change(&commands, ada, conversation, Lifecycle::Delete).await;
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));

    let trail = queries.conversation_events(ada, conversation, 0, None).await.unwrap().items;
    let seen: Vec<(i64, &str)> = trail.iter().map(|e| (e.sequence, e.event_type.as_str())).collect();
    assert_eq!(
        seen,
        [(1, "ConversationStarted"), (2, "UserMessagePosted"), (3, "ConversationRenamed"), (4, "ConversationDeleted")]
    );
    assert_eq!(trail[1].data["content"], "hello");
    assert_eq!(trail[0].meta("actor"), Some(format!("user:{ada}").as_str()));
    for (who, id) in [(grace, conversation), (ada, Uuid::new_v4())] {
        let refused = queries.conversation_events(who, id, 0, None).await;
        assert!(matches!(refused, Err(QueryError::NotFound(Resource::Conversation))), "{refused:?}");
    }
}

/// Races a query against a bound far below its `min_version` wait: a query that waited
/// for the version instead of checking ownership first cannot answer in time.
async fn at_once<T: std::fmt::Debug>(query: impl std::future::Future<Output = Result<T, QueryError>>) -> QueryError {
    let answer = tokio::time::timeout(Duration::from_secs(20), query).await.expect("the query waited for min_version");
    answer.expect_err("a stranger is answered not found")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_min_version_is_not_found_at_once_whether_the_id_exists_or_not() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let commands = commands(&db.pool);
    let (ada, grace) = (owner(&db.pool).await, owner(&db.pool).await);
    let projected = start(&commands, ada, "Projected").await;
    project_conversation(&db.pool, projected).await;
    // Started, but not projected yet: only the event store knows it.
    let fresh = start(&commands, ada, "Fresh").await;
    let queries = queries(&db.pool, &redis, Duration::from_secs(60));
    let not_found = |e: &QueryError| matches!(e, QueryError::NotFound(Resource::Conversation));
    for id in [projected, fresh, Uuid::new_v4()] {
        let e = at_once(queries.conversation(grace, id, Some(999))).await;
        assert!(not_found(&e), "{id}: {e:?}");
        let e = at_once(queries.messages(grace, id, None, 0, None, Some(999))).await;
        assert!(not_found(&e), "{id}: {e:?}");
        let list = ListConversations { conversation_id: Some(id), min_version: Some(999), ..Default::default() };
        let e = at_once(queries.conversations(grace, list)).await;
        assert!(not_found(&e), "{id}: {e:?}");
        let e = at_once(queries.conversation_events(grace, id, 0, None)).await;
        assert!(not_found(&e), "{id}: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_message_query_waits_for_a_conversation_not_projected_yet() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let commands = commands(&db.pool);
    let user = owner(&db.pool).await;
    let conversation = start(&commands, user, "Plans").await;
    let version = post(&commands, user, conversation, "hello").await.version;
    let metrics = Metrics::new();
    let queries = Queries::new(db.pool.clone(), redis.store.clone(), metrics.clone(), Duration::from_secs(60));
    let waiting = tokio::spawn(async move { queries.messages(user, conversation, None, 0, None, Some(version)).await });
    eventually("the query to wait", || async { (metrics.min_version_waiting.get() == 1).then_some(()) }).await;
    project_conversation(&db.pool, conversation).await;
    let messages = waiting.await.unwrap().unwrap();
    assert_eq!(messages.messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_paged_by_sequence_with_a_bounded_page() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let user = owner(&db.pool).await;
    let conversation = Uuid::new_v4();
    let mut tx = db.pool.begin().await.unwrap();
    insert_event(&mut *tx, "Conversation", conversation, 1, started(conversation, user, "Long")).await;
    for sequence in 2..=1_205 {
        insert_event(&mut *tx, "Conversation", conversation, sequence, posted(Uuid::new_v4(), user, "m")).await;
    }
    tx.commit().await.unwrap();
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = queries.conversation_events(user, conversation, after, Some(MAX_EVENTS_PAGE)).await.unwrap();
        assert!(page.items.len() as i64 <= MAX_EVENTS_PAGE);
        seen.extend(page.items.iter().map(|e| e.sequence));
        match page.next_after {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, (1..=1_205).collect::<Vec<i64>>());
    let default = queries.conversation_events(user, conversation, 0, None).await.unwrap();
    assert_eq!((default.items.len() as i64, default.next_after), (DEFAULT_EVENTS_PAGE, Some(DEFAULT_EVENTS_PAGE)));
    let last = queries.conversation_events(user, conversation, 1_204, Some(5)).await.unwrap();
    assert_eq!((last.items.len(), last.next_after), (1, None));
    for limit in [0, -1, MAX_EVENTS_PAGE + 1] {
        let refused = queries.conversation_events(user, conversation, 0, Some(limit)).await;
        assert!(matches!(refused, Err(QueryError::InvalidEventsLimit)), "{limit}: {refused:?}");
    }
    let refused = queries.conversation_events(user, conversation, -1, None).await;
    assert!(matches!(refused, Err(QueryError::InvalidCursor)), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_outside_the_timestamp_range_is_an_invalid_cursor() {
    let db = TestDatabase::create().await;
    let redis = TestRedis::connect().await;
    let queries = queries(&db.pool, &redis, Duration::from_millis(200));
    let id = Uuid::new_v4().simple();
    for micros in ["-8000000000000000000", "-62135596800000001", "253402300800000000"] {
        let list = ListConversations { cursor: Some(format!("{micros}_{id}")), ..Default::default() };
        let outcome = queries.conversations(Uuid::new_v4(), list).await;
        assert!(matches!(outcome, Err(QueryError::InvalidCursor)), "{micros}: {outcome:?}");
    }
}
