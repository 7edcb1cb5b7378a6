//! The assistant end to end: a posted message is answered by a model (a fake provider
//! speaking OpenAI's wire format, or the real local model), streamed over SSE and the
//! WebSocket from any API instance, recorded as reply events and listed by the messages
//! query; fallback, failure after the first token, cancel, redelivery and a worker killed
//! mid-reply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use colloquy::runtime::Processes;
use colloquy_infra::assistant_settings::{ModelSettings, ProviderKind, ProviderSettings};
use colloquy_infra::Settings;
use colloquy_providers::testing::{FakeProvider, Route, Script};
use futures::StreamExt;
use serde_json::{json, Value};
use support::sse::{text_of, Sse};
use support::{eventually, isolated_settings, ApiClient, TestApp};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

const EVERYTHING: Processes = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: false };

/// Settings whose only models answer through `providers` (name → fake), each model
/// `<name>-model` routed to them in order. The local model is left out.
fn with_fakes(mut settings: Settings, providers: &[(&str, &FakeProvider)], route: &[&str]) -> Settings {
    let a = &mut settings.assistant;
    a.providers.clear();
    a.models.clear();
    for (name, fake) in providers {
        let entry = ProviderSettings {
            kind: ProviderKind::Openai,
            base_url: fake.base_url(),
            api_key: Some("test-key".into()),
            first_token_timeout_ms: 5_000,
            ..ProviderSettings::default()
        };
        a.providers.insert((*name).to_string(), entry);
    }
    let route = route.iter().map(|p| format!("{p}/upstream-model")).collect();
    a.models.insert("fake-model".into(), ModelSettings { route, context_window: 4096, max_output_tokens: 64 });
    a.default_model = "fake-model".into();
    a.retry.max_attempts = 1;
    a.retry.base_delay_ms = 10;
    settings
}

fn one_fake(fake: &FakeProvider) -> Settings {
    with_fakes(isolated_settings(), &[("fake", fake)], &["fake"])
}

/// Posts `content`; returns (reply_id, version).
async fn post(client: &ApiClient, token: &str, conversation: Uuid, content: &str) -> (Uuid, i64) {
    let (s, b) = client
        .post_json(&format!("/conversations/{conversation}/messages"), Some(token), json!({"content": content}))
        .await;
    assert_eq!(s, 201, "post: {b}");
    (b["reply_id"].as_str().unwrap().parse().unwrap(), b["version"].as_i64().unwrap())
}

fn stream_path(conversation: Uuid, reply: Uuid) -> String {
    format!("/conversations/{conversation}/replies/{reply}/stream")
}

/// The conversation's messages once the assistant's row for `reply` has `status`.
async fn messages_once(client: &ApiClient, token: &str, conversation: Uuid, reply: Uuid, status: &str) -> Vec<Value> {
    eventually(&format!("reply {reply} {status}"), || async {
        let (s, b) = client.get(&format!("/conversations/{conversation}/messages"), token).await;
        if s == 404 {
            return None; // the read model does not hold the conversation yet
        }
        assert_eq!(s, 200, "{b}");
        let items = b["items"].as_array().cloned().unwrap_or_default();
        let done = items.iter().any(|m| m["message_id"] == json!(reply) && m["status"] == json!(status));
        done.then_some(items)
    })
    .await
}

/// The reply events of `conversation`: (event type, payload, metadata), in order.
async fn reply_events(app: &TestApp, conversation: Uuid) -> Vec<(String, Value, Value)> {
    let rows: Vec<(String, Value, Value)> = sqlx::query_as(
        "SELECT event_type, payload::jsonb, metadata::jsonb FROM events
          WHERE aggregate_id = $1 AND event_type LIKE 'Reply%' ORDER BY sequence",
    )
    .bind(conversation.to_string())
    .fetch_all(app.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(t, p, m)| {
            let p = p[&t].clone();
            (t, p, m)
        })
        .collect()
}

async fn websocket(
    client: &ApiClient,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = client.url("/ws").replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.expect("WebSocket handshake").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_is_answered_streamed_to_every_client_and_recorded() {
    let fake = FakeProvider::start().await;
    let words = ["The ", "answer ", "is ", "forty", "-two."];
    fake.push(Route::ChatCompletions, Script::reply(&words).with_delay(Duration::from_millis(150)).with_usage(21, 5));
    let settings = one_fake(&fake);
    let app = TestApp::spawn_with(settings.clone(), EVERYTHING).await;
    // A second API instance, which never takes the post.
    let other = TestApp::attach(settings, Processes { api: true, ..Default::default() }).await;
    let (_, token) = app.user().await;
    let (s, b) = app
        .post_json("/conversations", Some(&token), json!({"title": "facts", "system_prompt": "Answer in one line."}))
        .await;
    assert_eq!(s, 201, "{b}");
    let conversation: Uuid = b["conversation_id"].as_str().unwrap().parse().unwrap();
    let mut ws = websocket(&other.client, &token).await;

    let (reply, _) = post(&app, &token, conversation, "What is the answer?").await;
    // From the other instance: the first two deltas, then a reconnect from the last id seen.
    let mut sse = Sse::open(&other.client, &token, &stream_path(conversation, reply), None).await;
    let mut first = vec![sse.next_event().await, sse.next_event().await, sse.next_event().await];
    drop(sse);
    let last_id = first.last().unwrap().id.clone().unwrap();
    let mut resumed = Sse::open(&other.client, &token, &stream_path(conversation, reply), Some(&last_id)).await;
    let rest = resumed.until_done().await;
    first.extend(rest);
    assert_eq!(text_of(&first), words.concat(), "the reconnect lost or repeated text");
    // Entry ids only grow (the final entry's two chunks, finish and usage, share one).
    let ids: Vec<(u64, u64)> = first
        .iter()
        .filter_map(|e| e.id.as_deref()?.split_once('-').map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "ids went back: {ids:?}");
    // A late client gets the whole text at once.
    let late = Sse::open(&app.client, &token, &stream_path(conversation, reply), None).await.until_done().await;
    assert_eq!(text_of(&late), words.concat());

    // The WebSocket saw the same deltas and the end.
    let mut ws_text = String::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.unwrap().unwrap().unwrap();
        let WsMessage::Text(text) = msg else { continue };
        let m: Value = serde_json::from_str(text.as_str()).unwrap();
        if m["reply_id"] != json!(reply) {
            continue;
        }
        match m["type"].as_str().unwrap() {
            "reply.delta" => ws_text.push_str(m["text"].as_str().unwrap()),
            "reply.completed" => break,
            _ => {}
        }
    }
    assert_eq!(ws_text, words.concat());

    // Recorded, and listed with its status.
    let items = messages_once(&app, &token, conversation, reply, "completed").await;
    let answer = items.iter().find(|m| m["message_id"] == json!(reply)).unwrap();
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["content"], words.concat());
    assert_eq!(answer["provider"], "fake");
    assert_eq!(answer["usage"], json!({"input_tokens": 21, "output_tokens": 5}));
    let events = reply_events(&app, conversation).await;
    let types: Vec<&str> = events.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(types, ["ReplyStarted", "ReplyCompleted"]);
    let (_, started, meta) = &events[0];
    assert_eq!(started["model"], "fake-model");
    assert_eq!(started["system_prompt"], "Answer in one line.");
    assert_eq!(meta["actor"], "system:assistant");
    let (_, completed, _) = &events[1];
    assert_eq!(completed["finish_reason"], "stop");
    assert_eq!(completed["attempts"].as_array().unwrap().len(), 1);
    // The provider was asked with the system prompt and the question.
    let asked = &fake.requests_to(Route::ChatCompletions)[0].body;
    assert_eq!(asked["model"], "upstream-model");
    assert_eq!(asked["messages"][0], json!({"role": "system", "content": "Answer in one line."}));
    assert_eq!(asked["messages"][1], json!({"role": "user", "content": "What is the answer?"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_failing_before_the_first_token_falls_back_and_one_failing_after_it_fails_the_reply() {
    let (down, up) = (FakeProvider::start().await, FakeProvider::start().await);
    down.set_default(Script::status(500));
    let settings = with_fakes(isolated_settings(), &[("down", &down), ("up", &up)], &["down", "up"]);
    let app = TestApp::spawn_with(settings, EVERYTHING).await;
    let (_, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "fallback").await;

    up.push(Route::ChatCompletions, Script::reply(&["from ", "the second"]));
    let (reply, _) = post(&app, &token, conversation, "hello").await;
    let items = messages_once(&app, &token, conversation, reply, "completed").await;
    let answer = items.iter().find(|m| m["message_id"] == json!(reply)).unwrap();
    assert_eq!((answer["content"].as_str(), answer["provider"].as_str()), (Some("from the second"), Some("up")));
    let events = reply_events(&app, conversation).await;
    let attempts = events[1].1["attempts"].as_array().unwrap().clone();
    let outcomes: Vec<(&str, &str)> =
        attempts.iter().map(|a| (a["provider"].as_str().unwrap(), a["outcome"].as_str().unwrap())).collect();
    assert_eq!(outcomes, [("down", "failed"), ("up", "succeeded")]);
    assert_eq!(attempts[0]["status"], 500);

    // After the first token nothing switches: the cut reply fails with its partial text.
    up.push(Route::ChatCompletions, Script::cut_after(&["half ", "an answer"]));
    let calls_to_down = down.requests().len();
    let (cut, _) = post(&app, &token, conversation, "again").await;
    let items = messages_once(&app, &token, conversation, cut, "failed").await;
    let failed = items.iter().find(|m| m["message_id"] == json!(cut)).unwrap();
    assert_eq!(failed["content"], "half an answer");
    assert_eq!(failed["error"]["code"], "provider_error");
    assert_eq!(down.requests().len(), calls_to_down + 1, "only the first target's one attempt before `up` answered");
    let sse = Sse::open(&app.client, &token, &stream_path(conversation, cut), None).await.until_done().await;
    assert_eq!(text_of(&sse[..sse.len() - 2]), "half an answer");
    assert_eq!(sse[sse.len() - 2].json()["error"]["code"], "provider_error");
    // The second prompt held the first exchange.
    let asked = up.requests().last().unwrap().body["messages"].clone();
    let said: Vec<&str> = asked.as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(said, ["hello", "from the second", "again"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_closes_the_upstream_connection_and_records_the_partial_text() {
    let fake = FakeProvider::start().await;
    fake.push(Route::ChatCompletions, Script::hold_after(&["so ", "far"]));
    let app = TestApp::spawn_with(one_fake(&fake), EVERYTHING).await;
    let (_, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "cancel").await;
    let (reply, _) = post(&app, &token, conversation, "tell me a long story").await;
    let mut sse = Sse::open(&app.client, &token, &stream_path(conversation, reply), None).await;
    let mut seen = String::new();
    while seen != "so far" {
        seen.push_str(&sse.next_event().await.content());
    }
    assert!(fake.disconnects().is_empty());

    let (s, b) =
        app.post_json(&format!("/conversations/{conversation}/replies/{reply}/cancel"), Some(&token), json!({})).await;
    assert_eq!(s, 202, "{b}");
    eventually("the provider's connection closed", || async { (!fake.disconnects().is_empty()).then_some(()) }).await;
    let rest = sse.until_done().await;
    assert_eq!(rest[rest.len() - 2].json()["choices"][0]["finish_reason"], "cancelled");
    let items = messages_once(&app, &token, conversation, reply, "cancelled").await;
    let cancelled = items.iter().find(|m| m["message_id"] == json!(reply)).unwrap();
    assert_eq!(cancelled["content"], "so far");
    let events = reply_events(&app, conversation).await;
    assert_eq!(events.last().unwrap().0, "ReplyCancelled");
    // A finished reply cannot be cancelled again.
    let (s, b) =
        app.post_json(&format!("/conversations/{conversation}/replies/{reply}/cancel"), Some(&token), json!({})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("reply_finished")), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_message_gets_one_reply() {
    let fake = FakeProvider::start().await;
    fake.set_default(Script::reply(&["ok"]));
    let app = TestApp::spawn_with(one_fake(&fake), EVERYTHING).await;
    let (_, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "twice").await;
    let (first, _) = post(&app, &token, conversation, "one").await;
    messages_once(&app, &token, conversation, first, "completed").await;

    // The same record again on the topic, as after a producer retry or a consumer restart.
    let topic = colloquy_infra::kafka::Topics::new(&app.settings.kafka).events("Conversation");
    let is_posted = |payload: &[u8]| {
        serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|ce| ce["type"].as_str().map(|t| t.contains("UserMessagePosted")))
            == Some(true)
    };
    let records =
        support::consume_until(&app.settings, &topic, |records| records.iter().any(|r| is_posted(&r.1))).await;
    let (key, payload, headers) = records.into_iter().find(|r| is_posted(&r.1)).unwrap();
    support::produce(&app.settings, &topic, key, payload, headers).await;
    // A later message of the same conversation is answered after the duplicate was handled.
    let (second, _) = post(&app, &token, conversation, "two").await;
    messages_once(&app, &token, conversation, second, "completed").await;

    let starts: Vec<Value> = reply_events(&app, conversation)
        .await
        .into_iter()
        .filter(|(t, _, _)| t == "ReplyStarted")
        .map(|e| e.1)
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_eq!(fake.requests().len(), 2, "the provider was asked once per message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_whose_worker_died_is_ended_by_another_worker() {
    let fake = FakeProvider::start().await;
    fake.push(Route::ChatCompletions, Script::hold_after(&["half"]));
    let mut settings = one_fake(&fake);
    settings.assistant.worker.lease_ms = 1_500;
    settings.assistant.worker.sweep_interval_ms = 200;
    let app = TestApp::spawn_with(settings.clone(), Processes { assistant: false, ..EVERYTHING }).await;
    let mut doomed = TestApp::attach(settings.clone(), Processes { assistant: true, ..Default::default() }).await;
    let (_, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "crash").await;
    let (reply, _) = post(&app, &token, conversation, "start and die").await;
    let mut sse = Sse::open(&app.client, &token, &stream_path(conversation, reply), None).await;
    let mut seen = String::new();
    while seen != "half" {
        seen.push_str(&sse.next_event().await.content());
    }
    // Killed mid-reply: no final event, no released lease, no committed offset.
    doomed.kill_processes();
    let _survivor = TestApp::attach(settings, Processes { assistant: true, ..Default::default() }).await;
    let items = messages_once(&app, &token, conversation, reply, "failed").await;
    let failed = items.iter().find(|m| m["message_id"] == json!(reply)).unwrap();
    assert_eq!(failed["content"], "half");
    assert_eq!(failed["error"]["code"], "worker_lost");
    let rest = sse.until_done().await;
    assert_eq!(rest[rest.len() - 2].json()["error"]["code"], "worker_lost");
    let types: Vec<String> = reply_events(&app, conversation).await.into_iter().map(|e| e.0).collect();
    assert_eq!(types, ["ReplyStarted", "ReplyFailed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_model_is_refused_and_the_models_are_listed() {
    let fake = FakeProvider::start().await;
    let app = TestApp::spawn_with(one_fake(&fake), Processes { api: true, ..Default::default() }).await;
    let (_, token) = app.user().await;
    let (s, b) = app.get("/models", &token).await;
    assert_eq!(s, 200);
    assert_eq!(
        b["data"],
        json!([{"id": "fake-model", "context_window": 4096, "max_output_tokens": 64, "default": true}])
    );
    let (s, b) = app.post_json("/conversations", Some(&token), json!({"title": "t", "model": "gpt-imaginary"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("unknown_model")), "{b}");
    let (conversation, _) = app.conversation(&token, "t").await;
    let before = app.event_count().await;
    let (s, b) = app
        .post_json(
            &format!("/conversations/{conversation}/messages"),
            Some(&token),
            json!({"content": "hi", "model": "gpt-imaginary"}),
        )
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("unknown_model")), "{b}");
    assert_eq!(app.event_count().await, before);
}

/// The default configuration: nothing configured, the local model answers, offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_local_model_answers_on_a_fresh_install() {
    let mut settings = isolated_settings();
    settings.assistant.local.models_dir = support::models_dir();
    for model in settings.assistant.models.values_mut() {
        model.max_output_tokens = 8;
    }
    let app = TestApp::spawn_with(settings, EVERYTHING).await;
    let (_, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "local").await;
    let (reply, _) = post(&app, &token, conversation, "Say hello.").await;
    let events = Sse::open(&app.client, &token, &stream_path(conversation, reply), None).await.until_done().await;
    assert!(!text_of(&events).trim().is_empty(), "no text: {events:?}");
    let items = messages_once(&app, &token, conversation, reply, "completed").await;
    let answer = items.iter().find(|m| m["message_id"] == json!(reply)).unwrap();
    assert_eq!((answer["provider"].as_str(), answer["model"].as_str()), (Some("local"), Some("smollm2-135m")));
    let output = answer["usage"]["output_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&output), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_whose_stream_expired_is_served_from_its_record() {
    let fake = FakeProvider::start().await;
    fake.push(Route::ChatCompletions, Script::reply(&["kept ", "for ", "later"]).with_usage(3, 3));
    let app = TestApp::spawn_with(one_fake(&fake), EVERYTHING).await;
    let (_, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "expired").await;
    let (reply, _) = post(&app, &token, conversation, "remember this").await;
    messages_once(&app, &token, conversation, reply, "completed").await;
    // The stream expires some minutes after the reply ended; here, at once.
    let redis = app.deps.redis.as_ref().unwrap();
    assert!(redis.delete_prefixed("reply:").await.unwrap() >= 1);

    let events = Sse::open(&app.client, &token, &stream_path(conversation, reply), None).await.until_done().await;
    assert_eq!(text_of(&events), "kept for later");
    assert_eq!(events[events.len() - 3].json()["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[events.len() - 2].json()["usage"]["total_tokens"], 6);
    let (s, b) =
        app.post_json(&format!("/conversations/{conversation}/replies/{reply}/cancel"), Some(&token), json!({})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("reply_finished")), "{b}");
}
