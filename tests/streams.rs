//! Reply streams end to end: entries appended to Redis (as the assistant worker will append
//! them) reach clients over SSE in OpenAI's chunk format and over the WebSocket, from any
//! API instance; a reconnecting client resumes without loss or repetition; a slow WebSocket
//! client is dropped; strangers get 404s; cancel sets the flag until the reply ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use colloquy::runtime::Processes;
use colloquy_infra::reply_streams::{ReplyStreams, ReplyTarget, StreamEntry, StreamUsage};
use colloquy_infra::Settings;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::sse::{text_of, Item, Sse, READ_TIMEOUT};
use support::{eventually, isolated_settings, ApiClient, TestApp};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

fn api_only() -> Processes {
    Processes { api: true, relay: false, projectors: false, assistant: false, ingest: false }
}

async fn api(settings: Settings) -> TestApp {
    TestApp::spawn_with(settings, api_only()).await
}

fn streams(app: &TestApp) -> ReplyStreams {
    ReplyStreams::new(app.deps.redis.as_ref().expect("the API uses Redis"), &app.settings.streams)
}

/// A user with a conversation and a reply id in it, not yet streamed.
struct Reply {
    token: String,
    target: ReplyTarget,
}

impl Reply {
    async fn new(client: &ApiClient) -> Self {
        let (user, token) = client.user().await;
        let (conversation, _) = client.conversation(&token, "streams").await;
        let target = ReplyTarget { reply_id: Uuid::new_v4(), conversation_id: conversation, owner_id: user };
        Self { token, target }
    }

    fn path(&self, what: &str) -> String {
        format!("/conversations/{}/replies/{}/{what}", self.target.conversation_id, self.target.reply_id)
    }
}

fn started() -> StreamEntry {
    StreamEntry::Started { model: "test-model".into(), created: 1_700_000_000 }
}

fn delta(text: &str) -> StreamEntry {
    StreamEntry::Delta { text: text.into() }
}

fn completed() -> StreamEntry {
    StreamEntry::Completed { finish_reason: "stop".into(), usage: StreamUsage { input_tokens: 11, output_tokens: 4 } }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_relays_a_reply_as_openai_chunks_ending_with_done() {
    let app = api(isolated_settings()).await;
    let reply = Reply::new(&app).await;
    let streams = streams(&app);
    // The client is there before the reply starts: it waits for it.
    let mut sse = Sse::open(&app, &reply.token, &reply.path("stream"), None).await;
    let mut ids = vec![streams.append(&reply.target, &started()).await.unwrap()];
    for word in ["Hello", ", ", "world", "!"] {
        ids.push(streams.append(&reply.target, &delta(word)).await.unwrap());
    }
    ids.push(streams.append(&reply.target, &completed()).await.unwrap());
    let events = sse.until_done().await;

    let completion = format!("chatcmpl-{}", reply.target.reply_id);
    let first = events[0].json();
    assert_eq!(
        first,
        json!({"id": completion, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "test-model",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
    );
    for e in &events[1..5] {
        let chunk = e.json();
        assert_eq!((chunk["id"].as_str(), chunk["model"].as_str()), (Some(completion.as_str()), Some("test-model")));
        assert!(chunk["choices"][0]["delta"].get("role").is_none(), "role only in the first chunk: {chunk}");
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
    }
    assert_eq!(text_of(&events), "Hello, world!");
    assert_eq!(events[5].json()["choices"][0], json!({"index": 0, "delta": {}, "finish_reason": "stop"}));
    let usage = events[6].json();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], json!({"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}));
    assert!(events[7].is_done());
    assert_eq!(events.len(), 8);
    // Every event carries the id of the entry it came from.
    let sent: Vec<String> = events[..7].iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(sent[..6], ids[..]);
    assert_eq!(sent[6], ids[5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_resuming_with_last_event_id_loses_and_repeats_nothing() {
    let app = api(isolated_settings()).await;
    let reply = Reply::new(&app).await;
    let streams = streams(&app);
    let mut ids = vec![streams.append(&reply.target, &started()).await.unwrap()];
    for word in ["one ", "two ", "three "] {
        ids.push(streams.append(&reply.target, &delta(word)).await.unwrap());
    }
    // The first connection drops after the event of "two ".
    let mut first = Sse::open(&app, &reply.token, &reply.path("stream"), None).await;
    let mut before = Vec::new();
    loop {
        let e = first.next_event().await;
        let id = e.id.clone().unwrap();
        before.push(e);
        if id == ids[2] {
            break;
        }
    }
    drop(first);
    for word in ["four ", "five"] {
        ids.push(streams.append(&reply.target, &delta(word)).await.unwrap());
    }
    let resume = before.last().unwrap().id.clone().unwrap();
    let mut second = Sse::open(&app, &reply.token, &reply.path("stream"), Some(&resume)).await;
    // More arrives live while the second connection streams.
    let live = second.next_event().await;
    ids.push(streams.append(&reply.target, &completed()).await.unwrap());
    let mut after = vec![live];
    after.extend(second.until_done().await);

    assert_eq!(text_of(&before) + &text_of(&after), "one two three four five");
    let mut seen: Vec<String> = before.iter().chain(&after).filter_map(|e| e.id.clone()).collect();
    seen.dedup(); // the completion's two chunks share their entry's id
    assert_eq!(seen, ids, "every entry exactly once, in order");
    // The resumed stream still names the model it learnt from the start of the reply.
    assert_eq!(after[0].json()["model"], "test-model");
    assert!(after[0].json()["choices"][0]["delta"].get("role").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_client_gets_the_text_so_far_then_the_rest() {
    let app = api(isolated_settings()).await;
    let reply = Reply::new(&app).await;
    let streams = streams(&app);
    streams.append(&reply.target, &started()).await.unwrap();
    for word in ["The ", "story ", "so ", "far"] {
        streams.append(&reply.target, &delta(word)).await.unwrap();
    }
    let mut sse = Sse::open(&app, &reply.token, &reply.path("stream"), None).await;
    let mut so_far = Vec::new();
    while so_far.len() < 5 {
        so_far.push(sse.next_event().await);
    }
    assert_eq!(text_of(&so_far), "The story so far");
    streams.append(&reply.target, &delta(", and more.")).await.unwrap();
    let end = streams.append(&reply.target, &completed()).await.unwrap();
    let rest = sse.until_done().await;
    assert_eq!(text_of(&rest), ", and more.");

    // A client arriving after the end gets the whole reply at once.
    let mut latest = Sse::open(&app, &reply.token, &reply.path("stream"), None).await;
    let all = latest.until_done().await;
    assert_eq!(text_of(&all), "The story so far, and more.");
    assert_eq!(all[all.len() - 2].json()["usage"]["total_tokens"], 15);
    // One that had everything but `[DONE]` gets just that.
    let mut last = Sse::open(&app, &reply.token, &reply.path("stream"), Some(&end)).await;
    let tail = last.until_done().await;
    assert_eq!(tail.len(), 1, "{tail:?}");
    assert!(tail[0].is_done());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_api_instance_serves_any_stream() {
    let a = api(isolated_settings()).await;
    let b = TestApp::attach(a.settings.clone(), api_only()).await;
    let reply = Reply::new(&a).await;
    let streams = streams(&a);
    let mut sse = Sse::open(&b, &reply.token, &reply.path("stream"), None).await;
    streams.append(&reply.target, &started()).await.unwrap();
    // The first entry reached instance B before the rest is appended: everything else
    // arrives live through its hub.
    let first = sse.next_event().await;
    assert_eq!(first.json()["choices"][0]["delta"]["role"], "assistant");
    for word in ["served ", "by ", "B"] {
        streams.append(&reply.target, &delta(word)).await.unwrap();
    }
    streams.append(&reply.target, &completed()).await.unwrap();
    assert_eq!(text_of(&sse.until_done().await), "served by B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_that_never_starts_ends_as_not_found_after_the_wait() {
    let mut settings = isolated_settings();
    settings.streams.wait_for_start_secs = 2;
    settings.streams.sse_keepalive_secs = 1;
    let app = api(settings).await;
    let reply = Reply::new(&app).await;
    let began = Instant::now();
    let mut sse = Sse::open(&app, &reply.token, &reply.path("stream"), None).await;
    let mut comments = 0;
    let mut events = Vec::new();
    while let Some(item) = sse.next().await {
        match item {
            Item::Comment(c) => {
                assert_eq!(c, "ping");
                comments += 1;
            }
            Item::Event(e) => events.push(e),
        }
    }
    assert!(began.elapsed() >= Duration::from_secs(2), "gave up before the wait was over");
    assert!(comments >= 1, "no keepalive while waiting");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].json()["error"]["code"], "reply_not_found");
    assert!(events[1].is_done());
}

/// A WebSocket connection to `client`'s API, authenticated by the header or the query.
async fn websocket(
    client: &ApiClient,
    token: &str,
    by_header: bool,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let base = client.url("/ws").replacen("http://", "ws://", 1);
    let url = if by_header { base } else { format!("{base}?access_token={token}") };
    let mut request = url.into_client_request().unwrap();
    if by_header {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await.expect("WebSocket handshake");
    assert_eq!(response.status().as_u16(), 101);
    ws
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(READ_TIMEOUT, ws.next()).await.expect("WebSocket read timed out");
        match msg.expect("the WebSocket closed").unwrap() {
            WsMessage::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            WsMessage::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_client_receives_every_entry_of_the_users_replies() {
    let app = api(isolated_settings()).await;
    let reply = Reply::new(&app).await;
    let streams = streams(&app);
    let mut by_query = websocket(&app, &reply.token, false).await;
    let mut by_header = websocket(&app, &reply.token, true).await;
    // Another user's replies never reach this user's sockets.
    let stranger = Reply::new(&app).await;
    streams.append(&stranger.target, &started()).await.unwrap();

    let mut ids = vec![streams.append(&reply.target, &started()).await.unwrap()];
    for word in ["same ", "deltas"] {
        ids.push(streams.append(&reply.target, &delta(word)).await.unwrap());
    }
    ids.push(streams.append(&reply.target, &completed()).await.unwrap());
    for ws in [&mut by_query, &mut by_header] {
        let mut got = Vec::new();
        while got.len() < 4 {
            got.push(next_json(ws).await);
        }
        let (conversation, reply_id) = (reply.target.conversation_id.to_string(), reply.target.reply_id.to_string());
        for (m, id) in got.iter().zip(&ids) {
            assert_eq!(m["conversation_id"], conversation.as_str());
            assert_eq!(m["reply_id"], reply_id.as_str());
            assert_eq!(m["id"], id.as_str());
        }
        let types: Vec<&str> = got.iter().map(|m| m["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["reply.started", "reply.delta", "reply.delta", "reply.completed"]);
        assert_eq!(got[0]["model"], "test-model");
        assert_eq!(format!("{}{}", got[1]["text"].as_str().unwrap(), got[2]["text"].as_str().unwrap()), "same deltas");
        assert_eq!(got[3]["usage"], json!({"input_tokens": 11, "output_tokens": 4}));
    }
    // The application-level ping is answered.
    by_query.send(WsMessage::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
    assert_eq!(next_json(&mut by_query).await, json!({"type": "pong"}));

    // A plain GET is no WebSocket.
    let (status, body, _) = app.send(reqwest::Method::GET, "/ws", Some(&reply.token), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("websocket_required")), "{body}");

    // Without a token there is no WebSocket.
    let anonymous = client_url_ws(&app).into_client_request().unwrap();
    match tokio_tungstenite::connect_async(anonymous).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 401),
        other => panic!("an anonymous WebSocket was accepted: {:?}", other.map(|(_, r)| r.status())),
    }
}

fn client_url_ws(client: &ApiClient) -> String {
    client.url("/ws").replacen("http://", "ws://", 1)
}

async fn metric(client: &ApiClient, name: &str) -> Option<f64> {
    let text = client.http.get(format!("{}/metrics", client.base)).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_websocket_client_is_dropped_while_the_server_stays_healthy() {
    let mut settings = isolated_settings();
    settings.streams.ws_buffer = 2;
    settings.streams.max_len = 4;
    let app = api(settings).await;
    let reply = Reply::new(&app).await;
    let streams = streams(&app);
    // Connected, then never read from.
    let slow = websocket(&app, &reply.token, true).await;
    eventually("the session to count", || async {
        (metric(&app, "colloquy_ws_sessions_active").await == Some(1.0)).then_some(())
    })
    .await;
    let big = "x".repeat(256 * 1024);
    streams.append(&reply.target, &started()).await.unwrap();
    eventually("the slow client to be dropped", || async {
        for _ in 0..8 {
            streams.append(&reply.target, &delta(&big)).await.unwrap();
        }
        (metric(&app, "colloquy_ws_slow_clients_dropped_total").await == Some(1.0)).then_some(())
    })
    .await;
    eventually("the slow session to end", || async {
        (metric(&app, "colloquy_ws_sessions_active").await == Some(0.0)).then_some(())
    })
    .await;
    drop(slow);

    // The server serves on: health, and a new client gets new entries.
    let (status, _) = app.get("/conversations", &reply.token).await;
    assert_eq!(status, 200);
    let health = app.http.get(format!("{}/health", app.base)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let mut fresh = websocket(&app, &reply.token, false).await;
    let id = streams.append(&reply.target, &delta("still here")).await.unwrap();
    let m = next_json(&mut fresh).await;
    assert_eq!((m["text"].as_str(), m["id"].as_str()), (Some("still here"), Some(id.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_websocket_client_is_closed_after_the_timeout() {
    let mut settings = isolated_settings();
    settings.streams.ws_ping_secs = 1;
    settings.streams.ws_timeout_secs = 2;
    let app = api(settings).await;
    let (_, token) = app.user().await;
    let began = Instant::now();
    // Never read, so never answers the server's pings.
    let mut silent = websocket(&app, &token, true).await;
    eventually("the silent session to end", || async {
        (metric(&app, "colloquy_ws_sessions_active").await == Some(0.0)).then_some(())
    })
    .await;
    assert!(began.elapsed() >= Duration::from_secs(2), "closed before the timeout");
    // What the server sent meanwhile: pings, then a close frame naming the policy.
    let mut pings = 0;
    loop {
        let msg = tokio::time::timeout(READ_TIMEOUT, silent.next()).await.expect("no close frame");
        match msg {
            Some(Ok(WsMessage::Ping(_))) => pings += 1,
            Some(Ok(WsMessage::Close(frame))) => {
                let frame = frame.expect("a close reason");
                assert_eq!(u16::from(frame.code), 1008);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 1, "the server never pinged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_reply_is_not_found() {
    let app = api(isolated_settings()).await;
    let alice = Reply::new(&app).await;
    let streams = streams(&app);
    streams.append(&alice.target, &started()).await.unwrap();
    let (_, bob) = app.user().await;
    let (bobs_conversation, _) = app.conversation(&bob, "bob's").await;
    let (alices_other, _) = app.conversation(&alice.token, "alice's other").await;
    let reply = alice.target.reply_id;
    let cases = [
        (bob.as_str(), alice.path("stream"), "GET"),
        (bob.as_str(), alice.path("cancel"), "POST"),
        (bob.as_str(), format!("/conversations/{bobs_conversation}/replies/{reply}/stream"), "GET"),
        (bob.as_str(), format!("/conversations/{bobs_conversation}/replies/{reply}/cancel"), "POST"),
        // The owner, but the reply is not in that conversation.
        (alice.token.as_str(), format!("/conversations/{alices_other}/replies/{reply}/stream"), "GET"),
        (alice.token.as_str(), format!("/conversations/{alices_other}/replies/{reply}/cancel"), "POST"),
        // A conversation that does not exist.
        (alice.token.as_str(), format!("/conversations/{}/replies/{reply}/stream", Uuid::new_v4()), "GET"),
    ];
    for (token, path, method) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body, _) = app.send(method.clone(), &path, Some(token), None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    assert!(!streams.cancel_requested(reply).await.unwrap());
    // No token at all: 401.
    let (status, _, _) = app.send(reqwest::Method::GET, &alice.path("stream"), None, None).await;
    assert_eq!(status, 401);
    // A Last-Event-ID that no stream sent: 400.
    let res = app
        .http
        .get(app.url(&alice.path("stream")))
        .bearer_auth(&alice.token)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.unwrap();
    support::assert_declared_error_code(400, &body);
    assert_eq!(body["error"]["code"], "invalid_last_event_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_is_accepted_until_the_reply_ends() {
    let app = api(isolated_settings()).await;
    let reply = Reply::new(&app).await;
    let streams = streams(&app);
    let cancel = reply.path("cancel");
    // Before the worker started the reply: the flag waits for it.
    let (status, body) = app.post_json(&cancel, Some(&reply.token), json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"reply_id": reply.target.reply_id, "status": "cancelling"}));
    assert!(streams.cancel_requested(reply.target.reply_id).await.unwrap());

    // While it streams.
    let other = Reply { token: reply.token.clone(), target: ReplyTarget { reply_id: Uuid::new_v4(), ..reply.target } };
    let requests = streams.cancel_requests().await.unwrap();
    futures::pin_mut!(requests);
    streams.append(&other.target, &started()).await.unwrap();
    streams.append(&other.target, &delta("partial")).await.unwrap();
    assert!(!streams.cancel_requested(other.target.reply_id).await.unwrap());
    let (status, _) = app.post_json(&other.path("cancel"), Some(&other.token), json!({})).await;
    assert_eq!(status, 202);
    assert!(streams.cancel_requested(other.target.reply_id).await.unwrap());
    let heard = tokio::time::timeout(READ_TIMEOUT, requests.next()).await.unwrap();
    assert_eq!(heard, Some(other.target.reply_id));

    // Once it ended: 409.
    streams.append(&other.target, &StreamEntry::Cancelled { usage: StreamUsage::default() }).await.unwrap();
    let (status, body) = app.post_json(&other.path("cancel"), Some(&other.token), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "reply_finished");
    let finished =
        Reply { token: reply.token.clone(), target: ReplyTarget { reply_id: Uuid::new_v4(), ..reply.target } };
    streams.append(&finished.target, &started()).await.unwrap();
    streams.append(&finished.target, &completed()).await.unwrap();
    let (status, body) = app.post_json(&finished.path("cancel"), Some(&finished.token), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("reply_finished")));
    assert!(!streams.cancel_requested(finished.target.reply_id).await.unwrap());
}
