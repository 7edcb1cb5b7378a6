//! The relay: gap-safe under out-of-order commits, at-least-once across a crash, and a
//! single active instance with takeover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use colloquy_infra::event_store::{self, LogCursor};
use colloquy_infra::kafka::Topics;
use serde_json::json;
use sqlx::Connection;
use support::{consume_until, isolated_settings, TestApp};
use uuid::Uuid;

async fn insert_started(conn: &mut sqlx::PgConnection, id: Uuid) {
    let payload = json!({"ConversationStarted": {"conversation_id": id, "owner_id": Uuid::new_v4(), "title": "t", "kind": "chat", "model": "offline", "system_prompt": null}});
    colloquy_infra::testing::insert_event(conn, "Conversation", id, 1, payload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_committing_out_of_order_are_both_published() {
    let app = TestApp::spawn_with(isolated_settings(), Processes::default()).await;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    // T1 takes its transaction id first but commits last.
    let mut t1 = app.pool().acquire().await.unwrap();
    let mut tx1 = t1.begin().await.unwrap();
    insert_started(&mut tx1, first).await;
    let mut t2 = app.pool().acquire().await.unwrap();
    let mut tx2 = t2.begin().await.unwrap();
    insert_started(&mut tx2, second).await;
    tx2.commit().await.unwrap();

    // While T1 is open, the fence holds T2's event back: reading past it would skip T1's.
    let visible = event_store::read_committed(app.pool(), LogCursor::default(), None, 100).await.unwrap();
    assert!(visible.is_empty(), "nothing is readable while an older transaction is open: {visible:?}");
    tx1.commit().await.unwrap();
    // Other tests' transactions elsewhere in the cluster may hold the fence a moment longer.
    let visible = support::eventually("both events past the fence", || async {
        let visible = event_store::read_committed(app.pool(), LogCursor::default(), None, 100).await.unwrap();
        (visible.len() == 2).then_some(visible)
    })
    .await;
    let ids: Vec<String> = visible.iter().map(|(e, _)| e.aggregate_id.clone()).collect();
    assert_eq!(ids, [first.to_string(), second.to_string()], "both, in transaction order");

    // The relay publishes both.
    let relay = TestApp::attach(app.settings.clone(), Processes { relay: true, ..Default::default() }).await;
    let topic = Topics::new(&app.settings.kafka).events("Conversation");
    let records = consume_until(&app.settings, &topic, |r| r.len() >= 2).await;
    let keys: Vec<String> = records.iter().map(|(k, _, _)| String::from_utf8(k.clone().unwrap()).unwrap()).collect();
    assert!(keys.contains(&first.to_string()) && keys.contains(&second.to_string()), "{keys:?}");
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_crash_before_checkpoint_resends_and_projections_ignore_duplicates() {
    let mut app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "Crash").await;
    let mut version = 0;
    for i in 0..5 {
        version = app.message(&token, conv, &format!("m{i}")).await;
    }
    let (s, _) = app.get(&format!("/conversations/{conv}/messages?min_version={version}"), &token).await;
    assert_eq!(s, 200);
    app.stop_processes().await;

    // A relay that produced everything but died before checkpointing: the checkpoint is
    // where it was before the batch (here: the beginning).
    sqlx::query("UPDATE relay_checkpoint SET last_tx_id = '0'::xid8, last_position = 0")
        .execute(app.pool())
        .await
        .unwrap();
    let settings = app.settings.clone();
    let restarted = TestApp::attach(
        settings.clone(),
        Processes { api: true, relay: true, projectors: true, assistant: false, ingest: false },
    )
    .await;
    let version = restarted.message(&token, conv, "after restart").await;
    let (s, page) =
        restarted.get(&format!("/conversations/{conv}/messages?min_version={version}&limit=100"), &token).await;
    assert_eq!(s, 200);
    let contents: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["m0", "m1", "m2", "m3", "m4", "after restart"], "nothing missing, nothing twice");
    let (_, detail) = restarted.get(&format!("/conversations/{conv}"), &token).await;
    assert_eq!(detail["message_count"], 6);

    // The events really were delivered twice.
    let topic = Topics::new(&settings.kafka).events("Conversation");
    let key = conv.to_string();
    let records = consume_until(&settings, &topic, |r| {
        r.iter().filter(|(k, _, _)| k.as_deref() == Some(key.as_bytes())).count() >= 13
    })
    .await;
    let sequences: Vec<i64> = records
        .iter()
        .filter(|(k, _, _)| k.as_deref() == Some(key.as_bytes()))
        .map(|(_, p, _)| serde_json::from_slice::<serde_json::Value>(p).unwrap()["sequence"].as_i64().unwrap())
        .collect();
    assert!(sequences.iter().filter(|s| **s == 2).count() >= 2, "{sequences:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_relay_takes_over() {
    let app = TestApp::spawn_with(isolated_settings(), Processes::default()).await;
    let mut active = TestApp::attach(app.settings.clone(), Processes { relay: true, ..Default::default() }).await;
    let mut conn = app.pool().acquire().await.unwrap();
    let first = Uuid::new_v4();
    insert_started(&mut conn, first).await;
    let topic = Topics::new(&app.settings.kafka).events("Conversation");
    consume_until(&app.settings, &topic, |r| !r.is_empty()).await;

    let standby = TestApp::attach(app.settings.clone(), Processes { relay: true, ..Default::default() }).await;
    // The standby tries, is refused and keeps trying (a second attempt proves the first was
    // refused), while the first relay stays the only active one.
    support::eventually("the standby to be refused and try again", || async {
        (standby.deps.metrics.relay_lock_attempts.get() >= 2).then_some(())
    })
    .await;
    assert_eq!(standby.deps.metrics.relay_active.get(), 0, "the standby must not publish");
    assert_eq!(active.deps.metrics.relay_active.get(), 1);
    // Exactly one session holds the relay's advisory lock.
    let holders: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(holders, 1);
    active.stop_processes().await;
    let second = Uuid::new_v4();
    insert_started(&mut conn, second).await;
    let records = consume_until(&app.settings, &topic, |r| {
        r.iter().any(|(k, _, _)| k.as_deref() == Some(second.to_string().as_bytes()))
    })
    .await;
    let first_copies = records.iter().filter(|(k, _, _)| k.as_deref() == Some(first.to_string().as_bytes())).count();
    assert_eq!(first_copies, 1, "the standby continued from the checkpoint");
    assert_eq!(standby.deps.metrics.relay_active.get(), 1, "the standby took over");
    drop(standby);
}
