//! The OpenAI-compatible API (`/v1/...`): OpenAI's official Python client, installed from
//! PyPI into a virtual environment of its own (`scripts/openai-client.sh`), lists the
//! models, asks for a whole and a streamed completion and for embeddings with a colloquy API
//! key, and gets its own exceptions for colloquy's errors; the calls go through the provider
//! (the fake, speaking OpenAI's wire format), are recorded as conversations from the API, and
//! show in the user's usage. Also: API keys are shown once, listed without secrets, revoked
//! for good, and another user's cannot be revoked; refused requests record nothing; token
//! quotas answer 429 `insufficient_quota` without asking the provider; a streaming client
//! that goes away cancels its reply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use colloquy::runtime::Processes;
use colloquy_providers::testing::{FakeProvider, Route, Script};
use futures::StreamExt;
use serde_json::{json, Value};
use support::{eventually, isolated_settings, only_event, usage_with, ApiClient, TestApp};
use uuid::Uuid;

const EVERYTHING: Processes = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: false };

/// The Python of the client's virtual environment (made once by the script).
fn python() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash").arg(format!("{root}/scripts/openai-client.sh")).output().unwrap();
    assert!(out.status.success(), "scripts/openai-client.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A new API key of the user's: (id, secret).
async fn api_key(client: &ApiClient, token: &str, name: &str) -> (Uuid, String) {
    let (s, b) = client.post_json("/users/me/api-keys", Some(token), json!({"name": name})).await;
    assert_eq!(s, 201, "{b}");
    (b["key_id"].as_str().unwrap().parse().unwrap(), b["key"].as_str().unwrap().to_string())
}

/// A `/v1` request with `key`: (status, body).
async fn v1(app: &TestApp, method: reqwest::Method, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/v1{path}", app.client.base);
    let mut request = reqwest::Client::new().request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_python_client_streams_and_non_streams_with_an_api_key_and_the_calls_show_in_usage() {
    let python = python();
    let fake = FakeProvider::start().await;
    fake.set_default(Script::reply(&["Hello", " from", " colloquy."]).with_usage(12, 4));
    let mut settings = support::with_fake_model(isolated_settings(), &fake);
    // Two calls of 16 tokens fit; a third spends the day.
    settings.quotas.tokens_per_day = 40;
    let app = TestApp::spawn_with(settings, EVERYTHING).await;
    let client = &app.client;
    let (user, token) = client.user().await;

    // A key: shown once, listed without its secret.
    let (key_id, key) = api_key(client, &token, "  python ").await;
    assert!(key.starts_with("ck_") && key.len() > 40, "{key}");
    let (s, list) = client.get("/users/me/api-keys", &token).await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["key_id"], key_id.to_string());
    assert_eq!(list["items"][0]["name"], "python");
    assert_eq!(list["items"][0]["hint"], key[key.len() - 4..]);
    assert!(!list.to_string().contains(&key), "a list never shows a secret: {list}");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_sha256 FROM api_keys WHERE key_id = $1")
        .bind(key_id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(stored, colloquy_infra::secrets::sha256(&key).to_vec(), "only the hash is kept");
    let created = only_event(app.pool(), user, "ApiKeyCreated").await;
    assert_eq!(created, json!({"key_id": key_id, "name": "python", "hint": &key[key.len() - 4..]}));

    // The official client, unchanged but for the base URL and the key.
    let out = tokio::task::spawn_blocking({
        let base = format!("{}/v1", client.base);
        let key = key.clone();
        move || {
            Command::new(&python)
                .arg(format!("{}/tests/openai_client/check.py", env!("CARGO_MANIFEST_DIR")))
                .env("OPENAI_BASE_URL", base)
                .env("OPENAI_API_KEY", key)
                .env("CHAT_MODEL", "fake-model")
                .env("EMBEDDING_MODEL", "all-minilm-l6-v2")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "the Python client failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["version"], "3.57.0");
    assert_eq!(seen["models"], json!(["all-minilm-l6-v2", "fake-model"]), "{seen}");
    assert_eq!(seen["model"], "fake-model");
    let completion = &seen["completion"];
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "fake-model");
    assert_eq!(
        (completion["content"].as_str(), completion["role"].as_str()),
        (Some("Hello from colloquy."), Some("assistant"))
    );
    assert_eq!(completion["finish_reason"], "stop");
    assert_eq!(completion["usage"], json!({"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}));
    let stream = &seen["stream"];
    assert_eq!(stream["content"], "Hello from colloquy.");
    assert_eq!(stream["finish_reason"], "stop");
    assert_eq!(stream["usage"], json!({"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}));
    // role chunk, three deltas, finish, usage.
    assert_eq!(stream["chunks"], 6, "{seen}");
    let embeddings = &seen["embeddings"];
    assert_eq!((embeddings["count"].as_u64(), embeddings["dimensions"].as_u64()), (Some(3), Some(384)));
    assert!(embeddings["similar"].as_f64().unwrap() > embeddings["unrelated"].as_f64().unwrap() + 0.3, "{embeddings}");
    assert_eq!(seen["errors"]["unknown_model"], json!([404, "model_not_found"]));
    assert_eq!(seen["errors"]["n"], json!([400, "n"]));
    assert_eq!(seen["errors"]["bad_key"], json!([401, "invalid_api_key"]));

    // The provider was asked exactly the request's conversation, with its parameters.
    let asked = fake.requests_to(Route::ChatCompletions);
    assert_eq!(asked.len(), 2, "the refused requests asked nothing");
    let first = &asked[0].body;
    let roles_and_texts: Vec<(String, String)> = first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
        .collect();
    let expected =
        [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Say hello to colloquy.")];
    assert_eq!(roles_and_texts, expected.map(|(r, t)| (r.to_string(), t.to_string())));
    assert_eq!(first["max_tokens"], 20);
    assert!((first["temperature"].as_f64().unwrap() - 0.1).abs() < 1e-6, "{first}");

    // Recorded as conversations from the API, through the events.
    let conversations: Vec<(Uuid, Value)> = sqlx::query_as(
        "SELECT aggregate_id::uuid, payload::jsonb -> 'ConversationOpenedFromApi' FROM events
          WHERE event_type = 'ConversationOpenedFromApi' ORDER BY position",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(conversations.len(), 2);
    assert_eq!(conversations[0].1["api_key_id"], key_id.to_string());
    assert_eq!(conversations[0].1["earlier_messages"], 2);
    assert_eq!(conversations[0].1["parameters"]["max_tokens"], 20);
    let listed = eventually("both API conversations are listed", || async {
        let (_, page) = client.get("/conversations", &token).await;
        let items = page["items"].as_array().unwrap().clone();
        (items.len() == 2).then_some(items)
    })
    .await;
    assert!(listed.iter().all(|c| c["origin"] == "api"), "{listed:?}");
    assert!(listed.iter().any(|c| c["title"] == "Hi"), "titled after the first user message: {listed:?}");

    // The calls are in the usage ledger like any other.
    let report = usage_with(client, &token, 2).await;
    assert_eq!((report["input_tokens"].as_i64(), report["output_tokens"].as_i64()), (Some(24), Some(8)), "{report}");

    // An access token works too; a third call fits the quota and spends it.
    let request = json!({"model": "fake-model", "messages": [{"role": "user", "content": "Once more"}]});
    let (s, b) = v1(&app, reqwest::Method::POST, "/chat/completions", &token, Some(request.clone())).await;
    assert_eq!((s, b["choices"][0]["message"]["content"].as_str()), (200, Some("Hello from colloquy.")), "{b}");
    usage_with(client, &token, 3).await;
    // Spent: 429 `insufficient_quota`, nothing recorded, the provider not asked.
    let reserved = || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(sum(used), 0)::bigint FROM user_quota_usage")
            .fetch_one(app.pool())
            .await
            .unwrap()
    };
    let (events, calls, reserved_before) =
        (app.event_count().await, fake.requests_to(Route::ChatCompletions).len(), reserved().await);
    let (s, b) = v1(&app, reqwest::Method::POST, "/chat/completions", &key, Some(request.clone())).await;
    assert_eq!(
        (s, b["error"]["code"].as_str(), b["error"]["type"].as_str()),
        (429, Some("insufficient_quota"), Some("insufficient_quota")),
        "{b}"
    );
    assert!(b["error"]["message"].as_str().unwrap().contains("token"), "the token quota refused it: {b}");
    assert_eq!((app.event_count().await, fake.requests_to(Route::ChatCompletions).len()), (events, calls));
    assert_eq!(reserved().await, reserved_before, "a refused request holds no quota");

    // Revoked: refused from the next request on, in OpenAI's shape; listed no more.
    let (s, b, _) =
        client.send(reqwest::Method::DELETE, &format!("/users/me/api-keys/{key_id}"), Some(&token), None).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = v1(&app, reqwest::Method::GET, "/models", &key, None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{b}");
    let (_, list) = client.get("/users/me/api-keys", &token).await;
    assert_eq!(list["items"], json!([]));
    let (s, b, _) =
        client.send(reqwest::Method::DELETE, &format!("/users/me/api-keys/{key_id}"), Some(&token), None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));
    let revoked = only_event(app.pool(), user, "ApiKeyRevoked").await;
    assert_eq!(revoked, json!({"key_id": key_id}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_belong_to_their_user_bad_requests_record_nothing_and_a_client_that_leaves_cancels_its_reply() {
    let fake = FakeProvider::start().await;
    let mut settings = support::with_fake_model(isolated_settings(), &fake);
    // A client that went away is noticed at the latest when the next keepalive is written.
    settings.streams.sse_keepalive_secs = 1;
    let app = TestApp::spawn_with(settings, EVERYTHING).await;
    let client = &app.client;
    let (_, alice) = client.user().await;
    let (_, bob) = client.user().await;
    let (alice_key_id, alice_key) = api_key(client, &alice, "alice").await;

    // Bob cannot see or revoke Alice's key.
    let (_, list) = client.get("/users/me/api-keys", &bob).await;
    assert_eq!(list["items"], json!([]));
    let (s, _, _) =
        client.send(reqwest::Method::DELETE, &format!("/users/me/api-keys/{alice_key_id}"), Some(&bob), None).await;
    assert_eq!(s, 404);
    let (s, _) = v1(&app, reqwest::Method::GET, "/models", &alice_key, None).await;
    assert_eq!(s, 200);
    // A key opens `/v1` only: it manages nothing and reads nothing through `/api/v1`.
    let (s, b) = client.get("/users/me/api-keys", &alice_key).await;
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "{b}");
    let (s, _) = client.post_json("/users/me/api-keys", Some(&alice_key), json!({"name": "more"})).await;
    assert_eq!(s, 401);
    // A deactivated account's keys stop working at once.
    let (_, carol) = client.user().await;
    let (_, carol_key) = api_key(client, &carol, "carol").await;
    assert_eq!(v1(&app, reqwest::Method::GET, "/models", &carol_key, None).await.0, 200);
    let (s, _, _) = client.send(reqwest::Method::DELETE, "/users/me", Some(&carol), None).await;
    assert!(s < 300, "{s}");
    let (s, b) = v1(&app, reqwest::Method::GET, "/models", &carol_key, None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{b}");
    // A bad name changes nothing.
    let (s, b) = client.post_json("/users/me/api-keys", Some(&bob), json!({"name": " "})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_api_key_name")));
    // No key, and no route: OpenAI's shape.
    let (s, b) = v1(&app, reqwest::Method::GET, "/models", "", None).await;
    assert_eq!((s, b["error"]["type"].as_str()), (401, Some("invalid_request_error")), "{b}");
    let (s, b) = v1(&app, reqwest::Method::GET, "/nothing-here", &alice_key, None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");

    // Refused requests record nothing and ask nothing.
    let events = app.event_count().await;
    let user = json!([{"role": "user", "content": "Hi"}]);
    for (body, status, param) in [
        (json!({"model": "fake-model", "messages": user, "n": 3}), 400, "n"),
        (json!({"model": "nope", "messages": user}), 404, "model"),
        (json!({"model": "fake-model", "messages": [{"role": "assistant", "content": "Hi"}]}), 400, "messages"),
        (json!({"model": "fake-model", "messages": [{"role": "user", "content": "a\u{0}b"}]}), 400, "messages"),
        (json!({"model": "fake-model"}), 400, "body"),
    ] {
        let (s, b) = v1(&app, reqwest::Method::POST, "/chat/completions", &alice_key, Some(body.clone())).await;
        assert_eq!((s, b["error"]["param"].as_str()), (status, Some(param)), "{body}: {b}");
    }
    assert_eq!(app.event_count().await, events);
    assert!(fake.requests().is_empty());

    // A stream without `stream_options.include_usage` has no usage chunk, as with OpenAI.
    fake.push(Route::ChatCompletions, Script::reply(&["Short."]).with_usage(3, 1));
    let url = format!("{}/v1/chat/completions", client.base);
    let body = json!({"model": "fake-model", "messages": user, "stream": true});
    let response = reqwest::Client::new().post(&url).bearer_auth(&alice_key).json(&body).send().await.unwrap();
    let events = response.text().await.unwrap();
    let data: Vec<&str> = events.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{events}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(
        chunks.iter().all(|c| c["usage"].is_null() && c["choices"].as_array().is_some_and(|a| a.len() == 1)),
        "{events}"
    );
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");

    // With an Idempotency-Key a retry answers the first request's reply; nothing is asked twice.
    let asked = fake.requests_to(Route::ChatCompletions).len();
    let once = json!({"model": "fake-model", "messages": [{"role": "user", "content": "Echo me"}]});
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&alice_key)
            .header("Idempotency-Key", "retry-1")
            .json(&once)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(answers[0]["id"], answers[1]["id"]);
    assert_eq!(answers[0]["choices"][0]["message"]["content"], answers[1]["choices"][0]["message"]["content"]);
    assert_eq!(fake.requests_to(Route::ChatCompletions).len(), asked + 1);

    // A streaming client that goes away before the end cancels its reply: the provider's
    // connection is closed and the reply recorded as cancelled with its partial text.
    fake.push(Route::ChatCompletions, Script::hold_after(&["Partial"]));
    let response = reqwest::Client::new().post(url).bearer_auth(&alice_key).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let conversation: Uuid = response.headers()["x-colloquy-conversation-id"].to_str().unwrap().parse().unwrap();
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("Partial") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("\"object\":\"chat.completion.chunk\""), "{seen}");
    drop(stream);
    let cancelled = eventually("the reply is cancelled", || async {
        let payload: Option<Value> = sqlx::query_scalar(
            "SELECT payload::jsonb -> 'ReplyCancelled' FROM events WHERE aggregate_id = $1 AND event_type = 'ReplyCancelled'",
        )
        .bind(conversation.to_string())
        .fetch_optional(app.pool())
        .await
        .unwrap();
        payload
    })
    .await;
    assert_eq!(cancelled["partial_content"], "Partial");
    eventually("the provider's connection is closed", || async { (!fake.disconnects().is_empty()).then_some(()) })
        .await;
}
