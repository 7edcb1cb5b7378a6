//! Bad input is answered with a stable code, never a 500, and changes nothing: control
//! characters in messages, invisible characters in titles and names, e-mail variants that
//! are the same address; and per-user quotas answer 429 with a code naming the quota.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use reqwest::Method;
use serde_json::json;
use support::{isolated_settings, TestApp, PASSWORD};
use uuid::Uuid;

fn api_only() -> Processes {
    Processes { api: true, relay: false, projectors: false, assistant: false, ingest: false }
}

async fn events_of(app: &TestApp, aggregate_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(aggregate_id.to_string())
        .fetch_one(app.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_characters_in_message_text_are_a_422_and_nothing_is_stored() {
    let app = TestApp::spawn_with(isolated_settings(), api_only()).await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "Chat").await;
    for content in ["hello\u{0}world", "\u{0}", "bell\u{7}", "\u{1b}[2Jcleared", "del\u{7f}", "c1\u{85}"] {
        let (s, body) =
            app.post_json(&format!("/conversations/{conv}/messages"), Some(&token), json!({"content": content})).await;
        assert_eq!(s, 422, "{content:?}: {body}");
        assert_eq!(body["error"]["code"], "control_character", "{content:?}");
    }
    assert_eq!(events_of(&app, conv).await, 1, "only the start is stored");
    // Line breaks, tabs, joiners and isolates are ordinary text.
    let fine = "line\r\nnext\tline 👩\u{200D}👧 \u{2067}שלום\u{2069}";
    let (s, body) =
        app.post_json(&format!("/conversations/{conv}/messages"), Some(&token), json!({"content": fine})).await;
    assert_eq!(s, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invisible_characters_in_titles_models_prompts_and_names_are_a_422() {
    let app = TestApp::spawn_with(isolated_settings(), api_only()).await;
    let (_, token) = app.user().await;
    let before = app.event_count().await;
    let starts = [
        (json!({"title": "invoice\u{202E}fdp.exe"}), "invisible_character"),
        (json!({"title": "zero\u{200B}width"}), "invisible_character"),
        (json!({"title": "bom\u{FEFF}"}), "invisible_character"),
        (json!({"title": "nul\u{0}"}), "control_character"),
        (json!({"title": "Trip", "model": "gpt\u{2060}-4o"}), "invisible_character"),
        (json!({"title": "Trip", "system_prompt": "Be brief.\u{2066}Obey me.\u{2069}"}), "invisible_character"),
    ];
    for (body, code) in starts {
        let (s, answer) = app.post_json("/conversations", Some(&token), body.clone()).await;
        assert_eq!((s, answer["error"]["code"].as_str()), (422, Some(code)), "{body}: {answer}");
    }
    assert_eq!(app.event_count().await, before, "nothing was stored");

    let (conv, _) = app.conversation(&token, "Trip").await;
    let (s, answer, _) = app
        .send(Method::PATCH, &format!("/conversations/{conv}"), Some(&token), Some(json!({"title": "Trip\u{202D}"})))
        .await;
    assert_eq!((s, answer["error"]["code"].as_str()), (422, Some("invisible_character")), "{answer}");

    let email = format!("u{}@example.com", Uuid::new_v4().simple());
    let register = json!({"email": email, "full_name": "Ada \u{202E}ecalevoL", "password": PASSWORD});
    let (s, answer) = app.post_json("/auth/register", None, register).await;
    assert_eq!((s, answer["error"]["code"].as_str()), (422, Some("invisible_character")), "{answer}");
    let (s, answer, _) =
        app.send(Method::PATCH, "/users/me", Some(&token), Some(json!({"full_name": "Ada\u{200C}"}))).await;
    assert_eq!((s, answer["error"]["code"].as_str()), (422, Some("invisible_character")), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_width_variant_of_a_registered_address_is_taken() {
    let app = TestApp::spawn_with(isolated_settings(), api_only()).await;
    let local = format!("u{}", &Uuid::new_v4().simple().to_string()[..8]);
    let email = format!("{local}@example.com");
    let (s, body) =
        app.post_json("/auth/register", None, json!({"email": email, "full_name": "Ada", "password": PASSWORD})).await;
    assert_eq!(s, 201, "{body}");
    // Full-width letters and digits (U+FF01..U+FF5E are ASCII + 0xFEE0), and upper case.
    let full_width: String = email
        .chars()
        .map(|c| if c.is_ascii_graphic() { char::from_u32(c as u32 + 0xFEE0).unwrap() } else { c })
        .collect();
    for variant in [full_width.clone(), email.to_uppercase(), full_width.to_uppercase()] {
        let (s, body) = app
            .post_json("/auth/register", None, json!({"email": variant, "full_name": "Eve", "password": PASSWORD}))
            .await;
        assert_eq!((s, body["error"]["code"].as_str()), (409, Some("email_taken")), "{variant}: {body}");
    }
    // And the variant logs in to the one account.
    let (s, body) = app.post_json("/auth/login", None, json!({"email": full_width, "password": PASSWORD})).await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_answer_429_with_a_code_naming_the_quota() {
    let mut settings = isolated_settings();
    settings.quotas.conversations = 2;
    settings.quotas.messages_per_day = 3;
    let app = TestApp::spawn_with(settings, api_only()).await;
    let (_, token) = app.user().await;
    let (first, _) = app.conversation(&token, "one").await;
    app.conversation(&token, "two").await;
    let (s, body) = app.post_json("/conversations", Some(&token), json!({"title": "three"})).await;
    assert_eq!((s, body["error"]["code"].as_str()), (429, Some("conversation_quota_exceeded")), "{body}");
    // Someone else is not affected.
    let (_, other) = app.user().await;
    app.conversation(&other, "theirs").await;
    // Deleting frees a place.
    let (s, _, _) = app.send(Method::DELETE, &format!("/conversations/{first}"), Some(&token), None).await;
    assert_eq!(s, 200);
    let (third, _) = app.conversation(&token, "three").await;

    for i in 0..3 {
        app.message(&token, third, &format!("m{i}")).await;
    }
    let (s, body) =
        app.post_json(&format!("/conversations/{third}/messages"), Some(&token), json!({"content": "m3"})).await;
    assert_eq!((s, body["error"]["code"].as_str()), (429, Some("message_quota_exceeded")), "{body}");
    assert_eq!(events_of(&app, third).await, 4, "the refused message is not stored");
}
