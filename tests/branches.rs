//! Branches without copies: regenerate twice and edit once, then switch branches. The tree,
//! the sibling indices and the active path are right; the prompt of each reply holds exactly
//! the path that leads to it; no event repeats the shared prefix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use colloquy_providers::testing::{FakeProvider, Route, Script};
use serde_json::{json, Value};
use support::{isolated_settings, ApiClient, TestApp};
use uuid::Uuid;

const EVERYTHING: Processes = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: false };

fn id(v: &Value, field: &str) -> Uuid {
    v[field].as_str().unwrap_or_else(|| panic!("no {field} in {v}")).parse().unwrap()
}

/// Posts `content`; returns (message id, reply id) once its reply completed.
async fn post(client: &ApiClient, token: &str, conversation: Uuid, content: &str) -> (Uuid, Uuid) {
    let (s, b) = client
        .post_json(&format!("/conversations/{conversation}/messages"), Some(token), json!({"content": content}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (message, reply) = (id(&b, "message_id"), id(&b, "reply_id"));
    client.reply_completed(token, conversation, &reply.to_string()).await;
    (message, reply)
}

/// Asks for another reply to `message`; returns its id once it completed.
async fn regenerate(client: &ApiClient, token: &str, conversation: Uuid, message: Uuid) -> Uuid {
    let (s, b, _) = client
        .send(
            reqwest::Method::POST,
            &format!("/conversations/{conversation}/messages/{message}/regenerate"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let reply = id(&b, "reply_id");
    client.reply_completed(token, conversation, &reply.to_string()).await;
    reply
}

/// (message id, role, content, sibling ids, sibling index) along a path.
type Row = (Uuid, String, String, Vec<Uuid>, u64);

/// The path (its leaf and rows) through `leaf`, or the active one, once the read model has
/// reached `version`.
async fn path_at(
    client: &ApiClient,
    token: &str,
    conversation: Uuid,
    leaf: Option<Uuid>,
    version: Option<i64>,
) -> (Option<Uuid>, Vec<Row>) {
    let mut query: Vec<String> = leaf.map(|l| format!("leaf={l}")).into_iter().collect();
    query.extend(version.map(|v| format!("min_version={v}")));
    let (s, page) = client.get(&format!("/conversations/{conversation}/messages?{}", query.join("&")), token).await;
    assert_eq!(s, 200, "{page}");
    let rows = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let siblings = m["sibling_ids"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().parse().unwrap());
            (
                id(m, "message_id"),
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
                siblings.collect(),
                m["sibling_index"].as_u64().unwrap(),
            )
        })
        .collect();
    (page["leaf_id"].as_str().map(|l| l.parse().unwrap()), rows)
}

async fn path(client: &ApiClient, token: &str, conversation: Uuid, leaf: Option<Uuid>) -> (Option<Uuid>, Vec<Row>) {
    path_at(client, token, conversation, leaf, None).await
}

/// The (role, content) pairs each chat request to the fake provider carried, in order.
fn prompts(fake: &FakeProvider) -> Vec<Vec<(String, String)>> {
    fake.requests_to(Route::ChatCompletions)
        .into_iter()
        .map(|r| {
            r.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
                .collect()
        })
        .collect()
}

fn turns(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(r, c)| (r.to_string(), c.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regenerating_twice_and_editing_once_makes_a_tree_whose_paths_are_the_prompts() {
    let fake = FakeProvider::start().await;
    let mut app = TestApp::spawn_with(support::with_fake_model(isolated_settings(), &fake), EVERYTHING).await;
    let client = &app.client;
    let (_, token) = client.user().await;
    let (conversation, _) = client.conversation(&token, "Trip").await;

    for answer in ["A1", "A2", "A2 again", "A2 third", "A2 edited", "A3"] {
        fake.push(Route::ChatCompletions, Script::reply(&[answer]));
    }
    let (m1, r1) = post(client, &token, conversation, "Q1").await;
    let (m2, r2) = post(client, &token, conversation, "Q2").await;
    // Regenerate by the question, then by a reply to it.
    let g1 = regenerate(client, &token, conversation, m2).await;
    let g2 = regenerate(client, &token, conversation, g1).await;
    // Edit the question: a sibling of it, with its own reply.
    let (s, b) = client
        .post_json(
            &format!("/conversations/{conversation}/messages/{m2}/edit"),
            Some(&token),
            json!({"content": "Q2 edited"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (e, re) = (id(&b, "message_id"), id(&b, "reply_id"));
    client.reply_completed(&token, conversation, &re.to_string()).await;

    // The active path ends at the edit's reply; the edit is the second of two questions.
    let (leaf, active) = path(client, &token, conversation, None).await;
    assert_eq!(leaf, Some(re));
    let expected: Vec<Row> = vec![
        (m1, "user".into(), "Q1".into(), vec![m1], 0),
        (r1, "assistant".into(), "A1".into(), vec![r1], 0),
        (e, "user".into(), "Q2 edited".into(), vec![m2, e], 1),
        (re, "assistant".into(), "A2 edited".into(), vec![re], 0),
    ];
    assert_eq!(active, expected);
    // The branch through the original question ends at its newest reply, the third of three.
    let (leaf, through_m2) = path(client, &token, conversation, Some(m2)).await;
    assert_eq!(leaf, Some(g2));
    let replies = vec![r2, g1, g2];
    assert_eq!(through_m2[2], (m2, "user".into(), "Q2".into(), vec![m2, e], 0));
    assert_eq!(through_m2[3], (g2, "assistant".into(), "A2 third".into(), replies.clone(), 2));

    // Every reply's prompt is exactly its path: no other branch's messages.
    let base = [("user", "Q1"), ("assistant", "A1")];
    let q2: Vec<(String, String)> = turns(&[base[0], base[1], ("user", "Q2")]);
    assert_eq!(
        prompts(&fake),
        vec![turns(&[("user", "Q1")]), q2.clone(), q2.clone(), q2, turns(&[base[0], base[1], ("user", "Q2 edited")])]
    );

    // Switch to the first regenerated reply, and go on from there.
    let (s, b, _) = client
        .send(
            reqwest::Method::POST,
            &format!("/conversations/{conversation}/branches/{g1}/activate"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (leaf, active) = path_at(client, &token, conversation, None, b["version"].as_i64()).await;
    assert_eq!(leaf, Some(g1));
    assert_eq!(active[3], (g1, "assistant".into(), "A2 again".into(), replies, 1));
    let (m3, r3) = post(client, &token, conversation, "Q3").await;
    let (_, active) = path(client, &token, conversation, None).await;
    let ids: Vec<Uuid> = active.iter().map(|r| r.0).collect();
    assert_eq!(ids, [m1, r1, m2, g1, m3, r3]);
    assert_eq!(
        prompts(&fake).last().unwrap(),
        &turns(&[base[0], base[1], ("user", "Q2"), ("assistant", "A2 again"), ("user", "Q3")])
    );

    // No event repeats the shared prefix: each message's text is stored once, by its own event.
    let payloads: Vec<String> =
        sqlx::query_scalar("SELECT payload::text FROM events WHERE aggregate_id = $1 ORDER BY sequence")
            .bind(conversation.to_string())
            .fetch_all(app.pool())
            .await
            .unwrap();
    for text in ["\"Q1\"", "\"A1\"", "\"Q2\""] {
        assert_eq!(payloads.iter().filter(|p| p.contains(text)).count(), 1, "{text} is stored more than once");
    }
    let types: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM events WHERE aggregate_id = $1 AND event_type IN ('ReplyRequested', 'BranchActivated') ORDER BY sequence")
            .bind(conversation.to_string())
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(types, ["ReplyRequested", "ReplyRequested", "BranchActivated"]);
    app.stop_processes().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_cannot_be_edited_and_unknown_or_foreign_messages_are_not_found() {
    let fake = FakeProvider::start().await;
    fake.set_default(Script::reply(&["fine"]));
    let mut app = TestApp::spawn_with(support::with_fake_model(isolated_settings(), &fake), EVERYTHING).await;
    let client = &app.client;
    let (_, token) = client.user().await;
    let (_, stranger) = client.user().await;
    let (conversation, _) = client.conversation(&token, "Mine").await;
    let (message, reply) = post(client, &token, conversation, "hello").await;
    let before = app.event_count().await;

    let edit = |target: Uuid| format!("/conversations/{conversation}/messages/{target}/edit");
    let (s, b) = client.post_json(&edit(reply), Some(&token), json!({"content": "x"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("not_a_user_message")), "{b}");
    let (s, b) = client.post_json(&edit(Uuid::new_v4()), Some(&token), json!({"content": "x"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    let (s, b) = client.post_json(&edit(message), Some(&token), json!({"content": ""})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_message")), "{b}");
    let (s, b) = client.post_json(&edit(message), Some(&stranger), json!({"content": "x"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    let regenerate = format!("/conversations/{conversation}/messages/{}/regenerate", Uuid::new_v4());
    let (s, b) = client.post_json(&regenerate, Some(&token), json!({})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    let regenerate = format!("/conversations/{conversation}/messages/{message}/regenerate");
    let (s, b) = client.post_json(&regenerate, Some(&token), json!({"model": "no-such-model"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("unknown_model")), "{b}");
    let (s, b) = client.post_json(&regenerate, Some(&stranger), json!({})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    let activate = format!("/conversations/{conversation}/branches/{}/activate", Uuid::new_v4());
    let (s, b) = client.post_json(&activate, Some(&token), json!({})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    let (s, b) = client.get(&format!("/conversations/{conversation}/messages?leaf={}", Uuid::new_v4()), &token).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    // None of it changed anything.
    assert_eq!(app.event_count().await, before);
    // Switching to where the path already ends records nothing either.
    let activate = format!("/conversations/{conversation}/branches/{reply}/activate");
    let (s, b) = client.post_json(&activate, Some(&token), json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(app.event_count().await, before);
    app.stop_processes().await;
}
