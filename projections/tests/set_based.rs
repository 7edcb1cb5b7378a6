//! Batches are written set-based where they can be (runs of posted messages in one INSERT,
//! runs of activity on conversations in one UPDATE): on a real database, a batch leaves the
//! read models exactly as applying its events one at a time does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_domain::conversation::{
    reply_id_for, ConversationEvent, ConversationKind, ConversationRenamed, ConversationStarted, MessageImported,
    ReplyCompleted, ReplyParameters, ReplyStarted, TokenUsage, UserMessagePosted,
};
use colloquy_infra::event_store::{self, StoredEvent};
use colloquy_infra::testing::TestDatabase;
use colloquy_projections::conversations::ConversationsProjection;
use colloquy_projections::messages::MessagesProjection;
use colloquy_projections::projection::apply_all_in_order;
use colloquy_projections::Projection;
use cqrs_es::DomainEvent;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Stores `event` as the next of `conversation`, with its current version (posts name
/// their parent), and answers it as stored.
async fn append(pool: &PgPool, conversation: Uuid, sequence: i64, event: ConversationEvent) -> StoredEvent {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Conversation', $1, $2, $3, $4, $5, '{}')",
    )
    .bind(conversation.to_string())
    .bind(sequence)
    .bind(event.event_type())
    .bind(event.event_version())
    .bind(serde_json::to_value(&event).unwrap())
    .execute(pool)
    .await
    .unwrap();
    let mut stored =
        event_store::read_aggregate(pool, "Conversation", &conversation.to_string(), sequence - 1, Some(sequence))
            .await
            .unwrap();
    stored.pop().unwrap()
}

async fn dump(pool: &PgPool, table: &str, order: &str) -> Value {
    sqlx::query_scalar(&format!("SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {order}), '[]') FROM {table} t"))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn posted(
    message: Uuid,
    author: Uuid,
    parent: Option<Uuid>,
    content: &str,
    edit_of: Option<Uuid>,
) -> ConversationEvent {
    ConversationEvent::UserMessagePosted(UserMessagePosted {
        message_id: message,
        author_id: author,
        content: content.into(),
        model: content.len().is_multiple_of(2).then(|| "gpt-4o".to_string()),
        parent_id: parent,
        edit_of,
    })
}

fn started(conversation: Uuid, owner: Uuid) -> ConversationEvent {
    ConversationEvent::ConversationStarted(ConversationStarted {
        conversation_id: conversation,
        owner_id: owner,
        title: "Batch".into(),
        kind: ConversationKind::Chat,
        model: "gpt-4o-mini".into(),
        system_prompt: None,
        title_pending: false,
    })
}

fn reply(message: Uuid) -> [ConversationEvent; 2] {
    [
        ConversationEvent::ReplyStarted(ReplyStarted {
            reply_id: reply_id_for(message),
            in_reply_to: message,
            model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            route: vec!["openai/gpt-4o-mini".into()],
            system_prompt: None,
            context: vec![message],
            parameters: ReplyParameters::default(),
            worker: "w1".into(),
            citations: vec![],
        }),
        ConversationEvent::ReplyCompleted(ReplyCompleted {
            reply_id: reply_id_for(message),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            content: format!("answer to {message}"),
            usage: TokenUsage { input_tokens: 7, output_tokens: 3 },
            latency_ms: 10,
            time_to_first_token_ms: 2,
            finish_reason: "stop".into(),
            attempts: vec![],
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_set_based_equals_its_events_applied_one_at_a_time() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    // Two conversations written in turns, as a batch from the topic holds them: runs of
    // posts broken by a rename, replies between posts, an imported message, an edit.
    let mut events = Vec::new();
    let mut seq = [0i64; 2];
    let mut next = |i: usize| {
        seq[i] += 1;
        seq[i]
    };
    events.push(append(pool, a, next(0), started(a, owner)).await);
    events.push(append(pool, b, next(1), started(b, owner)).await);
    let (mut parent_a, mut parent_b) = (None, None);
    for round in 0..6 {
        let (ma, mb) = (Uuid::new_v4(), Uuid::new_v4());
        events.push(append(pool, a, next(0), posted(ma, owner, parent_a, &format!("a{round}"), None)).await);
        events.push(append(pool, b, next(1), posted(mb, owner, parent_b, &format!("b {round}"), None)).await);
        parent_a = Some(ma);
        parent_b = Some(mb);
        if round == 2 {
            let rename = ConversationEvent::ConversationRenamed(ConversationRenamed { title: "Renamed".into() });
            events.push(append(pool, a, next(0), rename).await);
        }
        if round % 2 == 1 {
            for event in reply(ma) {
                events.push(append(pool, a, next(0), event).await);
            }
            parent_a = Some(reply_id_for(ma));
        }
    }
    let imported = ConversationEvent::MessageImported(MessageImported {
        message_id: Uuid::new_v4(),
        parent_id: parent_b,
        role: "user".into(),
        content: "imported".into(),
        status: "completed".into(),
        model: None,
        provider: None,
        usage: None,
        citations: vec![],
        written_at: chrono::Utc::now(),
    });
    events.push(append(pool, b, next(1), imported).await);
    let edit = posted(Uuid::new_v4(), owner, None, "edited first", parent_b);
    events.push(append(pool, b, next(1), edit).await);
    events.push(append(pool, a, next(0), posted(Uuid::new_v4(), owner, parent_a, "last", None)).await);

    let projections: [(&dyn Projection, &str); 2] =
        [(&MessagesProjection, "message_id"), (&ConversationsProjection, "conversation_id")];
    for (projection, key) in projections {
        let live = projection.table();
        let alone = format!("{live}_alone");
        sqlx::query(&format!("CREATE TABLE {alone} (LIKE {live} INCLUDING ALL)")).execute(pool).await.unwrap();
        // The whole batch at once, as the projector applies it.
        let mut tx = pool.begin().await.unwrap();
        let outcomes = apply_all_in_order(&mut tx, projection, projection.name(), live, &events)
            .await
            .unwrap_or_else(|f| panic!("{}: event {} failed: {}", projection.name(), f.index, f.error));
        tx.commit().await.unwrap();
        assert_eq!(outcomes.len(), events.len());
        // Each event alone.
        let mut conn = pool.acquire().await.unwrap();
        for event in &events {
            projection.apply(&mut conn, &alone, event).await.unwrap();
        }
        let (batched, one_by_one) = (dump(pool, live, key).await, dump(pool, &alone, key).await);
        assert!(batched.as_array().is_some_and(|rows| !rows.is_empty()), "{batched}");
        assert_eq!(batched, one_by_one, "{}", projection.name());
    }
    // The counts are the ones the events make (a: six posts and the last one; b: six posts,
    // the imported user message and the edit), read back rather than left to the comparison.
    let counts: Vec<(Uuid, i64, i64)> =
        sqlx::query_as("SELECT conversation_id, message_count, version FROM rm_conversations ORDER BY conversation_id")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut expected = vec![(a, 7, seq[0]), (b, 8, seq[1])];
    expected.sort();
    assert_eq!(counts, expected);
}
