//! The event store's reply lookups and the conversation history, on a real database (the
//! statements are private; tests sit next to them to read their plans too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_domain::conversation::{
    reply_id_for, ConversationEvent, ConversationKind, ConversationStarted, ReplyCancelled, ReplyCompleted,
    ReplyFailed, ReplyFailure, ReplyParameters, ReplyRequested, ReplyStarted, TokenUsage, UserMessagePosted,
    REPLY_NAMESPACE,
};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::*;
use crate::testing::TestDatabase;

const OWNER: Uuid = Uuid::from_u128(1);

fn started(conversation: Uuid) -> ConversationEvent {
    ConversationEvent::ConversationStarted(ConversationStarted {
        conversation_id: conversation,
        owner_id: OWNER,
        title: "Trip".into(),
        kind: ConversationKind::Chat,
        model: "gpt-4o-mini".into(),
        system_prompt: None,
        title_pending: false,
    })
}

fn posted(message: Uuid, content: &str) -> ConversationEvent {
    ConversationEvent::UserMessagePosted(UserMessagePosted {
        message_id: message,
        author_id: OWNER,
        content: content.into(),
        model: None,
        parent_id: None,
        edit_of: None,
    })
}

fn start_of(message: Uuid) -> ConversationEvent {
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
    })
}

fn completed(message: Uuid, content: &str) -> ConversationEvent {
    ConversationEvent::ReplyCompleted(ReplyCompleted {
        reply_id: reply_id_for(message),
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        content: content.into(),
        usage: TokenUsage { input_tokens: 3, output_tokens: 4 },
        latency_ms: 10,
        time_to_first_token_ms: 5,
        finish_reason: "stop".into(),
        attempts: vec![],
    })
}

fn failed(message: Uuid, partial: &str) -> ConversationEvent {
    ConversationEvent::ReplyFailed(ReplyFailed {
        reply_id: reply_id_for(message),
        reason: ReplyFailure { code: "provider_error".into(), message: "cut".into() },
        attempts: vec![],
        partial_content: partial.into(),
        provider: None,
        model: None,
        usage: TokenUsage::default(),
    })
}

fn cancelled(message: Uuid, partial: &str) -> ConversationEvent {
    ConversationEvent::ReplyCancelled(ReplyCancelled {
        reply_id: reply_id_for(message),
        cancelled_by: OWNER,
        partial_content: partial.into(),
        usage: TokenUsage::default(),
        attempts: vec![],
        provider: None,
        model: None,
    })
}

/// Appends `events` to the conversation as sequences 1..=n, in one statement.
async fn append(pool: &PgPool, conversation: Uuid, events: &[ConversationEvent]) {
    let versioned: Vec<(ConversationEvent, &str)> = events.iter().map(|e| (e.clone(), "1.0")).collect();
    append_versions(pool, conversation, &versioned).await;
}

/// Appends events stored as the given event versions (as older code wrote them).
async fn append_versions(pool: &PgPool, conversation: Uuid, events: &[(ConversationEvent, &str)]) {
    let payloads: Vec<Value> = events.iter().map(|(e, _)| serde_json::to_value(e).unwrap()).collect();
    let types: Vec<String> = payloads.iter().map(|p| p.as_object().unwrap().keys().next().unwrap().clone()).collect();
    let texts: Vec<String> = payloads.iter().map(Value::to_string).collect();
    let versions: Vec<String> = events.iter().map(|(_, v)| v.to_string()).collect();
    let sequences: Vec<i64> = (1..=events.len() as i64).collect();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'Conversation', $1, s, t, v, p::json, '{}'
           FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[]) AS u(s, t, p, v)",
    )
    .bind(conversation.to_string())
    .bind(&sequences)
    .bind(&types)
    .bind(&texts)
    .bind(&versions)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_tree_reads_parents_from_new_events_and_order_from_old_ones() {
    let db = TestDatabase::create().await;
    let conv = Uuid::new_v4();
    let (m1, m2, edit, regenerated) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let r1 = reply_id_for(m1);
    let edited = ConversationEvent::UserMessagePosted(UserMessagePosted {
        message_id: edit,
        author_id: OWNER,
        content: "two, again".into(),
        model: None,
        parent_id: Some(r1),
        edit_of: Some(m2),
    });
    let requested = ConversationEvent::ReplyRequested(ReplyRequested {
        reply_id: regenerated,
        in_reply_to: m1,
        model: None,
        requested_by: OWNER,
    });
    let mut regenerated_start = start_of(m1);
    if let ConversationEvent::ReplyStarted(s) = &mut regenerated_start {
        s.reply_id = regenerated;
    }
    append_versions(
        &db.pool,
        conv,
        &[
            (started(conv), "1.1"),
            // Written before 1.2: no parent in the payload, linear order.
            (posted(m1, "one"), "1.1"),
            (start_of(m1), "1.1"),
            (completed(m1, "answer one"), "1.0"),
            (posted(m2, "two"), "1.1"),
            // Written since: parents said.
            (edited, "1.2"),
            (requested, "1.0"),
            (regenerated_start, "1.1"),
        ],
    )
    .await;
    let node = |id| message_node(&db.pool, conv, id);
    assert_eq!(node(m1).await.unwrap(), Some(MessageNode { parent_id: None, is_reply: false }));
    assert_eq!(node(r1).await.unwrap(), Some(MessageNode { parent_id: Some(m1), is_reply: true }));
    assert_eq!(node(m2).await.unwrap(), Some(MessageNode { parent_id: Some(r1), is_reply: false }));
    assert_eq!(node(edit).await.unwrap(), Some(MessageNode { parent_id: Some(r1), is_reply: false }));
    assert_eq!(node(Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(requested_reply(&db.pool, conv, regenerated).await.unwrap(), Some(m1));
    assert_eq!(requested_reply(&db.pool, conv, r1).await.unwrap(), None);

    let tree = message_tree(&db.pool, conv).await.unwrap();
    // m1 → {r1 → {m2, edit}, regenerated}: the newest branch wins at each step.
    assert_eq!(tree::latest_leaf(&tree, m1), Some(regenerated));
    assert_eq!(tree::latest_leaf(&tree, r1), Some(edit));
    assert_eq!(tree::path_to(&tree, m2), [m1, r1, m2]);
    let lookup = EventStoreMessages::new(db.pool.clone());
    assert_eq!(lookup.latest_leaf(conv, r1).await.unwrap(), Some(edit));
    assert_eq!(lookup.latest_leaf(conv, Uuid::new_v4()).await.unwrap(), None);
    // The edit's prompt path is its branch's: m1 and its reply, not m2.
    let path: Vec<Uuid> =
        path_messages(&db.pool, conv, edit, 6, 10).await.unwrap().iter().map(|c| c.message_id).collect();
    assert_eq!(path, [m1, r1]);
}

/// The plan of `sql` run with `binds` (conversation id, then numbers), as JSON text.
async fn plan(pool: &PgPool, sql: &str, conversation: Uuid, second: Option<String>, numbers: &[i64]) -> String {
    let explain = format!("EXPLAIN (FORMAT JSON) {sql}");
    let mut query = sqlx::query_scalar::<_, Value>(&explain).bind(conversation.to_string());
    if let Some(second) = second {
        query = query.bind(second);
    }
    for n in numbers {
        query = query.bind(*n);
    }
    query.fetch_one(pool).await.unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_ids_share_the_message_id_space() {
    let db = TestDatabase::create().await;
    let conv = Uuid::new_v4();
    let (m1, m2) = (Uuid::new_v4(), Uuid::new_v4());
    append(&db.pool, conv, &[started(conv), posted(m1, "hi"), start_of(m1), completed(m1, "hello"), posted(m2, "x")])
        .await;

    assert!(message_exists(&db.pool, conv, m1).await.unwrap());
    assert!(message_exists(&db.pool, conv, reply_id_for(m1)).await.unwrap(), "a reply id is taken");
    assert!(!message_exists(&db.pool, conv, reply_id_for(m2)).await.unwrap(), "not started yet");
    assert!(!message_exists(&db.pool, Uuid::new_v4(), m1).await.unwrap(), "another conversation");

    assert!(reply_exists(&db.pool, conv, reply_id_for(m1)).await.unwrap());
    assert!(!reply_exists(&db.pool, conv, m1).await.unwrap(), "a user message is not a reply");
    assert!(!reply_exists(&db.pool, conv, reply_id_for(m2)).await.unwrap());

    let (sequence, start) = reply_started(&db.pool, conv, reply_id_for(m1)).await.unwrap().unwrap();
    assert_eq!(sequence, 3);
    assert_eq!(ConversationEvent::ReplyStarted(start), start_of(m1));
    assert_eq!(reply_started(&db.pool, conv, reply_id_for(m2)).await.unwrap(), None);

    let port = EventStoreMessages::new(db.pool.clone());
    assert!(MessageLookup::reply_exists(&port, conv, reply_id_for(m1)).await.unwrap());
    assert!(MessageLookup::message_exists(&port, conv, reply_id_for(m1)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_is_the_ancestors_with_text_oldest_first() {
    let db = TestDatabase::create().await;
    let conv = Uuid::new_v4();
    let m: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    append(
        &db.pool,
        conv,
        &[
            started(conv),                 // 1
            posted(m[0], "one"),           // 2
            start_of(m[0]),                // 3
            completed(m[0], "answer one"), // 4
            posted(m[1], "two"),           // 5
            start_of(m[1]),                // 6
            failed(m[1], ""),              // 7: nothing reached anyone: not a message
            posted(m[2], "three"),         // 8
            start_of(m[2]),                // 9
            cancelled(m[2], "answer thr"), // 10
            posted(m[3], "four"),          // 11
            start_of(m[3]),                // 12
            failed(m[3], "answer fo"),     // 13
            posted(m[4], "five"),          // 14
            start_of(m[4]),                // 15: still streaming: not a message yet
        ],
    )
    .await;
    // Events before 1.2 name no parents: each message follows the one recorded before it.
    let got = path_messages(&db.pool, conv, m[4], 14, 100).await.unwrap();
    let seen: Vec<(i64, Uuid, MessageRole, &str)> =
        got.iter().map(|c| (c.sequence, c.message_id, c.role, c.content.as_str())).collect();
    let (user, assistant) = (MessageRole::User, MessageRole::Assistant);
    assert_eq!(
        seen,
        [
            (2, m[0], user, "one"),
            (4, reply_id_for(m[0]), assistant, "answer one"),
            (5, m[1], user, "two"),
            (8, m[2], user, "three"),
            (10, reply_id_for(m[2]), assistant, "answer thr"),
            (11, m[3], user, "four"),
            (13, reply_id_for(m[3]), assistant, "answer fo"),
        ]
    );
    // At most the `limit` nearest ancestors (the empty failed reply is one of them).
    let near: Vec<i64> = path_messages(&db.pool, conv, m[2], 8, 3).await.unwrap().iter().map(|c| c.sequence).collect();
    assert_eq!(near, [4, 5]);
    assert_eq!(path_messages(&db.pool, conv, m[0], 2, 10).await.unwrap(), []);
    assert_eq!(path_messages(&db.pool, Uuid::new_v4(), m[0], 2, 10).await.unwrap(), []);
    assert_eq!((MessageRole::User.as_str(), MessageRole::Assistant.as_str()), ("user", "assistant"));
}

// A 2,000-message conversation (6,001 events with its replies) among others: the path
// walk reads the primary key backwards from the message and stops after `limit` ancestors, and
// the id lookups use their partial indexes; no plan scans the table or sorts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_and_the_lookups_use_indexes_in_a_long_conversation() {
    let db = TestDatabase::create().await;
    let conv = Uuid::new_v4();
    let mut events = vec![started(conv)];
    let mut messages = Vec::new();
    for i in 0..2_000 {
        let message = Uuid::new_v4();
        messages.push(message);
        events.extend([posted(message, &format!("m{i}")), start_of(message), completed(message, &format!("r{i}"))]);
    }
    append(&db.pool, conv, &events).await;
    for _ in 0..20 {
        let other = Uuid::new_v4();
        let message = Uuid::new_v4();
        append(&db.pool, other, &[started(other), posted(message, "x"), start_of(message)]).await;
    }
    sqlx::query("ANALYZE events").execute(&db.pool).await.unwrap();

    // The path walk reads windows of message events backwards along the primary key.
    let window = plan(&db.pool, PATH_WINDOW.as_str(), conv, None, &[5_000, 80]).await;
    let backward =
        window.contains(r#""Scan Direction":"Backward""#) && window.contains(r#""Index Name":"events_pkey""#);
    assert!(backward, "{window}");
    assert!(!window.contains("Seq Scan") && !window.contains("\"Sort\""), "{window}");
    // The replies' endings are looked up by id.
    let ids = vec![reply_id_for(messages[1_990]).to_string(), reply_id_for(messages[1_991]).to_string()];
    let explain = format!("EXPLAIN (FORMAT JSON) {}", REPLY_ENDS.as_str());
    let ends: Value = sqlx::query_scalar(&explain).bind(conv.to_string()).bind(&ids).fetch_one(&db.pool).await.unwrap();
    let ends = ends.to_string();
    assert!(ends.contains("events_reply_end_id") && !ends.contains("Seq Scan"), "{ends}");
    // The 40 nearest messages of the path to the 1,667th message (posted at sequence 5,000).
    let target = messages[1_666];
    let got = path_messages(&db.pool, conv, target, 5_000, 40).await.unwrap();
    assert_eq!(got.len(), 40);
    assert!(got.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert_eq!(got.last().map(|c| c.message_id), Some(reply_id_for(messages[1_665])));
    assert_eq!(got.last().map(|c| c.content.as_str()), Some("r1665"));

    let probe = Some(reply_id_for(messages[7]).to_string());
    let exists = plan(&db.pool, MESSAGE_EXISTS.as_str(), conv, probe.clone(), &[]).await;
    assert!(exists.contains("events_message_id") && exists.contains("events_reply_id"), "{exists}");
    assert!(!exists.contains("Seq Scan"), "{exists}");
    let reply = plan(&db.pool, REPLY_EXISTS.as_str(), conv, probe, &[]).await;
    assert!(reply.contains("events_reply_id") && !reply.contains("Seq Scan"), "{reply}");
    assert!(reply_exists(&db.pool, conv, reply_id_for(messages[7])).await.unwrap());
}

// The migration derives pre-existing user rows' reply ids in SQL; it must agree with Rust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_derives_the_same_reply_ids() {
    let db = TestDatabase::create().await;
    for message in [Uuid::nil(), Uuid::from_u128(u128::MAX), Uuid::new_v4(), Uuid::new_v4()] {
        let sql: Uuid = sqlx::query_scalar("SELECT uuid_generate_v5($1, $2::text)")
            .bind(REPLY_NAMESPACE)
            .bind(message)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(sql, reply_id_for(message), "{message}");
    }
}
