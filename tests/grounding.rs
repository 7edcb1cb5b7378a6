//! The knowledge base end to end, with every process running (API, relay, projectors, the
//! ingest worker with the real local embedder, the assistant with a fake provider speaking
//! OpenAI's wire format): a document is ingested into the chunk index, a grounded
//! conversation's reply quotes its passage and records the citation (document, version,
//! chunk) in its events and in the messages query; another user's grounded conversation
//! never sees it; a deleted document is gone from later answers at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use colloquy_commands::caller::Caller;
use colloquy_commands::knowledge::CreateDocument;
use colloquy_commands::{CommandSettings, Commands};
use colloquy_domain::knowledge::DocumentSource;
use colloquy_infra::knowledge_index::{self, chunk_id};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::Settings;
use colloquy_providers::testing::{FakeProvider, Route, Script};
use serde_json::{json, Value};
use support::{eventually, isolated_settings, ApiClient, TestApp};
use uuid::Uuid;

const EVERYTHING: Processes = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: true };

const HANDBOOK: &str = "Tallow & Reed handbook. Expense claims for travel must be filed within \
thirty days of the trip, with the receipts attached. Trains are booked in standard class for \
journeys under four hours.";

fn settings(fake: &FakeProvider) -> Settings {
    let mut settings = isolated_settings();
    settings.assistant.local.models_dir = support::models_dir();
    settings.knowledge.retrieval.passages = 3;
    support::with_fake_model(settings, fake)
}

async fn grounded_conversation(client: &ApiClient, token: &str) -> Uuid {
    let (s, b) =
        client.post_json("/conversations", Some(token), json!({"title": "Policies", "kind": "knowledge"})).await;
    assert_eq!(s, 201, "{b}");
    b["conversation_id"].as_str().unwrap().parse().unwrap()
}

/// Posts `content` and waits for its reply to complete; returns the reply's messages-query row.
async fn ask(client: &ApiClient, token: &str, conversation: Uuid, content: &str) -> Value {
    let (s, b) = client
        .post_json(&format!("/conversations/{conversation}/messages"), Some(token), json!({"content": content}))
        .await;
    assert_eq!(s, 201, "post: {b}");
    let reply = b["reply_id"].clone();
    eventually("the reply completed", || async {
        let (s, b) = client.get(&format!("/conversations/{conversation}/messages"), token).await;
        (s == 200).then_some(())?;
        b["items"].as_array()?.iter().find(|m| m["message_id"] == reply && m["status"] == "completed").cloned()
    })
    .await
}

/// The system message of the last request the fake received whose last message is `content`.
fn system_prompt_of(fake: &FakeProvider, content: &str) -> String {
    let requests = fake.requests_to(Route::ChatCompletions);
    let request = requests
        .iter()
        .rev()
        .find(|r| r.body["messages"].as_array().and_then(|m| m.last()).map(|m| m["content"] == content) == Some(true))
        .expect("the fake received the question");
    let messages = request.body["messages"].as_array().unwrap();
    messages.iter().filter(|m| m["role"] == "system").map(|m| m["content"].as_str().unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grounded_reply_quotes_and_cites_its_owners_passages_only_and_never_a_deleted_one() {
    let fake = FakeProvider::start().await;
    fake.set_default(Script::reply(&["Within ", "thirty ", "days."]));
    let app = TestApp::spawn_with(settings(&fake), EVERYTHING).await;
    let client = &app.client;
    let (alice, alice_token) = client.user().await;
    let (_, bob_token) = client.user().await;

    // Alice's document, through the use case the API calls.
    let commands = Commands::new(app.pool().clone(), Metrics::new(), CommandSettings::default());
    let caller = Caller::user(alice, "test".into(), "req-1");
    let input = CreateDocument {
        id: None,
        title: "Travel policy".into(),
        tags: vec!["policy".into()],
        category: None,
        source: DocumentSource::Text { text: HANDBOOK.into() },
    };
    let document = commands.create_document(&caller, input).await.unwrap().value.document_id;
    // The ingest worker chunks it, embeds it with the local MiniLM and makes it searchable.
    let chunks = eventually("the document is indexed", || async {
        let live = knowledge_index::live_chunks(app.pool(), alice, document).await.unwrap();
        (!live.is_empty()).then_some(live)
    })
    .await;
    assert_eq!(chunks[0].0, chunk_id(document, 1, 0));
    eventually("the document's read model says ready", || async {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM rm_knowledge_documents WHERE document_id = $1")
                .bind(document)
                .fetch_optional(app.pool())
                .await
                .unwrap();
        (status.as_deref() == Some("ready")).then_some(())
    })
    .await;

    // A grounded conversation of Alice's: the passage is quoted and cited.
    let conversation = grounded_conversation(client, &alice_token).await;
    let question = "How long do I have to file a travel expense claim?";
    let reply = ask(client, &alice_token, conversation, question).await;
    let system = system_prompt_of(&fake, question);
    assert!(system.contains("> Tallow & Reed handbook. Expense claims for travel must be filed within"), "{system}");
    assert!(system.contains("not instructions"), "{system}");
    let cited = reply["citations"].as_array().unwrap();
    assert_eq!(cited.len(), 1, "{reply}");
    assert_eq!(cited[0]["document_id"], json!(document));
    assert_eq!(cited[0]["chunk_id"], json!(chunk_id(document, 1, 0)));
    assert_eq!(cited[0]["version"], json!(1));
    // The audit trail: ReplyStarted holds the passage ids and the text as quoted.
    let started = support::only_event(app.pool(), conversation, "ReplyStarted").await;
    assert_eq!(started["citations"][0]["chunk_id"], json!(chunk_id(document, 1, 0)));
    assert!(started["citations"][0]["text"].as_str().unwrap().contains("thirty days"));

    // Bob's grounded conversation asks the same: nothing of Alice's reaches his prompt.
    let bobs = grounded_conversation(client, &bob_token).await;
    let bob_question = "How long do I have to file a travel expense claim, please?";
    let bob_reply = ask(client, &bob_token, bobs, bob_question).await;
    assert!(!system_prompt_of(&fake, bob_question).contains("Tallow"));
    assert_eq!(bob_reply["citations"], json!([]));

    // Alice deletes the document: the very next answer quotes nothing.
    commands.delete_document(&caller, document).await.unwrap();
    let again = "And how are trains booked?";
    let later = ask(client, &alice_token, conversation, again).await;
    assert!(!system_prompt_of(&fake, again).contains("Tallow"));
    assert_eq!(later["citations"], json!([]));
    let mut app = app;
    app.stop_processes().await;
    support::cleanup(app.settings.clone()).await;
}
