//! The whole path of an event over HTTP: command → event store → Kafka → read models → query.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::{consume_until, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_login_converse_end_to_end() {
    let app = TestApp::spawn().await;
    let (user, token) = app.user().await;
    let (conv, v1) = app.conversation(&token, "Trip to Lisbon").await;
    assert_eq!(v1, 1);
    let mut version = v1;
    for text in ["first", "second", "third"] {
        version = app.message(&token, conv, text).await;
    }
    assert_eq!(version, 4);

    // In the event store, with our columns filled in and the actor recorded.
    let rows: Vec<(i64, String, Value)> = sqlx::query_as(
        "SELECT sequence, event_type, metadata::jsonb FROM events WHERE aggregate_type = 'Conversation' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(conv.to_string())
    .fetch_all(app.pool())
    .await
    .unwrap();
    let types: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(types, ["ConversationStarted", "UserMessagePosted", "UserMessagePosted", "UserMessagePosted"]);
    assert_eq!(rows[0].2["actor"], format!("user:{user}"));
    // No secret in any payload.
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE payload::text ILIKE '%correct horse%' OR payload::text ILIKE '%argon2%'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(leaked, 0);

    // On Kafka, as CloudEvents in order, keyed by the aggregate id, with routing headers.
    let topic = colloquy_infra::kafka::Topics::new(&app.settings.kafka).events("Conversation");
    let key = conv.to_string();
    let records = consume_until(&app.settings, &topic, |r| {
        r.iter().filter(|(k, _, _)| k.as_deref() == Some(key.as_bytes())).count() >= 4
    })
    .await;
    let mine: Vec<_> = records.iter().filter(|(k, _, _)| k.as_deref() == Some(key.as_bytes())).collect();
    for (i, (_, payload, headers)) in mine.iter().enumerate() {
        let ce: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["sequence"], i as i64 + 1, "per-aggregate order");
        assert_eq!(ce["subject"], key);
        assert_eq!(ce["source"], format!("colloquy/conversation/{conv}"));
        assert_eq!(ce["datacontenttype"], "application/json");
        assert_eq!(ce["actor"], format!("user:{user}"));
        assert!(ce["correlationid"].is_string());
        let expected = if i == 0 {
            "colloquy.conversation.ConversationStarted.v1"
        } else {
            "colloquy.conversation.UserMessagePosted.v1"
        };
        assert_eq!(ce["type"], expected);
        support::assert_data_matches_schema(&ce);
        let header =
            |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8(v.clone()).unwrap());
        assert_eq!(header("ce_id").as_deref(), ce["id"].as_str());
        assert_eq!(header("ce_type").as_deref(), Some(expected));
        assert_eq!(header("sequence"), Some((i + 1).to_string()));
    }

    // In the read models, visible to queries that name the version they need.
    let (s, msgs) = app.get(&format!("/conversations/{conv}/messages?min_version={version}"), &token).await;
    assert_eq!(s, 200, "{msgs}");
    let contents: Vec<&str> =
        msgs["items"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["first", "second", "third"]);
    let (s, list) = app.get(&format!("/conversations?min_version={version}&conversation_id={conv}"), &token).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["items"][0]["message_count"], 3);
    assert_eq!(list["items"][0]["title"], "Trip to Lisbon");
    let (s, detail) = app.get(&format!("/conversations/{conv}?min_version={version}"), &token).await;
    assert_eq!((s, detail["version"].as_i64()), (200, Some(4)));
    let (s, me) = app.get("/users/me?min_version=1", &token).await;
    assert_eq!(s, 200);
    assert_eq!(me["user_id"], user.to_string());
    assert!(me.get("password_hash").is_none());

    // The audit trail comes from the event store.
    let (s, audit) = app.get(&format!("/conversations/{conv}/events"), &token).await;
    assert_eq!(s, 200);
    assert_eq!(audit["items"].as_array().unwrap().len(), 4);
    assert_eq!(audit["items"][1]["data"]["content"], "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conversation_lifecycle_through_the_read_models() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "Drafts").await;
    let (s, b, _) = app
        .send(reqwest::Method::PATCH, &format!("/conversations/{conv}"), Some(&token), Some(json!({"title": "Plans"})))
        .await;
    assert_eq!((s, b["version"].as_i64()), (200, Some(2)), "{b}");
    let (s, b) = app.post_json(&format!("/conversations/{conv}/archive"), Some(&token), json!(null)).await;
    assert_eq!(s, 200, "{b}");
    // Archived: no new messages, with a clear error, and nothing recorded.
    let before = app.event_count().await;
    let (s, b) =
        app.post_json(&format!("/conversations/{conv}/messages"), Some(&token), json!({"content": "hi"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("conversation_archived")));
    assert_eq!(app.event_count().await, before);
    let (_, active) = app.get(&format!("/conversations?min_version=3&conversation_id={conv}"), &token).await;
    assert!(active["items"].as_array().unwrap().is_empty());
    let (_, archived) = app.get("/conversations?archived=true", &token).await;
    assert_eq!(archived["items"][0]["title"], "Plans");
    let (s, _) = app.post_json(&format!("/conversations/{conv}/unarchive"), Some(&token), json!(null)).await;
    assert_eq!(s, 200);
    let (s, b, _) = app.send(reqwest::Method::DELETE, &format!("/conversations/{conv}"), Some(&token), None).await;
    assert_eq!((s, b["version"].as_i64()), (200, Some(5)));
    let (s, b) =
        app.post_json(&format!("/conversations/{conv}/messages"), Some(&token), json!({"content": "hi"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("conversation_deleted")));
    let (s, _) = app.get(&format!("/conversations/{conv}?min_version=5"), &token).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyset_pagination_walks_every_conversation_once() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let mut ids = Vec::new();
    let mut last = (uuid::Uuid::nil(), 0);
    for i in 0..7 {
        last = app.conversation(&token, &format!("c{i}")).await;
        ids.push(last.0);
    }
    for id in &ids {
        let (s, _) = app.get(&format!("/conversations/{id}?min_version=1"), &token).await;
        assert_eq!(s, 200);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut first = true;
    loop {
        let mut path = "/conversations?limit=3".to_string();
        if first {
            path.push_str(&format!("&min_version=1&conversation_id={}", last.0));
            first = false;
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, page) = app.get(&path, &token).await;
        assert_eq!(s, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["conversation_id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    // Every conversation of the user, exactly once across the pages.
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    sorted_seen.dedup();
    assert_eq!(sorted_seen.len(), 7);
    assert_eq!(seen.len(), 7);
    let (s, b) = app.get("/conversations?cursor=garbage", &token).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_cursor")));
}

/// Polls `path` until `done` holds for its body.
async fn read_until(app: &TestApp, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    support::eventually(path, || async {
        let (s, body) = app.get(path, token).await;
        assert_eq!(s, 200, "{body}");
        done(&body).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_caches_serve_reads_and_follow_changes() {
    let app = TestApp::spawn().await;
    let (user, token) = app.user().await;
    let (conv, v) = app.conversation(&token, "Cached").await;
    app.get(&format!("/conversations/{conv}?min_version={v}"), &token).await;
    assert_eq!(app.get("/users/me?min_version=1", &token).await.0, 200);
    // Plain reads fill the caches...
    let me = app.get("/users/me", &token).await.1;
    let list = app.get("/conversations", &token).await.1;
    assert_eq!(list["items"][0]["title"], "Cached");
    let mut redis = app.deps.redis.as_ref().unwrap().conn.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}cache:{{{user}}}:*", app.settings.redis.key_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.ends_with(":profile")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains(":conversations:active:")), "{keys:?}");
    // ...and are answered from them.
    assert_eq!(app.get("/users/me", &token).await.1, me);

    // A change reaches plain (cached) reads without any min_version.
    let (s, _, _) =
        app.send(reqwest::Method::PATCH, "/users/me", Some(&token), Some(json!({"full_name": "Renamed"}))).await;
    assert_eq!(s, 200);
    let me = read_until(&app, "/users/me", &token, |b| b["full_name"] == "Renamed").await;
    assert_eq!(me["full_name"], "Renamed", "the cached profile was never invalidated");
    app.message(&token, conv, "bump").await;
    let list = read_until(&app, "/conversations", &token, |b| b["items"][0]["message_count"] == 1).await;
    assert_eq!(list["items"][0]["message_count"], 1, "the cached first page was never invalidated");
}
