//! The read side under a stranger's and a client's abuse: ownership is checked before any
//! wait (a stranger's `min_version` gets the same immediate 404 as a random id), the owner's
//! read-your-writes still waits for a conversation the read model does not have yet, the
//! audit trail is paged with a bounded page size, and forged paging input is a 400.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use colloquy::runtime::Processes;
use colloquy_infra::event_store;
use colloquy_infra::testing::insert_event;
use colloquy_projections::conversations::ConversationsProjection;
use colloquy_projections::messages::MessagesProjection;
use colloquy_projections::projection::apply_all_in_order;
use colloquy_projections::Projection;
use serde_json::json;
use support::{eventually, isolated_settings, TestApp};
use uuid::Uuid;

/// The longest a `min_version` may wait in these tests: far above the bound the answers
/// are raced against, so a request that waits for the version cannot pass.
const WAIT_MS: u64 = 60_000;

/// A stranger's answer must come well before the wait bound: racing it against this
/// timeout tells a request that looked at ownership first from one that waited.
const WELL_BEFORE_THE_WAIT: Duration = Duration::from_secs(20);

/// The API alone: nothing reaches the read models until [`project_now`] applies it, so each
/// test decides what the read model has (and needs no broker).
fn api_only() -> Processes {
    Processes { api: true, relay: false, projectors: false, assistant: false, ingest: false }
}

/// Applies the conversation's stored events to its read models with the projector's own
/// exactly-once routine, as the projector would on receiving them.
async fn project_now(app: &TestApp, conversation: Uuid) {
    let events =
        event_store::read_aggregate(app.pool(), "Conversation", &conversation.to_string(), 0, None).await.unwrap();
    let projections: [&dyn Projection; 2] = [&ConversationsProjection, &MessagesProjection];
    for projection in projections {
        let mut tx = app.pool().begin().await.unwrap();
        apply_all_in_order(&mut tx, projection, projection.name(), projection.table(), &events)
            .await
            .unwrap_or_else(|f| panic!("{}: {}", projection.name(), f.error));
        tx.commit().await.unwrap();
    }
}

fn patient_settings() -> colloquy_infra::Settings {
    let mut settings = isolated_settings();
    settings.http.min_version_wait_ms = WAIT_MS;
    settings
}

/// Every conversation route a stranger could ask a version of, for conversation `id`.
fn versioned_reads(id: Uuid) -> Vec<String> {
    vec![
        format!("/conversations/{id}?min_version=999"),
        format!("/conversations/{id}/messages?min_version=999"),
        format!("/conversations?conversation_id={id}&min_version=999"),
        format!("/conversations/{id}/events"),
    ]
}

async fn assert_fast_404(app: &TestApp, path: &str, token: &str) {
    let answer = tokio::time::timeout(WELL_BEFORE_THE_WAIT, app.get(path, token)).await;
    let (status, body) = answer.unwrap_or_else(|_| panic!("GET {path} as a stranger waited for min_version"));
    assert_eq!(status, 404, "GET {path}: {body}");
    assert_eq!(body["error"]["code"], "not_found");
}

async fn waiting_gauge(app: &TestApp) -> Option<i64> {
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.ok()?.text().await.ok()?;
    metrics.lines().find_map(|l| l.strip_prefix("colloquy_min_version_waiting ")).and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranger_gets_the_same_immediate_404_for_a_projected_conversation_and_a_random_id() {
    let app = TestApp::spawn_with(patient_settings(), api_only()).await;
    let (_, owner) = app.user().await;
    let (_, stranger) = app.user().await;
    let (conv, version) = app.conversation(&owner, "Private").await;
    project_now(&app, conv).await;
    let (s, _) = app.get(&format!("/conversations/{conv}?min_version={version}"), &owner).await;
    assert_eq!(s, 200, "the read model has the conversation");

    for id in [conv, Uuid::new_v4()] {
        for path in versioned_reads(id) {
            assert_fast_404(&app, &path, &stranger).await;
        }
    }
    assert_eq!(waiting_gauge(&app).await, Some(0), "no stranger's request is still waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owner_still_waits_for_a_conversation_not_projected_yet_and_a_stranger_does_not() {
    let app = TestApp::spawn_with(patient_settings(), api_only()).await;
    let (_, owner) = app.user().await;
    let (_, stranger) = app.user().await;
    let (conv, version) = app.conversation(&owner, "Fresh").await;

    // The read model has never heard of it: the stranger's answer comes from the event store.
    for path in versioned_reads(conv) {
        assert_fast_404(&app, &path, &stranger).await;
    }

    // The owner's read-your-writes request waits for the projection...
    let waiting = tokio::spawn({
        let (http, url, token) =
            (app.http.clone(), app.url(&format!("/conversations/{conv}?min_version={version}")), owner.clone());
        async move {
            let res = http.get(url).bearer_auth(token).send().await.unwrap();
            (res.status().as_u16(), res.json::<serde_json::Value>().await.unwrap())
        }
    });
    eventually("the owner's request to wait", || async { (waiting_gauge(&app).await == Some(1)).then_some(()) }).await;
    // ...and answers once the conversation is projected.
    project_now(&app, conv).await;
    let (status, body) = tokio::time::timeout(WELL_BEFORE_THE_WAIT, waiting).await.expect("projected in time").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation_id"], conv.to_string());
    let (s, messages) = app.get(&format!("/conversations/{conv}/messages?min_version={version}"), &owner).await;
    assert_eq!((s, messages["items"].as_array().map(Vec::len)), (200, Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_audit_trail_is_paged_to_the_end_with_every_event_once() {
    let app = TestApp::spawn_with(isolated_settings(), api_only()).await;
    let (owner_id, owner) = app.user().await;
    let (_, stranger) = app.user().await;
    let (conv, _) = app.conversation(&owner, "Long").await;
    const EVENTS: i64 = 2_500;
    let mut tx = app.pool().begin().await.unwrap();
    for sequence in 2..=EVENTS {
        let payload = json!({"UserMessagePosted": {"message_id": Uuid::new_v4(), "author_id": owner_id, "content": format!("m{sequence}")}});
        insert_event(&mut *tx, "Conversation", conv, sequence, payload).await;
    }
    tx.commit().await.unwrap();

    for (limit, max) in [(None, 100), (Some(1_000), 1_000), (Some(333), 333)] {
        let mut seen = Vec::new();
        let mut after: Option<i64> = None;
        let mut pages = 0;
        loop {
            let mut path = format!("/conversations/{conv}/events?after={}", after.unwrap_or(0));
            if let Some(limit) = limit {
                path.push_str(&format!("&limit={limit}"));
            }
            let (s, page) = app.get(&path, &owner).await;
            assert_eq!(s, 200, "{page}");
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= max, "a page of {} with limit {limit:?}", items.len());
            seen.extend(items.iter().map(|e| e["sequence"].as_i64().unwrap()));
            pages += 1;
            match page["next_after"].as_i64() {
                Some(next) => {
                    assert_eq!(items.len(), max, "only the last page is short");
                    after = Some(next);
                }
                None => break,
            }
            assert!(pages <= EVENTS, "paging does not end");
        }
        assert_eq!(seen, (1..=EVENTS).collect::<Vec<_>>(), "every event exactly once, in order (limit {limit:?})");
        assert_eq!(seen.iter().collect::<BTreeSet<_>>().len() as i64, EVENTS);
    }
    let (_, first) = app.get(&format!("/conversations/{conv}/events?limit=1"), &owner).await;
    assert_eq!(first["items"][0]["event_type"], "ConversationStarted");
    assert_eq!(first["next_after"], 1);

    // Past the maximum, and nonsense: 400, whoever asks.
    for bad in ["limit=1001", "limit=0", "limit=-5", "after=-1"] {
        let (s, body) = app.get(&format!("/conversations/{conv}/events?{bad}"), &owner).await;
        assert_eq!(s, 400, "{bad}: {body}");
        let code = if bad.starts_with("after") { "invalid_cursor" } else { "invalid_limit" };
        assert_eq!(body["error"]["code"], code, "{bad}");
    }
    let (s, _) = app.get(&format!("/conversations/{conv}/events?after=0&limit=1000"), &stranger).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_cursor_out_of_the_timestamp_range_is_a_400() {
    let app = TestApp::spawn_with(isolated_settings(), api_only()).await;
    let (_, token) = app.user().await;
    let id = Uuid::new_v4().simple();
    // Each decodes (a number, an id) but lies outside what a row's time can be.
    for micros in ["-8000000000000000000", "-62135596800000001", "253402300800000000", "9223372036854775807"] {
        let (s, body) = app.get(&format!("/conversations?cursor={micros}_{id}"), &token).await;
        assert_eq!(s, 400, "{micros}: {body}");
        assert_eq!(body["error"]["code"], "invalid_cursor");
    }
    // The earliest and latest accepted instants are read, not refused.
    for micros in ["-62135596800000000", "253402300799999999"] {
        let (s, body) = app.get(&format!("/conversations?cursor={micros}_{id}"), &token).await;
        assert_eq!(s, 200, "{micros}: {body}");
    }
}
