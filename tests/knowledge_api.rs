//! Files and the knowledge base over HTTP: an uploaded file is streamed to storage, ingested
//! (extracted, chunked, embedded with the real local MiniLM, indexed), made into a knowledge
//! document, found by text, vector and hybrid search, and quoted and cited by a grounded
//! reply; deleting takes it out of search at once. Bad uploads and requests get stable
//! error codes and leave nothing behind, and another user's files and documents are "not
//! found".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use colloquy::runtime::Processes;
use colloquy_infra::assistant_settings::{ProviderKind, ProviderSettings};
use colloquy_infra::Settings;
use colloquy_providers::testing::{FakeProvider, Script};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::{assert_declared_error_code, eventually, isolated_settings, ApiClient, TestApp};
use uuid::Uuid;

const EVERYTHING: Processes = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: true };
const API_ONLY: Processes = Processes { api: true, relay: false, projectors: false, assistant: false, ingest: false };

const POLICY: &str = "# Tallow & Reed travel policy\n\n\
Expense claims for travel must be filed within thirty days of the trip, with the receipts attached.\n\n\
Trains are booked in standard class for journeys under four hours.\n";

const BOUNDARY: &str = "colloquy-test-boundary-7d1f";

/// One part of a `multipart/form-data` body: (name, file name, bytes).
type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

fn form(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file_name, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let disposition = match file_name {
            Some(f) => format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n"),
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
        };
        body.extend_from_slice(disposition.as_bytes());
        // Whatever the client claims: the bytes decide.
        body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// POSTs `body` to `/files`; (status, JSON, headers).
async fn upload_raw(
    client: &ApiClient,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
    key: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client.http.post(client.url("/files")).bearer_auth(token).header("content-type", content_type);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = req.body(body).send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_declared_error_code(status, &body);
    (status, body, headers)
}

async fn upload(client: &ApiClient, token: &str, parts: &[Part<'_>]) -> (u16, Value) {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let (s, b, _) = upload_raw(client, token, &content_type, form(parts), None).await;
    (s, b)
}

async fn send(
    client: &ApiClient,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, b, _) = client.send(method, path, Some(token), body).await;
    (s, b)
}

/// Every file under `root`, at any depth.
fn stored_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn with_fake_model(mut settings: Settings, fake: &FakeProvider) -> Settings {
    settings.assistant.local.models_dir = support::models_dir();
    settings.knowledge.retrieval.passages = 3;
    support::with_fake_model(settings, fake)
}

fn id_of(body: &Value, field: &str) -> Uuid {
    body[field].as_str().unwrap_or_else(|| panic!("no {field} in {body}")).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uploaded_file_becomes_searchable_knowledge_that_grounds_a_reply_until_it_is_deleted() {
    let fake = FakeProvider::start().await;
    fake.set_default(Script::reply(&["Within ", "thirty ", "days."]));
    let mut app = TestApp::spawn_with(with_fake_model(isolated_settings(), &fake), EVERYTHING).await;
    let root = app.settings.storage.local.root.clone();
    let client = &app.client;
    let (_, alice) = client.user().await;
    let (_, bob) = client.user().await;

    // Upload, then retry with the same Idempotency-Key: one file, the retry's copy removed.
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let body = form(&[("file", Some("policy.md"), POLICY.as_bytes())]);
    let (s, first, _) = upload_raw(client, &alice, &content_type, body.clone(), Some("upload-1")).await;
    assert_eq!(s, 201, "{first}");
    let file = id_of(&first, "file_id");
    let (s, again, headers) = upload_raw(client, &alice, &content_type, body, Some("upload-1")).await;
    assert_eq!((s, id_of(&again, "file_id")), (201, file), "{again}");
    assert_eq!(headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(stored_files(&root).len(), 1, "{:?}", stored_files(&root));

    // Read-your-writes, then processing to ready.
    let (s, got) = client.get(&format!("/files/{file}?min_version=1"), &alice).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["sha256"], json!(hex::encode(Sha256::digest(POLICY.as_bytes()))));
    assert_eq!(
        (got["media_type"].as_str(), got["size_bytes"].as_u64()),
        (Some("text/markdown"), Some(POLICY.len() as u64))
    );
    assert_eq!(got["file_name"], "policy.md");
    let ready = eventually("the file is processed", || async {
        let (_, f) = client.get(&format!("/files/{file}"), &alice).await;
        (f["status"] == "ready").then_some(f)
    })
    .await;
    assert!(ready["text_length"].as_i64().unwrap() > 100, "{ready}");
    let (s, list) = client.get("/files", &alice).await;
    assert_eq!((s, list["items"][0]["file_id"].clone()), (200, json!(file)), "{list}");

    // The content comes back as stored, as an attachment that no browser sniffs.
    let res = client.http.get(client.url(&format!("/files/{file}/content"))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(header("content-type").as_deref(), Some("text/markdown"));
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
    let disposition = header("content-disposition").unwrap();
    assert!(disposition.starts_with("attachment") && disposition.contains("policy.md"), "{disposition}");
    assert_eq!(res.bytes().await.unwrap(), POLICY.as_bytes());

    // Bob sees none of it.
    for path in [format!("/files/{file}"), format!("/files/{file}/content")] {
        assert_eq!(client.get(&path, &bob).await.0, 404, "{path}");
    }
    let (s, b) = client.post_json("/knowledge", Some(&bob), json!({"title": "Mine", "file_id": file})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("source_file_not_found")), "{b}");

    // A knowledge document made from the file, indexed in the background.
    let (s, created) = client
        .post_json("/knowledge", Some(&alice), json!({"title": "Travel policy", "file_id": file, "tags": ["Policy"]}))
        .await;
    assert_eq!(s, 201, "{created}");
    let document = id_of(&created, "document_id");
    let indexed = eventually("the document is indexed", || async {
        let (_, d) = client.get(&format!("/knowledge/{document}"), &alice).await;
        (d["status"] == "ready").then_some(d)
    })
    .await;
    assert_eq!((indexed["source"].as_str(), indexed["tags"].clone()), (Some("file"), json!(["policy"])), "{indexed}");
    assert!(indexed["chunks"].as_i64().unwrap() >= 1);
    assert_eq!(client.get(&format!("/knowledge/{document}"), &bob).await.0, 404);
    assert_eq!(client.get("/knowledge", &bob).await.1["items"], json!([]));
    let (_, tagged) = client.get("/knowledge?tag=POLICY", &alice).await;
    assert_eq!(tagged["items"][0]["document_id"], json!(document), "{tagged}");
    let (_, other) = client.get("/knowledge?tag=recipes", &alice).await;
    assert_eq!(other["items"], json!([]));

    // Every ranking finds it; Bob's search finds nothing of Alice's.
    for mode in ["hybrid", "text", "vector"] {
        let (s, found) = client.get(&format!("/knowledge/search?q=expense%20claims%20filed&mode={mode}"), &alice).await;
        assert_eq!((s, found["mode"].as_str()), (200, Some(mode)), "{found}");
        assert_eq!(found["items"][0]["document_id"], json!(document), "{mode}: {found}");
        assert!(found["items"][0]["content"].as_str().unwrap().contains("thirty days"), "{found}");
    }
    let (_, marked) = client.get("/knowledge/search?q=receipts&mode=text", &alice).await;
    assert!(marked["items"][0]["snippet"].as_str().unwrap().contains("<mark>receipts</mark>"), "{marked}");
    let (_, tagged) = client.get("/knowledge/search?q=expense%20claims&tags=Policy&k=1", &alice).await;
    assert_eq!(tagged["items"].as_array().map(Vec::len), Some(1), "{tagged}");
    let (_, untagged) = client.get("/knowledge/search?q=expense%20claims&tags=policy,recipes", &alice).await;
    assert_eq!(untagged["items"], json!([]), "{untagged}");
    let (_, bobs) = client.get("/knowledge/search?q=expense%20claims", &bob).await;
    assert_eq!(bobs["items"], json!([]), "{bobs}");

    // A chat conversation switched to grounded: the reply quotes and cites the passage.
    let (conversation, _) = client.conversation(&alice, "Questions").await;
    let (s, patched) = send(
        client,
        reqwest::Method::PATCH,
        &format!("/conversations/{conversation}"),
        &alice,
        Some(json!({"grounded": true})),
    )
    .await;
    assert_eq!(s, 200, "{patched}");
    let version = patched["version"].as_i64().unwrap();
    let (_, shown) = client.get(&format!("/conversations/{conversation}?min_version={version}"), &alice).await;
    assert_eq!(shown["grounded"], json!(true), "{shown}");
    let (s, posted) = client
        .post_json(
            &format!("/conversations/{conversation}/messages"),
            Some(&alice),
            json!({"content": "When must expense claims be filed?"}),
        )
        .await;
    assert_eq!(s, 201, "{posted}");
    let reply = posted["reply_id"].clone();
    let answered = eventually("the grounded reply completed", || async {
        let (_, m) = client.get(&format!("/conversations/{conversation}/messages"), &alice).await;
        m["items"].as_array()?.iter().find(|m| m["message_id"] == reply && m["status"] == "completed").cloned()
    })
    .await;
    assert_eq!(answered["citations"][0]["document_id"], json!(document), "{answered}");
    // The reply's events hold the passages the model was given.
    let started = support::only_event(app.pool(), conversation, "ReplyStarted").await;
    assert_eq!(started["citations"][0]["chunk_id"], answered["citations"][0]["chunk_id"], "{started}");
    assert_eq!(started["citations"][0]["document_id"], json!(document));

    // Deleted: out of search in the same breath, and the file with its bytes gone.
    let (s, b) = send(client, reqwest::Method::DELETE, &format!("/knowledge/{document}"), &alice, None).await;
    assert_eq!(s, 200, "{b}");
    let (_, after) = client.get("/knowledge/search?q=expense%20claims", &alice).await;
    assert_eq!(after["items"], json!([]), "{after}");
    let (s, b) = send(client, reqwest::Method::DELETE, &format!("/files/{file}"), &alice, None).await;
    assert_eq!(s, 200, "{b}");
    // The bytes are gone at once; the read model says so once it reached the deletion.
    assert_eq!(client.get(&format!("/files/{file}/content"), &alice).await.0, 404);
    let deleted = b["version"].as_i64().unwrap();
    assert_eq!(client.get(&format!("/files/{file}?min_version={deleted}"), &alice).await.0, 404);
    assert_eq!(client.get(&format!("/files/{file}/content"), &alice).await.0, 404);
    assert_eq!(stored_files(&root), Vec::<std::path::PathBuf>::new());

    app.stop_processes().await;
    support::cleanup(app.settings.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_requests_get_stable_codes_and_keep_nothing() {
    let mut settings = isolated_settings();
    settings.assistant.local.models_dir = support::models_dir();
    settings.knowledge.uploads.max_bytes = 4096;
    let mut app = TestApp::spawn_with(settings, API_ONLY).await;
    let root = app.settings.storage.local.root.clone();
    let client = &app.client;
    let (_, token) = client.user().await;
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90wS\xde";
    let big = "a line of text\n".repeat(400);
    let refused: Vec<(&str, Vec<Part<'_>>, u16, &str)> = vec![
        ("past the limit", vec![("file", Some("big.txt"), big.as_bytes())], 413, "file_too_large"),
        ("a PNG named .txt", vec![("file", Some("notes.txt"), png)], 415, "unsupported_file_type"),
        ("no part named file", vec![("attachment", Some("a.txt"), b"hello")], 400, "invalid_upload"),
        ("no file name", vec![("file", None, b"hello")], 422, "invalid_file_name"),
        ("an empty file", vec![("file", Some("empty.txt"), b"")], 422, "empty_file"),
        (
            "two parts",
            vec![("file", Some("a.txt"), b"hello"), ("file", Some("b.txt"), b"again")],
            400,
            "invalid_upload",
        ),
        ("no parts", vec![], 400, "invalid_upload"),
    ];
    for (what, parts, status, code) in refused {
        let (s, b) = upload(client, &token, &parts).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{what}: {b}");
        assert!(!b["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, b) = client.post_json("/files", Some(&token), json!({"file": "hello"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (415, Some("unsupported_media_type")), "{b}");
    let (s, b, _) =
        upload_raw(client, &token, "multipart/form-data; boundary=x", b"--x\r\nnot a part".to_vec(), None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_upload")), "{b}");
    // Nothing stored, nothing recorded.
    assert_eq!(stored_files(&root), Vec::<std::path::PathBuf>::new());
    let files: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'File'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(files, 0);

    // A hostile file name is a name to show, never a path: the bytes go where colloquy says.
    let (s, b) = upload(client, &token, &[("file", Some("../../etc/passwd"), b"root:x:0:0")]).await;
    assert_eq!(s, 201, "{b}");
    let file = id_of(&b, "file_id");
    let stored = stored_files(&root);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].starts_with(root.join("files")) && stored[0].ends_with(file.to_string()), "{stored:?}");
    let uploaded = support::only_event(app.pool(), file, "FileUploaded").await;
    assert_eq!(uploaded["file_name"], "../../etc/passwd", "{uploaded}");
    assert_eq!(uploaded["storage_key"].as_str(), stored[0].strip_prefix(&root).unwrap().to_str());

    // Knowledge requests.
    let cases = [
        (json!({"title": "T"}), 422, "invalid_request"),
        (json!({"title": "T", "text": "x", "file_id": Uuid::new_v4()}), 422, "invalid_request"),
        (json!({"title": "T", "file_id": Uuid::new_v4()}), 422, "source_file_not_found"),
        (json!({"title": "", "text": "x"}), 422, "invalid_title"),
        (json!({"title": "T", "text": "   "}), 422, "invalid_text"),
        (json!({"title": "T", "text": "x", "tags": [""]}), 422, "invalid_tag"),
        (json!({"title": "T", "text": "x", "owner": "me"}), 422, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let (s, b) = client.post_json("/knowledge", Some(&token), body.clone()).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{body}: {b}");
    }
    let (s, created) = client
        .post_json(
            "/knowledge",
            Some(&token),
            json!({"title": "Notes", "text": "Bees make honey.", "category": "Garden"}),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let document = id_of(&created, "document_id");
    let path = format!("/knowledge/{document}");
    let (s, b) = send(client, reqwest::Method::PATCH, &path, &token, Some(json!({}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("empty_update")), "{b}");
    let (s, b) = send(client, reqwest::Method::PATCH, &path, &token, Some(json!({"category": null}))).await;
    assert_eq!(s, 200, "{b}");
    let (_, other) = client.user().await;
    assert_eq!(client.get(&path, &other).await.0, 404);
    let (s, b) = send(client, reqwest::Method::DELETE, &path, &other, None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");

    // Searches.
    for (query, status, code) in [
        ("q=", 400, "invalid_search"),
        ("q=bees&k=0", 400, "invalid_search"),
        ("q=bees&k=51", 400, "invalid_search"),
        ("q=bees&mode=psychic", 400, "invalid_query"),
    ] {
        let (s, b) = client.get(&format!("/knowledge/search?{query}"), &token).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{query}: {b}");
    }
    // A conversation update that changes nothing.
    let (conversation, _) = client.conversation(&token, "Chat").await;
    let (s, b) =
        send(client, reqwest::Method::PATCH, &format!("/conversations/{conversation}"), &token, Some(json!({}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("empty_update")), "{b}");
    let (s, b) = send(client, reqwest::Method::PUT, "/files", &token, None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (405, Some("method_not_allowed")), "{b}");

    app.stop_processes().await;
    support::cleanup(app.settings.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_search_says_when_the_embedder_is_down_and_text_search_still_answers() {
    let mut settings = isolated_settings();
    // An OpenAI-compatible embedder on a port nothing listens on.
    let dead = ProviderSettings {
        kind: ProviderKind::Openai,
        base_url: "http://127.0.0.1:9/v1".into(),
        api_key: Some("k".into()),
        ..ProviderSettings::default()
    };
    settings.assistant.providers.insert("dead".into(), dead);
    settings.knowledge.embedder.provider = "dead".into();
    settings.knowledge.embedder.model = "text-embedding-3-small".into();
    settings.knowledge.embedder.dimension = 1536;
    let mut app = TestApp::spawn_with(settings, API_ONLY).await;
    let (_, token) = app.client.user().await;
    let (s, b) = app.client.get("/knowledge/search?q=bees&mode=vector", &token).await;
    assert_eq!((s, b["error"]["code"].as_str()), (503, Some("embedder_unavailable")), "{b}");
    let (s, b) = app.client.get("/knowledge/search?q=bees&mode=text", &token).await;
    assert_eq!((s, b["mode"].as_str(), b["items"].clone()), (200, Some("text"), json!([])), "{b}");
    app.stop_processes().await;
    support::cleanup(app.settings.clone()).await;
}
