//! Lost and forged Kafka data, end to end on the broker: a projector refuses a record that
//! is not the stored event and applies the stored one; an event whose record never
//! reached Kafka heals through reconciliation; `colloquy verify` reports both kinds of
//! damage (exit code 1) and passes on a healthy stream. No relay runs here: the test
//! writes the topics itself, so it decides exactly what Kafka holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use colloquy::runtime::Processes;
use colloquy_infra::event_store::{self, StoredEvent};
use colloquy_infra::kafka::{producer_config, Topics};
use colloquy_infra::Settings;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sqlx::PgPool;
use support::{consume_until, eventually, isolated_settings, TestApp};
use uuid::Uuid;

/// Writes `events` to their topics as the relay would (key = aggregate id).
async fn produce(settings: &Settings, events: &[StoredEvent]) {
    let producer: FutureProducer = producer_config(&settings.kafka).create().unwrap();
    let topics = Topics::new(&settings.kafka);
    for e in events {
        let payload = colloquy_infra::cloudevents::encode(e).unwrap();
        let topic = topics.events(&e.aggregate_type);
        producer
            .send(FutureRecord::to(&topic).key(&e.aggregate_id).payload(&payload), Duration::from_secs(10))
            .await
            .unwrap();
    }
}

async fn stored(pool: &PgPool, aggregate_type: &str, id: impl ToString) -> Vec<StoredEvent> {
    event_store::read_aggregate(pool, aggregate_type, &id.to_string(), 0, None).await.unwrap()
}

/// `event` with another id and message text: a forged record.
fn forged(event: &StoredEvent, sequence: i64, content: &str) -> StoredEvent {
    let mut fake = event.clone();
    fake.event_id = Uuid::new_v4();
    fake.sequence = sequence;
    fake.data["content"] = json!(content);
    fake
}

async fn messages(pool: &PgPool, conversation: Uuid) -> (Vec<String>, Option<i64>) {
    let contents = sqlx::query_scalar("SELECT content FROM rm_messages WHERE conversation_id = $1 ORDER BY sequence")
        .bind(conversation)
        .fetch_all(pool)
        .await
        .unwrap();
    let count = sqlx::query_scalar("SELECT message_count FROM rm_conversations WHERE conversation_id = $1")
        .bind(conversation)
        .fetch_optional(pool)
        .await
        .unwrap();
    (contents, count)
}

fn header(headers: &[(String, Vec<u8>)], name: &str) -> String {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8(v.clone()).unwrap()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_record_is_refused_and_the_stored_event_applied() {
    let mut settings = isolated_settings();
    settings.projection.reconcile_interval_ms = 0;
    let app = TestApp::spawn_with(settings, Processes { api: true, projectors: true, ..Default::default() }).await;
    let (_, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "Forgery").await;
    app.message(&token, conversation, "real").await;
    let events = stored(app.pool(), "Conversation", conversation).await;
    assert_eq!(events.len(), 2);

    // The real start; then, instead of the real message, one with its sequence but another
    // id and text; then one with the next sequence, which the store does not have.
    produce(&app.settings, &[events[0].clone(), forged(&events[1], 2, "forged"), forged(&events[1], 3, "forged next")])
        .await;

    // Every projection of conversations refuses both forged records.
    let mut consumers: Vec<&str> = colloquy_projections::all(&Default::default())
        .iter()
        .filter(|p| p.aggregate_types().contains(&"Conversation"))
        .map(|p| p.name())
        .collect();
    consumers.sort();
    assert!(consumers.len() >= 2, "{consumers:?}");
    let dlq = Topics::new(&app.settings.kafka).dlq();
    let dead = consume_until(&app.settings, &dlq, |r| r.len() >= 2 * consumers.len()).await;
    let mut reasons: Vec<(String, String)> =
        dead.iter().map(|(_, _, h)| (header(h, "dlq_consumer"), header(h, "dlq_error"))).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2 * consumers.len(), "{reasons:?}");
    for (consumer, pair) in consumers.iter().zip(reasons.chunks(2)) {
        assert!(pair.iter().all(|(c, _)| c == consumer), "{reasons:?}");
        assert!(pair.iter().any(|(_, e)| e.contains("event id differs from the event store")), "{pair:?}");
        assert!(pair.iter().any(|(_, e)| e.contains("is not in the event store")), "{pair:?}");
    }
    // The read models hold the stored message, counted once, and nothing forged.
    let seen = eventually("the stored message in the read models", || async {
        let seen = messages(app.pool(), conversation).await;
        (seen.1 == Some(1) && !seen.0.is_empty()).then_some(seen)
    })
    .await;
    assert_eq!(seen, (vec!["real".to_string()], Some(1)));
    let version: i64 = sqlx::query_scalar("SELECT version FROM rm_conversations WHERE conversation_id = $1")
        .bind(conversation)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(version, 2);
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("colloquy_projection_events_total{outcome=\"refused\",projection=\"messages\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_whose_record_never_reached_kafka_heals_through_reconciliation() {
    let mut settings = isolated_settings();
    settings.projection.reconcile_interval_ms = 200;
    settings.projection.reconcile_grace_ms = 1_000;
    let app = TestApp::spawn_with(settings, Processes { api: true, projectors: true, ..Default::default() }).await;
    let (user, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "Lost").await;
    app.message(&token, conversation, "lost on the way").await;
    let events = stored(app.pool(), "Conversation", conversation).await;
    // Kafka got the user and the conversation's start, but the message's record was lost:
    // no later event of the conversation will ever make a projector fill the gap.
    let mut delivered = stored(app.pool(), "User", user).await;
    delivered.push(events[0].clone());
    produce(&app.settings, &delivered).await;

    let seen = eventually("the lost message to heal", || async {
        let seen = messages(app.pool(), conversation).await;
        (seen.1 == Some(1) && !seen.0.is_empty()).then_some(seen)
    })
    .await;
    assert_eq!(seen, (vec!["lost on the way".to_string()], Some(1)));
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    let healed = |projection: &str| {
        let prefix = format!("colloquy_projection_events_total{{outcome=\"healed\",projection=\"{projection}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    assert!(healed("messages") >= 1, "{metrics}");
    // The message is readable through the API at the version its command returned.
    let (s, page) = app.get(&format!("/conversations/{conversation}/messages?min_version=2"), &token).await;
    assert_eq!(s, 200, "{page}");
}

/// What `colloquy verify` prints and its exit code.
fn run_verify(settings: &Settings) -> (Value, i32) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .arg("verify")
        .env("COLLOQUY_DATABASE__URL", &settings.database.url)
        .env("COLLOQUY_KAFKA__BROKERS", &settings.kafka.brokers)
        .env("COLLOQUY_KAFKA__TOPIC_PREFIX", &settings.kafka.topic_prefix)
        .env("COLLOQUY_LOG__FILTER", "error")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (report, out.status.code().unwrap_or(-1))
}

/// Makes the relay's checkpoint say every stored event has been published.
async fn published_up_to_now(app: &TestApp) {
    sqlx::query(
        "INSERT INTO relay_checkpoint (name, last_tx_id, last_position)
         SELECT $1, tx_id, position FROM events ORDER BY tx_id DESC, position DESC LIMIT 1
         ON CONFLICT (name) DO UPDATE SET last_tx_id = EXCLUDED.last_tx_id, last_position = EXCLUDED.last_position",
    )
    .bind(&app.settings.relay.name)
    .execute(app.pool())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_reports_missing_and_forged_records_and_passes_on_a_healthy_stream() {
    let app = TestApp::spawn_with(isolated_settings(), Processes { api: true, ..Default::default() }).await;
    colloquy_infra::kafka::ensure_topics(&app.settings.kafka).await.unwrap();
    let (user, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "Audit").await;
    app.message(&token, conversation, "one").await;
    app.message(&token, conversation, "two").await;
    let mut events = stored(app.pool(), "User", user).await;
    events.extend(stored(app.pool(), "Conversation", conversation).await);
    assert_eq!(events.len(), 4);
    // Everything published, one record twice (a relay re-sending after a crash).
    produce(&app.settings, &events).await;
    produce(&app.settings, &events[2..3]).await;
    published_up_to_now(&app).await;

    let (report, code) = run_verify(&app.settings);
    assert_eq!(code, 0, "{report:#}");
    let kafka = &report["kafka"];
    assert_eq!(
        (kafka["records"].as_u64(), kafka["matched"].as_u64(), kafka["duplicates"].as_u64()),
        (Some(5), Some(4), Some(1)),
        "{report:#}"
    );
    assert_eq!((kafka["missing_count"].as_i64(), kafka["forged_count"].as_u64()), (Some(0), Some(0)), "{report:#}");

    // A message whose record never reached Kafka, and a forged record of a stored sequence.
    let last = app.message(&token, conversation, "never published").await;
    published_up_to_now(&app).await;
    let lost = stored(app.pool(), "Conversation", conversation).await.pop().unwrap();
    assert_eq!(lost.sequence, last);
    produce(&app.settings, &[forged(&events[2], 2, "forged")]).await;

    let (report, code) = run_verify(&app.settings);
    assert_eq!(code, 1, "{report:#}");
    let kafka = &report["kafka"];
    assert_eq!((kafka["missing_count"].as_i64(), kafka["forged_count"].as_u64()), (Some(1), Some(1)), "{report:#}");
    assert_eq!(kafka["missing"][0]["event_id"], json!(lost.event_id), "{report:#}");
    assert_eq!(kafka["missing"][0]["sequence"], json!(last));
    let reason = kafka["forged"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("event id differs"), "{reason}");
    assert_eq!(kafka["duplicates"].as_u64(), Some(1), "duplicates are counted, not judged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_is_dead_lettered_once_and_quarantines_only_its_aggregate() {
    let mut settings = isolated_settings();
    settings.projection.reconcile_interval_ms = 0;
    let app = TestApp::spawn_with(settings, Processes { api: true, projectors: true, ..Default::default() }).await;
    // The read model refuses one title (as after a bad migration): renaming to it is poison.
    sqlx::query("ALTER TABLE rm_conversations ADD CONSTRAINT no_cursed_titles CHECK (title <> 'cursed')")
        .execute(app.pool())
        .await
        .unwrap();
    let (_, token) = app.user().await;
    let (a, _) = app.conversation(&token, "Doomed").await;
    let (status, body, _) = app
        .send(reqwest::Method::PATCH, &format!("/conversations/{a}"), Some(&token), Some(json!({"title": "cursed"})))
        .await;
    assert_eq!((status, &body["version"]), (200, &json!(2)), "{body}");
    app.message(&token, a, "after the curse").await;
    let (other, _) = app.conversation(&token, "Fine").await;
    app.message(&token, other, "still flowing").await;
    let (ea, eo) = (stored(app.pool(), "Conversation", a).await, stored(app.pool(), "Conversation", other).await);
    // Delivered with the poison event redelivered once more (a relay re-sending).
    produce(&app.settings, &[ea[0].clone(), ea[1].clone(), ea[2].clone(), ea[1].clone(), eo[0].clone(), eo[1].clone()])
        .await;

    // The projector counts outcomes when the batch commits and dead letters once Kafka has
    // them, a moment later: wait for both.
    eventually("the other conversation's message, a's later events skipped, the poison dead-lettered", || async {
        let skipped =
            app.metric("colloquy_projection_events_total{outcome=\"quarantined\",projection=\"conversations\"}").await;
        let dead = app.metric("colloquy_dlq_messages_total{consumer=\"conversations\"}").await;
        let (_, count) = messages(app.pool(), other).await;
        (skipped >= 2 && dead >= 1 && count == Some(1)).then_some(())
    })
    .await;
    assert_eq!(app.metric("colloquy_dlq_messages_total{consumer=\"conversations\"}").await, 1, "dead-lettered once");
    assert_eq!(app.metric("colloquy_dlq_messages_total{consumer=\"messages\"}").await, 0);
    let dead = consume_until(&app.settings, &Topics::new(&app.settings.kafka).dlq(), |r| !r.is_empty()).await;
    assert!(header(&dead[0].2, "dlq_error").contains("no_cursed_titles"), "{}", header(&dead[0].2, "dlq_error"));
    let listed = colloquy_projections::quarantine::list(app.pool(), None).await.unwrap();
    let listed: Vec<(&str, &str, i64)> =
        listed.iter().map(|q| (q.projection.as_str(), q.aggregate_id.as_str(), q.sequence)).collect();
    assert_eq!(listed, [("conversations", a.to_string().as_str(), 2)], "only a, only for the projection that failed");
    // The messages projection, which has no quarantine, has a's message.
    assert_eq!(messages(app.pool(), a).await, (vec!["after the curse".to_string()], Some(0)));

    // A rebuild reports the aggregate and finishes.
    let report = colloquy_projections::rebuild::rebuild(
        app.pool(),
        &colloquy_projections::conversations::ConversationsProjection,
    )
    .await
    .unwrap();
    assert_eq!(report.quarantined.iter().map(|q| q.aggregate_id.clone()).collect::<Vec<_>>(), [a.to_string()]);

    // The fix, then `colloquy quarantine clear`: the rest of a applies from the store.
    sqlx::query("ALTER TABLE rm_conversations DROP CONSTRAINT no_cursed_titles").execute(app.pool()).await.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(["quarantine", "clear", "conversations", &a.to_string()])
        .env("COLLOQUY_DATABASE__URL", &app.settings.database.url)
        .env("COLLOQUY_REDIS__KEY_PREFIX", &app.settings.redis.key_prefix)
        .env("COLLOQUY_LOG__FILTER", "error")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((printed["applied"].as_u64(), printed["quarantined_again"].is_null()), (Some(2), true), "{printed:#}");
    let row: (String, i64, i64) =
        sqlx::query_as("SELECT title, message_count, version FROM rm_conversations WHERE conversation_id = $1")
            .bind(a)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(row, ("cursed".to_string(), 1, 3));
    assert_eq!(colloquy_projections::quarantine::list(app.pool(), None).await.unwrap(), []);
}
