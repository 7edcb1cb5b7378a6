//! Projections: exactly-once effect under duplicate and out-of-order delivery, poison
//! messages to the DLQ, and rebuilds equal to the live read models.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use colloquy_infra::event_store;
use colloquy_infra::kafka::{producer_config, Topics};
use colloquy_projections::projection::{apply_in_order, Applied};
use colloquy_projections::Projection;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use support::{consume_until, isolated_settings, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_and_out_of_order_delivery_leave_the_read_model_correct() {
    // API only: the projector under test is driven by hand.
    let app = TestApp::spawn_with(isolated_settings(), Processes { api: true, ..Default::default() }).await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "Order").await;
    for i in 0..3 {
        app.message(&token, conv, &format!("m{i}")).await;
    }
    let events = event_store::read_aggregate(app.pool(), "Conversation", &conv.to_string(), 0, None).await.unwrap();
    assert_eq!(events.len(), 4);
    let projection = colloquy_projections::conversations::ConversationsProjection;
    let messages = colloquy_projections::messages::MessagesProjection;
    // Delivery order: 3, 1, 3, 2, 4, 4, 1 — late, early, repeated.
    let order = [2usize, 0, 2, 1, 3, 3, 0];
    let mut outcomes = Vec::new();
    for i in order {
        let mut tx = app.pool().begin().await.unwrap();
        for p in [&projection as &dyn Projection, &messages] {
            let outcome = apply_in_order(&mut tx, p, p.name(), p.table(), &events[i]).await.unwrap();
            if p.name() == "conversations" {
                outcomes.push(outcome);
            }
        }
        tx.commit().await.unwrap();
    }
    assert!(
        matches!(outcomes[0], Applied::Applied { filled: 2, .. }),
        "seq 3 first: 1 and 2 read from the store: {:?}",
        outcomes[0]
    );
    assert_eq!(outcomes.iter().filter(|o| **o == Applied::Duplicate).count(), 5);
    let (count, version): (i64, i64) =
        sqlx::query_as("SELECT message_count, version FROM rm_conversations WHERE conversation_id = $1")
            .bind(conv)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((count, version), (3, 4));
    let contents: Vec<String> =
        sqlx::query_scalar("SELECT content FROM rm_messages WHERE conversation_id = $1 ORDER BY sequence")
            .bind(conv)
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(contents, ["m0", "m1", "m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_messages_go_to_the_dlq_and_the_projector_continues() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let topics = Topics::new(&app.settings.kafka);
    let producer: FutureProducer = producer_config(&app.settings.kafka).create().unwrap();
    let bad = [
        b"definitely not json".to_vec(),
        // A well-formed CloudEvent whose data is not a valid ConversationStarted.
        serde_json::to_vec(&json!({
            "specversion": "1.0", "id": uuid::Uuid::new_v4(), "source": "colloquy/conversation/x", "type": "colloquy.conversation.ConversationStarted.v1",
            "time": "2026-01-01T00:00:00Z", "subject": uuid::Uuid::new_v4().to_string(), "datacontenttype": "application/json",
            "data": {"title": 42}, "sequence": 1, "position": 1, "eventversion": "1.0"
        }))
        .unwrap(),
    ];
    for payload in &bad {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&topics.events("Conversation")).key("poison").payload(&payload[..]),
                std::time::Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // Later events are still projected.
    let (conv, version) = app.conversation(&token, "After poison").await;
    let (s, _) = app.get(&format!("/conversations/{conv}?min_version={version}"), &token).await;
    assert_eq!(s, 200);
    // Both poison messages (for each projection reading the topic) are in the DLQ with the error.
    let dlq = consume_until(&app.settings, &topics.dlq(), |r| r.len() >= 4).await;
    for (_, payload, headers) in &dlq {
        assert!(bad.contains(payload));
        let error =
            headers.iter().find(|(k, _)| k == "dlq_error").map(|(_, v)| String::from_utf8(v.clone()).unwrap()).unwrap();
        assert!(!error.is_empty());
        assert!(headers.iter().any(|(k, _)| k == "dlq_offset"));
    }
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("colloquy_dlq_messages_total{consumer=\"messages\"} 2"), "{metrics}");
}

async fn progress(app: &TestApp, projection: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT aggregate_id, last_sequence FROM projection_state WHERE projection = $1 ORDER BY aggregate_id",
    )
    .bind(projection)
    .fetch_all(app.pool())
    .await
    .unwrap()
}

async fn table_json(app: &TestApp, table: &str, order: &str) -> Vec<Value> {
    sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {table} t ORDER BY {order}"))
        .fetch_all(app.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuilt_projection_equals_the_live_one() {
    let app = TestApp::spawn().await;
    let mut last = Vec::new();
    // u0c2 is deleted below: its index in `last`.
    let deleted_index = 2;
    for u in 0..3 {
        let (_, token) = app.user().await;
        let (_, v) = app
            .send(
                reqwest::Method::PATCH,
                "/users/me",
                Some(&token),
                Some(json!({"full_name": format!("Renamed {u}"), "default_model": "offline"})),
            )
            .await
            .1
            .get("version")
            .map(|v| ((), v.as_i64()))
            .unwrap();
        assert_eq!(v, Some(2));
        for c in 0..3 {
            let (conv, _) = app.conversation(&token, &format!("u{u}c{c}")).await;
            let mut version = 1;
            for m in 0..4 {
                version = app.message(&token, conv, &format!("u{u}c{c}m{m}")).await;
            }
            if c == 1 {
                version = app.post_json(&format!("/conversations/{conv}/archive"), Some(&token), json!(null)).await.1
                    ["version"]
                    .as_i64()
                    .unwrap();
            }
            if c == 2 && u == 0 {
                version =
                    app.send(reqwest::Method::DELETE, &format!("/conversations/{conv}"), Some(&token), None).await.1
                        ["version"]
                        .as_i64()
                        .unwrap();
            }
            last.push((token.clone(), conv, version));
        }
        let (s, _) = app.get("/users/me?min_version=2", &token).await;
        assert_eq!(s, 200);
    }
    // Only the one deleted conversation is gone from the read models; every other one is
    // readable at the version its last command returned.
    for (i, (token, conv, version)) in last.iter().enumerate() {
        let (s, b) = app.get(&format!("/conversations/{conv}/messages?min_version={version}"), token).await;
        let expected = if i == deleted_index { 404 } else { 200 };
        assert_eq!(s, expected, "conversation {i}: {b}");
    }
    // Readers keep reading through every rebuild and switch-over: never an empty or
    // partial answer, never an error.
    let (reader_token, reader_conv, reader_version) = last[0].clone();
    let expected: serde_json::Value =
        app.get(&format!("/conversations/{reader_conv}/messages?min_version={reader_version}"), &reader_token).await.1;
    assert_eq!(expected["items"].as_array().unwrap().len(), 4);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let (http, url, stop, expected) = (
            app.http.clone(),
            app.url(&format!("/conversations/{reader_conv}/messages")),
            stop.clone(),
            expected.clone(),
        );
        async move {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                let r = http.get(&url).bearer_auth(&reader_token).send().await.unwrap();
                assert_eq!(r.status(), 200, "read failed during a rebuild");
                assert_eq!(r.json::<serde_json::Value>().await.unwrap(), expected, "read differed during a rebuild");
                reads += 1;
            }
            reads
        }
    });
    let tables = [
        ("users", "rm_users", "user_id"),
        ("conversations", "rm_conversations", "conversation_id"),
        ("messages", "rm_messages", "message_id"),
    ];
    for (name, table, key) in tables {
        let live = table_json(&app, table, key).await;
        assert!(!live.is_empty());
        let state_before = progress(&app, name).await;
        let projection = colloquy_projections::by_name(name, &Default::default()).unwrap();
        // Pages of 7 events: every rebuild crosses page boundaries mid-aggregate.
        let report = colloquy_projections::rebuild::rebuild_paged(app.pool(), projection.as_ref(), 7).await.unwrap();
        assert!(report.events > 0);
        assert_eq!(table_json(&app, table, key).await, live, "{name} rebuilt differs from live");
        let state_after = progress(&app, name).await;
        assert_eq!(state_after, state_before);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
    // The live projectors keep working on the switched tables.
    let (token, conv, _) = &last[0];
    let version = app.message(token, *conv, "after rebuild").await;
    let (s, page) = app.get(&format!("/conversations/{conv}/messages?min_version={version}"), token).await;
    assert_eq!(s, 200);
    assert_eq!(page["items"].as_array().unwrap().last().unwrap()["content"], "after rebuild");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_model_outage_delays_but_loses_nothing() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "Outage").await;
    let v = app.message(&token, conv, "before").await;
    let (s, _) = app.get(&format!("/conversations/{conv}/messages?min_version={v}"), &token).await;
    assert_eq!(s, 200);

    // The messages table disappears: the projector's writes fail with a database error.
    sqlx::query("ALTER TABLE rm_messages RENAME TO rm_messages_away").execute(app.pool()).await.unwrap();
    app.message(&token, conv, "during 1").await;
    let v = app.message(&token, conv, "during 2").await;
    let metrics_url = format!("{}/metrics", app.base);
    support::eventually("the projector to hit the outage", || async {
        let metrics = app.http.get(&metrics_url).send().await.ok()?.text().await.ok()?;
        let retried = metrics
            .lines()
            .find_map(|l| l.strip_prefix("colloquy_projection_retries_total{projection=\"messages\"} "))
            .and_then(|n| n.parse::<u64>().ok())?;
        (retried > 0).then_some(())
    })
    .await;
    sqlx::query("ALTER TABLE rm_messages_away RENAME TO rm_messages").execute(app.pool()).await.unwrap();

    // Once the table is back, everything acknowledged arrives, in order, and nothing was
    // set aside as poison.
    let (s, page) = app.get(&format!("/conversations/{conv}/messages?min_version={v}"), &token).await;
    assert_eq!(s, 200, "{page}");
    let contents: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["before", "during 1", "during 2"]);
    let metrics = app.http.get(&metrics_url).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("colloquy_dlq_messages_total{consumer=\"messages\"} 0"), "{metrics}");
}
