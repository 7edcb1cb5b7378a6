//! Titles: a conversation started without one is named by its model after the first
//! exchange (recorded by the assistant, a system actor); the owner's title always wins,
//! whether given at the start, renamed before the reply, or renamed after the naming.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use colloquy_infra::Settings;
use colloquy_providers::testing::{FakeProvider, Route, Script};
use serde_json::{json, Value};
use support::{eventually, isolated_settings, ApiClient, TestApp};
use uuid::Uuid;

const EVERYTHING: Processes = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: false };

fn settings(fake: &FakeProvider) -> Settings {
    support::with_fake_model(isolated_settings(), fake)
}

/// The requests asking for a title (their system message is the naming instruction).
fn title_requests(fake: &FakeProvider) -> Vec<Value> {
    fake.requests_to(Route::ChatCompletions)
        .into_iter()
        .filter(|r| r.body["messages"][0]["content"].as_str().is_some_and(|s| s.starts_with("You name conversations")))
        .map(|r| r.body)
        .collect()
}

/// `assistant_titles_total` and `assistant_replies_total` of one outcome, from `/metrics`.
async fn counter(client: &ApiClient, name: &str, outcome: &str) -> u64 {
    let text = client.http.get(format!("{}/metrics", client.base)).send().await.unwrap().text().await.unwrap();
    let prefix = format!("colloquy_{name}{{outcome=\"{outcome}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().unwrap())
}

/// Posts `content` and waits until the assistant has finished with its reply, naming
/// included (the completed counter moves only after naming).
async fn exchange(client: &ApiClient, token: &str, conversation: Uuid, content: &str, completed_before: u64) {
    let (s, b) = client
        .post_json(&format!("/conversations/{conversation}/messages"), Some(token), json!({"content": content}))
        .await;
    assert_eq!(s, 201, "{b}");
    eventually("the reply is recorded", || async {
        let (_, m) = client.get(&format!("/conversations/{conversation}/messages"), token).await;
        let last = m["items"].as_array()?.last()?.clone();
        (last["status"] != "streaming" && last["role"] == "assistant").then_some(())
    })
    .await;
    let (_, m) = client.get(&format!("/conversations/{conversation}/messages"), token).await;
    assert_eq!(m["items"].as_array().unwrap().last().unwrap()["status"], "completed", "{m}");
    eventually("the assistant finished the reply", || async {
        (counter(client, "assistant_replies_total", "completed").await > completed_before).then_some(())
    })
    .await;
}

async fn start(client: &ApiClient, token: &str, body: Value) -> Uuid {
    let (s, b) = client.post_json("/conversations", Some(token), body).await;
    assert_eq!(s, 201, "{b}");
    b["conversation_id"].as_str().unwrap().parse().unwrap()
}

async fn title_of(client: &ApiClient, token: &str, conversation: Uuid, version: Option<i64>) -> String {
    let path = match version {
        Some(v) => format!("/conversations/{conversation}?min_version={v}"),
        None => format!("/conversations/{conversation}"),
    };
    let (s, b) = client.get(&path, token).await;
    assert_eq!(s, 200, "{b}");
    b["title"].as_str().unwrap().to_string()
}

async fn title_events(app: &TestApp, conversation: Uuid) -> Vec<(Value, Value)> {
    sqlx::query_as::<_, (Value, Value)>(
        "SELECT payload::jsonb -> 'TitleGenerated', metadata::jsonb FROM events
          WHERE aggregate_id = $1 AND event_type = 'TitleGenerated'",
    )
    .bind(conversation.to_string())
    .fetch_all(app.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_model_names_an_untitled_conversation_once_and_the_owners_title_always_wins() {
    let fake = FakeProvider::start().await;
    let mut app = TestApp::spawn_with(settings(&fake), EVERYTHING).await;
    let client = &app.client;
    let (_, token) = client.user().await;

    // Untitled: a placeholder, then the model's title after the first exchange.
    let untitled = start(client, &token, json!({})).await;
    assert_eq!(title_of(client, &token, untitled, Some(1)).await, "New conversation");
    fake.push(Route::ChatCompletions, Script::reply(&["Lisbon is ", "lovely in May."]));
    fake.push(
        Route::ChatCompletions,
        Script::reply(&["Title: \"Spring in ", "Lisbon.\"\nHope that helps!"]).with_usage(30, 4),
    );
    exchange(client, &token, untitled, "When should I visit Lisbon?", 0).await;
    let asked = title_requests(&fake);
    assert_eq!(asked.len(), 1, "{asked:?}");
    let shown = asked[0]["messages"][1]["content"].as_str().unwrap();
    assert!(shown.contains("When should I visit Lisbon?") && shown.contains("Lisbon is lovely in May."), "{shown}");
    let events = title_events(&app, untitled).await;
    assert_eq!(events.len(), 1);
    // The naming call's tokens are in the ledger, like a reply's.
    let usage = json!({"input_tokens": 30, "output_tokens": 4});
    assert_eq!(
        events[0].0,
        json!({"title": "Spring in Lisbon", "provider": "fake", "model": "upstream", "usage": usage})
    );
    assert_eq!(events[0].1["actor"], "system:assistant");
    assert_eq!(counter(client, "assistant_titles_total", "named").await, 1);
    let named = eventually("the read model shows the title", || async {
        let t = title_of(client, &token, untitled, None).await;
        (t != "New conversation").then_some(t)
    })
    .await;
    assert_eq!(named, "Spring in Lisbon");

    // Renamed afterwards: the owner's title stands, and no later exchange asks again.
    let (s, b, _) = client
        .send(
            reqwest::Method::PATCH,
            &format!("/conversations/{untitled}"),
            Some(&token),
            Some(json!({"title": "Trip"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    fake.push(Route::ChatCompletions, Script::reply(&["Bring a jacket."]));
    exchange(client, &token, untitled, "What should I pack?", 1).await;
    assert_eq!(title_of(client, &token, untitled, Some(b["version"].as_i64().unwrap())).await, "Trip");
    assert_eq!(title_requests(&fake).len(), 1);

    // Renamed before the first reply: never asked.
    let renamed = start(client, &token, json!({})).await;
    let (s, b, _) = client
        .send(
            reqwest::Method::PATCH,
            &format!("/conversations/{renamed}"),
            Some(&token),
            Some(json!({"title": "Mine"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    fake.push(Route::ChatCompletions, Script::reply(&["Sure."]));
    exchange(client, &token, renamed, "Hello?", 2).await;
    // Titled at the start: never asked either.
    let titled = start(client, &token, json!({"title": "Given"})).await;
    fake.push(Route::ChatCompletions, Script::reply(&["Hi."]));
    exchange(client, &token, titled, "Hi!", 3).await;
    assert_eq!(title_requests(&fake).len(), 1);
    assert_eq!((title_events(&app, renamed).await.len(), title_events(&app, titled).await.len()), (0, 0));
    assert_eq!(title_of(client, &token, renamed, None).await, "Mine");
    assert_eq!(title_of(client, &token, titled, None).await, "Given");

    app.stop_processes().await;
    support::cleanup(app.settings.clone()).await;
}
