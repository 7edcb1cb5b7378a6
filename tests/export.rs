//! Export: the whole tree as JSON (every branch, with parents, models and usage), the active
//! path as Markdown; only the owner's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use colloquy_providers::testing::{FakeProvider, Route, Script};
use serde_json::{json, Value};
use support::isolated_settings;
use uuid::Uuid;

const EVERYTHING: Processes = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: false };

fn id(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_json_export_holds_every_branch_and_the_markdown_the_active_path() {
    let fake = FakeProvider::start().await;
    for answer in ["A1", "A1 again", "A1 edited"] {
        fake.push(Route::ChatCompletions, Script::reply(&[answer]).with_usage(7, 2));
    }
    let mut app = support::TestApp::spawn_with(support::with_fake_model(isolated_settings(), &fake), EVERYTHING).await;
    let client = &app.client;
    let (_, token) = client.user().await;
    let (_, stranger) = client.user().await;
    let (conversation, _) = client.conversation(&token, "Plans").await;
    let base = format!("/conversations/{conversation}/messages");
    let (_, posted) = client.post_json(&base, Some(&token), json!({"content": "Q1"})).await;
    let (q1, a1) = (id(&posted, "message_id"), id(&posted, "reply_id"));
    client.reply_completed(&token, conversation, &a1).await;
    let (s, b) = client.post_json(&format!("{base}/{q1}/regenerate"), Some(&token), json!({})).await;
    assert_eq!(s, 202, "{b}");
    let again = id(&b, "reply_id");
    client.reply_completed(&token, conversation, &again).await;
    let (s, b) = client.post_json(&format!("{base}/{q1}/edit"), Some(&token), json!({"content": "Q1 edited"})).await;
    assert_eq!(s, 201, "{b}");
    let (edited, edited_reply) = (id(&b, "message_id"), id(&b, "reply_id"));
    client.reply_completed(&token, conversation, &edited_reply).await;

    let (s, export) = client.get(&format!("/conversations/{conversation}/export"), &token).await;
    assert_eq!(s, 200, "{export}");
    assert_eq!(
        (export["format"].as_str(), export["format_version"].as_u64()),
        (Some("colloquy.conversation"), Some(1))
    );
    assert_eq!(export["conversation"]["title"], "Plans");
    let tree: Vec<(String, Option<String>, String, String)> = export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (id(m, "id"), m["parent_id"].as_str().map(String::from), id(m, "role"), id(m, "content")))
        .collect();
    let user = |s: &str| s.to_string();
    assert_eq!(
        tree,
        [
            (q1.clone(), None, user("user"), user("Q1")),
            (a1.clone(), Some(q1.clone()), user("assistant"), user("A1")),
            (again.clone(), Some(q1.clone()), user("assistant"), user("A1 again")),
            (edited.clone(), None, user("user"), user("Q1 edited")),
            (edited_reply.clone(), Some(edited.clone()), user("assistant"), user("A1 edited")),
        ]
    );
    assert_eq!(export["active_leaf_id"], edited_reply.as_str());
    assert_eq!(export["messages"][3]["edit_of"], q1.as_str());
    let reply = &export["messages"][1];
    assert_eq!((reply["model"].as_str(), reply["provider"].as_str()), (Some("upstream"), Some("fake")));
    assert_eq!(reply["usage"], json!({"input_tokens": 7, "output_tokens": 2}));

    // Markdown: the active path only.
    let (s, text, headers) = client
        .send(
            reqwest::Method::GET,
            &format!("/conversations/{conversation}/export?format=markdown"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/markdown"));
    let text = text.as_str().unwrap();
    assert!(text.starts_with("# Plans\n"), "{text}");
    assert!(
        text.contains("## You\n\nQ1 edited\n") && text.contains("## Assistant (upstream)\n\nA1 edited\n"),
        "{text}"
    );
    assert!(!text.contains("A1 again") && !text.contains("\nQ1\n"), "{text}");

    // Import it back: a new conversation with the same tree and active path, new ids, its
    // events saying it was imported, and no model asked for anything.
    let asked = fake.requests_to(Route::ChatCompletions).len();
    let (s, b) = client.post_json("/conversations/import", Some(&token), export.clone()).await;
    assert_eq!(s, 201, "{b}");
    let imported: Uuid = id(&b, "conversation_id").parse().unwrap();
    let version = b["version"].as_i64().unwrap();
    let (s, copy) = client.get(&format!("/conversations/{imported}/export?min_version={version}"), &token).await;
    assert_eq!(s, 200, "{copy}");
    let shape = |e: &Value| -> Vec<(Option<usize>, String, String)> {
        let messages = e["messages"].as_array().unwrap();
        let index = |id: &Value| messages.iter().position(|m| &m["id"] == id);
        messages.iter().map(|m| (index(&m["parent_id"]), id(m, "role"), id(m, "content"))).collect()
    };
    assert_eq!(shape(&copy), shape(&export));
    assert_eq!(copy["conversation"]["title"], "Plans");
    let ids: Vec<&str> = copy["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&q1.as_str()), "imported messages get new ids");
    let (_, page) = client.get(&format!("/conversations/{imported}/messages?min_version={version}"), &token).await;
    let path: Vec<&str> = page["items"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(path, ["Q1 edited", "A1 edited"]);
    let (_, detail) = client.get(&format!("/conversations/{imported}?min_version={version}"), &token).await;
    assert_eq!(detail["origin"], "import", "{detail}");
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM events WHERE aggregate_id = $1 ORDER BY sequence")
            .bind(imported.to_string())
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(kinds[..2], ["ConversationStarted".to_string(), "ConversationImported".to_string()]);
    assert_eq!(kinds.iter().filter(|k| *k == "MessageImported").count(), 5);
    assert!(!kinds.iter().any(|k| k.starts_with("Reply")), "{kinds:?}");
    assert_eq!(fake.requests_to(Route::ChatCompletions).len(), asked);
    // The conversation goes on from the imported path: the next reply's prompt holds it.
    fake.push(Route::ChatCompletions, Script::reply(&["A2"]));
    client.exchange(&token, imported, "Q2").await;
    let prompt = fake.requests_to(Route::ChatCompletions).last().unwrap().body["messages"].clone();
    let said: Vec<&str> = prompt.as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(said, ["Q1 edited", "A1 edited", "Q2"]);

    // What is not an export of colloquy's is refused, and nothing is created.
    let before = app.event_count().await;
    let mut wrong = export.clone();
    wrong["format_version"] = json!(2);
    let (s, b) = client.post_json("/conversations/import", Some(&token), wrong).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_import")), "{b}");
    let mut orphan = export.clone();
    orphan["messages"][1]["parent_id"] = json!(Uuid::new_v4());
    let (s, b) = client.post_json("/conversations/import", Some(&token), orphan).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_import")), "{b}");
    let (s, b) = client.post_json("/conversations/import", Some(&token), json!({"messages": []})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_request")), "{b}");
    assert_eq!(app.event_count().await, before);

    let (s, b) = client.get(&format!("/conversations/{conversation}/export?format=pdf"), &token).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_query")), "{b}");
    let (s, b) = client.get(&format!("/conversations/{conversation}/export"), &stranger).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    app.stop_processes().await;
}
