//! Assistant replies in the read models, on a real database: a reply's row appears when it
//! starts and is completed, failed or cancelled in place; the conversation row counts only
//! posted messages; a rebuild yields exactly what live projection did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_domain::conversation::{
    reply_id_for, ConversationEvent, ReplyAttempt, ReplyCancelled, ReplyCompleted, ReplyFailed, ReplyFailure,
    ReplyParameters, ReplyStarted, TokenUsage,
};
use colloquy_infra::event_store::{self, StoredEvent};
use colloquy_infra::testing::{eventually, insert_event, TestDatabase};
use colloquy_projections::conversations::{self, ConversationsProjection};
use colloquy_projections::messages::{self, Message, MessageError, MessageUsage, MessagesProjection};
use colloquy_projections::projection::apply_all_in_order;
use colloquy_projections::rebuild::rebuild;
use colloquy_projections::Projection;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Appends the next event of the conversation.
struct Writer<'a> {
    pool: &'a PgPool,
    conversation: Uuid,
    sequence: i64,
}

impl Writer<'_> {
    async fn raw(&mut self, payload: Value) -> i64 {
        self.sequence += 1;
        insert_event(self.pool, "Conversation", self.conversation, self.sequence, payload).await;
        self.sequence
    }

    async fn event(&mut self, event: ConversationEvent) -> i64 {
        self.raw(serde_json::to_value(event).unwrap()).await
    }
}

async fn stored(pool: &PgPool, id: Uuid, from: i64) -> Vec<StoredEvent> {
    event_store::read_aggregate(pool, "Conversation", &id.to_string(), from, None).await.unwrap()
}

async fn project(pool: &PgPool, projection: &dyn Projection, events: &[StoredEvent]) {
    let mut tx = pool.begin().await.unwrap();
    apply_all_in_order(&mut tx, projection, projection.name(), projection.table(), events)
        .await
        .unwrap_or_else(|f| panic!("{}: event {} failed: {}", projection.name(), f.index, f.error));
    tx.commit().await.unwrap();
}

async fn dump(pool: &PgPool, table: &str, order: &str) -> Value {
    sqlx::query_scalar(&format!("SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {order}), '[]') FROM {table} t"))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn started(conversation: Uuid, owner: Uuid) -> Value {
    json!({"ConversationStarted": {
        "conversation_id": conversation, "owner_id": owner, "title": "Trip", "kind": "chat", "model": "gpt-4o-mini",
        "system_prompt": null
    }})
}

/// A post as version 1.0 stored it: without a model.
fn posted_1_0(message: Uuid, author: Uuid, content: &str) -> Value {
    json!({"UserMessagePosted": {"message_id": message, "author_id": author, "content": content}})
}

fn posted_with_model(message: Uuid, author: Uuid, content: &str, model: &str) -> Value {
    json!({"UserMessagePosted": {"message_id": message, "author_id": author, "content": content, "model": model}})
}

fn reply_started(message: Uuid) -> ConversationEvent {
    ConversationEvent::ReplyStarted(ReplyStarted {
        reply_id: reply_id_for(message),
        in_reply_to: message,
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        route: vec!["openai/gpt-4o-mini".into(), "local/smollm2-135m".into()],
        system_prompt: None,
        context: vec![message],
        parameters: ReplyParameters::default(),
        worker: "w1".into(),
        citations: vec![],
    })
}

fn attempt(provider: &str, outcome: &str) -> ReplyAttempt {
    ReplyAttempt {
        provider: provider.into(),
        model: "m".into(),
        outcome: outcome.into(),
        error_class: None,
        error: None,
        status: None,
        latency_ms: 5,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_stream_then_end_in_place_and_rebuild_identically() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let (owner, conversation) = (Uuid::new_v4(), Uuid::new_v4());
    let (m1, m2, m3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (r1, r2, r3) = (reply_id_for(m1), reply_id_for(m2), reply_id_for(m3));
    let mut w = Writer { pool, conversation, sequence: 0 };
    w.raw(started(conversation, owner)).await;
    let s_m1 = w.raw(posted_1_0(m1, owner, "one")).await;
    let s_r1 = w.event(reply_started(m1)).await;
    let projections: [&dyn Projection; 2] = [&MessagesProjection, &ConversationsProjection];
    for p in projections {
        project(pool, p, &stored(pool, conversation, 0).await).await;
    }

    // While it streams.
    let listed = messages::list(pool, owner, conversation, 0, 100).await.unwrap();
    let events = stored(pool, conversation, 0).await;
    let user_one = Message {
        message_id: m1,
        conversation_id: conversation,
        sequence: s_m1,
        role: "user".into(),
        content: "one".into(),
        created_at: events[1].recorded_at,
        status: "completed".into(),
        reply_id: Some(r1),
        in_reply_to: None,
        model: None,
        provider: None,
        usage: None,
        finish_reason: None,
        error: None,
        citations: vec![],
    };
    let streaming = Message {
        message_id: r1,
        conversation_id: conversation,
        sequence: s_r1,
        role: "assistant".into(),
        content: String::new(),
        created_at: events[2].recorded_at,
        status: "streaming".into(),
        reply_id: None,
        in_reply_to: Some(m1),
        model: Some("gpt-4o-mini".into()),
        provider: Some("openai".into()),
        usage: None,
        finish_reason: None,
        error: None,
        citations: vec![],
    };
    assert_eq!(listed, [user_one.clone(), streaming.clone()]);
    assert_eq!(messages::reply(pool, owner, conversation, r1).await.unwrap(), Some(streaming.clone()));
    assert_eq!(messages::reply_for_message(pool, owner, conversation, m1).await.unwrap(), Some(streaming.clone()));
    assert_eq!(messages::reply(pool, Uuid::new_v4(), conversation, r1).await.unwrap(), None, "another owner's");
    assert_eq!(messages::reply(pool, owner, conversation, m1).await.unwrap(), None, "a user message is no reply");

    // It completes; a second is posted with a model and fails after some text; a third is
    // cancelled before any provider answered.
    w.event(ConversationEvent::ReplyCompleted(ReplyCompleted {
        reply_id: r1,
        provider: "local".into(),
        model: "smollm2-135m".into(),
        content: "answer one".into(),
        usage: TokenUsage { input_tokens: 11, output_tokens: 3 },
        latency_ms: 100,
        time_to_first_token_ms: 20,
        finish_reason: "stop".into(),
        attempts: vec![attempt("openai", "failed"), attempt("local", "succeeded")],
    }))
    .await;
    w.raw(posted_with_model(m2, owner, "two", "gpt-4o")).await;
    w.event(reply_started(m2)).await;
    w.event(ConversationEvent::ReplyFailed(ReplyFailed {
        reply_id: r2,
        reason: ReplyFailure { code: "provider_error".into(), message: "stream cut".into() },
        attempts: vec![attempt("openai", "failed")],
        partial_content: "answer t".into(),
        provider: Some("openai".into()),
        model: Some("gpt-4o-2024-08-06".into()),
        usage: TokenUsage { input_tokens: 20, output_tokens: 2 },
    }))
    .await;
    w.raw(posted_1_0(m3, owner, "three")).await;
    w.event(reply_started(m3)).await;
    let last = w
        .event(ConversationEvent::ReplyCancelled(ReplyCancelled {
            reply_id: r3,
            cancelled_by: owner,
            partial_content: String::new(),
            usage: TokenUsage::default(),
            attempts: vec![],
            provider: None,
            model: None,
        }))
        .await;
    for p in projections {
        project(pool, p, &stored(pool, conversation, s_r1).await).await;
    }

    let listed = messages::list(pool, owner, conversation, 0, 100).await.unwrap();
    let shown: Vec<(Uuid, &str, &str, &str)> =
        listed.iter().map(|m| (m.message_id, m.role.as_str(), m.status.as_str(), m.content.as_str())).collect();
    assert_eq!(
        shown,
        [
            (m1, "user", "completed", "one"),
            (r1, "assistant", "completed", "answer one"),
            (m2, "user", "completed", "two"),
            (r2, "assistant", "failed", "answer t"),
            (m3, "user", "completed", "three"),
            (r3, "assistant", "cancelled", ""),
        ]
    );
    let completed = Message {
        content: "answer one".into(),
        status: "completed".into(),
        model: Some("smollm2-135m".into()),
        provider: Some("local".into()),
        usage: Some(MessageUsage { input_tokens: 11, output_tokens: 3 }),
        finish_reason: Some("stop".into()),
        ..streaming
    };
    assert_eq!(listed[..2], [user_one, completed]);
    assert_eq!((listed[2].model.as_deref(), listed[2].reply_id), (Some("gpt-4o"), Some(r2)));
    let failed = &listed[3];
    assert_eq!((failed.provider.as_deref(), failed.model.as_deref()), (Some("openai"), Some("gpt-4o-2024-08-06")));
    assert_eq!(failed.error, Some(MessageError { code: "provider_error".into(), message: "stream cut".into() }));
    assert_eq!(
        (failed.usage, failed.finish_reason.as_deref()),
        (Some(MessageUsage { input_tokens: 20, output_tokens: 2 }), None)
    );
    // Nothing answered before the cancel: the started provider and model stay.
    let cancelled = &listed[5];
    assert_eq!((cancelled.provider.as_deref(), cancelled.model.as_deref()), (Some("openai"), Some("gpt-4o-mini")));
    assert_eq!(
        (cancelled.error.as_ref(), cancelled.usage),
        (None, Some(MessageUsage { input_tokens: 0, output_tokens: 0 }))
    );

    // The conversation counts the three posts; every reply event is activity.
    let row = conversations::find(pool, owner, conversation).await.unwrap().unwrap();
    let events = stored(pool, conversation, 0).await;
    assert_eq!((row.message_count, row.version), (3, last));
    assert_eq!(row.last_activity_at, events.last().unwrap().recorded_at);

    // A rebuild from the event store yields the live tables exactly.
    eventually("the events past the fence", || async {
        let visible = event_store::read_committed(pool, Default::default(), None, 100).await.unwrap();
        (visible.len() == events.len()).then_some(())
    })
    .await;
    for (p, order) in
        [(&MessagesProjection as &dyn Projection, "sequence"), (&ConversationsProjection, "conversation_id")]
    {
        let live = dump(pool, p.table(), order).await;
        rebuild(pool, p).await.unwrap();
        assert_eq!(dump(pool, p.table(), order).await, live, "{} rebuilt differs from live", p.name());
    }
}

// The row's owner comes from the answered message: a reply to a message the read model
// does not hold cannot be placed, and is poison rather than a row nobody can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_message_the_read_model_lacks_is_poison() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let (owner, conversation, message) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut w = Writer { pool, conversation, sequence: 0 };
    w.raw(started(conversation, owner)).await;
    w.event(reply_started(message)).await;
    let mut tx = pool.begin().await.unwrap();
    let events = stored(pool, conversation, 0).await;
    let failure =
        apply_all_in_order(&mut tx, &MessagesProjection, "messages", "rm_messages", &events).await.unwrap_err();
    assert_eq!(failure.index, 1);
    assert!(matches!(failure.error, colloquy_projections::ApplyError::Poison(_)), "{}", failure.error);
}
