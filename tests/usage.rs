//! The usage ledger: every provider call's tokens, priced by the configured table, per user,
//! day and model; token quotas checked before a call (429 with the reset time, and the
//! provider never asked); re-pricing by replaying the ledger into the read model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use colloquy_infra::assistant_settings::{ModelPrice, PriceTable};
use colloquy_infra::Settings;
use colloquy_projections::rebuild::rebuild;
use colloquy_projections::usage::UsageProjection;
use colloquy_providers::testing::{FakeProvider, Route, Script};
use serde_json::json;
use support::{isolated_settings, usage_with, TestApp};
use uuid::Uuid;

/// A row of `rm_usage` without its cost: (owner, day, provider, model, calls, input, output, priced).
type UsageRow = (Uuid, chrono::NaiveDate, String, String, i64, i64, i64, bool);

const EVERYTHING: Processes = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: false };

fn prices(input: f64, output: f64) -> PriceTable {
    let mut table = PriceTable::new();
    table.insert("fake/upstream".into(), ModelPrice { input_per_million: input, output_per_million: output });
    table
}

fn settings(fake: &FakeProvider, tokens_per_day: u64) -> Settings {
    let mut settings = support::with_fake_model(isolated_settings(), fake);
    settings.assistant.prices = prices(1_000.0, 2_000.0);
    settings.quotas.tokens_per_day = tokens_per_day;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_are_priced_per_day_and_model_quotas_stop_calls_and_replay_reprices() {
    let fake = FakeProvider::start().await;
    fake.set_default(Script::reply(&["Noted."]).with_usage(10, 5));
    let mut app = TestApp::spawn_with(settings(&fake, 30), EVERYTHING).await;
    let client = &app.client;
    let (_, token) = client.user().await;
    let (_, other) = client.user().await;
    let (conversation, _) = client.conversation(&token, "Costs").await;

    client.exchange(&token, conversation, "one").await;
    let report = usage_with(client, &token, 1).await;
    let day = &report["days"][0];
    assert_eq!(
        (day["provider"].as_str(), day["model"].as_str(), day["input_tokens"].as_i64(), day["output_tokens"].as_i64()),
        (Some("fake"), Some("upstream"), Some(10), Some(5))
    );
    // 10 × 1,000 + 5 × 2,000 per million.
    assert!((day["cost"].as_f64().unwrap() - 0.02).abs() < 1e-9, "{report}");
    assert_eq!(day["priced"], true);
    assert_eq!(day["day"], chrono::Utc::now().date_naive().to_string());
    // Nobody else's.
    let (_, theirs) = client.get("/users/me/usage", &other).await;
    assert_eq!((theirs["calls"].as_i64(), theirs["days"].as_array().map(Vec::len)), (Some(0), Some(0)));

    // The second exchange spends the day's 30 tokens.
    client.exchange(&token, conversation, "two").await;
    let report = usage_with(client, &token, 2).await;
    assert_eq!(report["input_tokens"].as_i64().unwrap() + report["output_tokens"].as_i64().unwrap(), 30);

    // Spent: a post is refused before anything is recorded or asked.
    let (events, asked) = (app.event_count().await, fake.requests_to(Route::ChatCompletions).len());
    let reserved = || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(sum(used), 0)::bigint FROM user_quota_usage")
            .fetch_one(app.pool())
            .await
            .unwrap()
    };
    let reserved_before = reserved().await;
    let (s, b, headers) = client
        .send(
            reqwest::Method::POST,
            &format!("/conversations/{conversation}/messages"),
            Some(&token),
            Some(json!({"content": "three"})),
        )
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (429, Some("token_quota_exceeded")), "{b}");
    let tomorrow = chrono::Utc::now().date_naive().succ_opt().unwrap();
    let resets_at: chrono::DateTime<chrono::Utc> = b["error"]["resets_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(resets_at, tomorrow.and_hms_opt(0, 0, 0).unwrap().and_utc());
    let wait: i64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait > 0 && wait <= 86_400, "{wait}");
    // So are a regeneration and an edit.
    let (_, page) = client.get(&format!("/conversations/{conversation}/messages"), &token).await;
    let first = page["items"][0]["message_id"].as_str().unwrap().to_string();
    let (s, b) = client
        .post_json(&format!("/conversations/{conversation}/messages/{first}/regenerate"), Some(&token), json!({}))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (429, Some("token_quota_exceeded")), "{b}");
    let (s, b) = client
        .post_json(
            &format!("/conversations/{conversation}/messages/{first}/edit"),
            Some(&token),
            json!({"content": "x"}),
        )
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (429, Some("token_quota_exceeded")), "{b}");
    assert_eq!(app.event_count().await, events);
    assert_eq!(fake.requests_to(Route::ChatCompletions).len(), asked);
    assert_eq!(reserved().await, reserved_before, "a refused request holds no quota");
    // Another user's quota is their own.
    let (theirs, _) = client.conversation(&other, "Mine").await;
    client.exchange(&other, theirs, "hello").await;
    // Their call is in the ledger before the live read model is compared with a rebuild
    // (the reply's end and the ledger are different projections).
    usage_with(client, &other, 1).await;

    // Re-pricing: replay the ledger into the read model with another table. The costs
    // change; the calls and tokens, and every other row, stay what they were.
    let before: Vec<UsageRow> = sqlx::query_as(
        "SELECT owner_id, day, provider, model, calls, input_tokens, output_tokens, priced FROM rm_usage ORDER BY owner_id",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let messages_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_messages").fetch_one(app.pool()).await.unwrap();
    rebuild(app.pool(), &UsageProjection::new(prices(3_000.0, 0.0))).await.unwrap();
    let after: Vec<UsageRow> = sqlx::query_as(
        "SELECT owner_id, day, provider, model, calls, input_tokens, output_tokens, priced FROM rm_usage ORDER BY owner_id",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(after, before);
    let (_, report) = client.get("/users/me/usage", &token).await;
    assert_eq!((report["calls"].as_i64(), report["input_tokens"].as_i64()), (Some(2), Some(20)));
    // 20 × 3,000 per million.
    assert!((report["cost"].as_f64().unwrap() - 0.06).abs() < 1e-9, "{report}");
    let messages_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_messages").fetch_one(app.pool()).await.unwrap();
    assert_eq!(messages_after, messages_before);

    // A range is checked.
    let (s, b) = client.get("/users/me/usage?from=2026-03-02&to=2026-03-01", &token).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_query")), "{b}");
    let (s, b) = client.get("/users/me/usage?from=2024-01-01&to=2026-01-01", &token).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_query")), "{b}");
    app.stop_processes().await;
}
