//! Concurrent writers: optimistic concurrency on one conversation, one winner per e-mail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use colloquy::runtime::Processes;
use serde_json::json;
use support::TestApp;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_posts_to_one_conversation() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "Busy").await;
    let posts = (0..50).map(|i| {
        let (app, token) = (&app, token.clone());
        async move {
            app.post_json(&format!("/conversations/{conv}/messages"), Some(&token), json!({"content": format!("m{i}")}))
                .await
        }
    });
    let results = futures::future::join_all(posts).await;
    let acknowledged: Vec<&serde_json::Value> = results.iter().filter(|(s, _)| *s == 201).map(|(_, b)| b).collect();
    for (s, b) in &results {
        assert!(*s == 201 || (*s == 409 && b["error"]["code"] == "concurrent_modification"), "{s} {b}");
    }
    // One API instance queues writers to one aggregate, so none exhausts its retries.
    assert_eq!(acknowledged.len(), 50);

    // Versions handed out are unique, and the log is gap-free.
    let versions: HashSet<i64> = acknowledged.iter().map(|b| b["version"].as_i64().unwrap()).collect();
    assert_eq!(versions.len(), acknowledged.len());
    let sequences = support::sequences(app.pool(), &conv.to_string()).await;
    assert_eq!(sequences, (1..=acknowledged.len() as i64 + 1).collect::<Vec<_>>());

    // Every acknowledged message is in the read model exactly once.
    let max = *versions.iter().max().unwrap();
    let (s, page) = app.get(&format!("/conversations/{conv}/messages?min_version={max}&limit=100"), &token).await;
    assert_eq!(s, 200);
    let ids: Vec<Uuid> =
        page["items"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().parse().unwrap()).collect();
    let expected: HashSet<Uuid> =
        acknowledged.iter().map(|b| b["message_id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ids.len(), expected.len());
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), expected);
    let (_, detail) = app.get(&format!("/conversations/{conv}?min_version={max}"), &token).await;
    assert_eq!(detail["message_count"].as_u64(), Some(expected.len() as u64));
}

/// Two API instances (as behind a load balancer) each queue their own writers, so writers
/// on different instances really race to the event store's primary key: optimistic
/// concurrency decides, losers decide again on fresh state, and nothing acknowledged is lost
/// or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_posting_to_one_conversation_race_through_optimistic_concurrency() {
    let app = TestApp::spawn().await;
    let other = TestApp::attach(app.settings.clone(), Processes { api: true, ..Default::default() }).await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "Shared").await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(40));
    let posts = (0..40).map(|i| {
        let (client, token, barrier) =
            (if i % 2 == 0 { &app.client } else { &other.client }, token.clone(), barrier.clone());
        async move {
            barrier.wait().await;
            client
                .post_json(
                    &format!("/conversations/{conv}/messages"),
                    Some(&token),
                    json!({"content": format!("m{i}")}),
                )
                .await
        }
    });
    let results = futures::future::join_all(posts).await;
    for (s, b) in &results {
        assert!(*s == 201 || (*s == 409 && b["error"]["code"] == "concurrent_modification"), "{s} {b}");
    }
    let acknowledged: Vec<&serde_json::Value> = results.iter().filter(|(s, _)| *s == 201).map(|(_, b)| b).collect();
    assert!(!acknowledged.is_empty());
    // The instances' writers did meet at the primary key (each instance alone never races).
    let retries = |t: &TestApp| t.deps.metrics.command_retries.with_label_values(&["Conversation"]).get();
    assert!(retries(&app) + retries(&other) > 0, "no append ever lost a race: the instances never competed");

    let versions: HashSet<i64> = acknowledged.iter().map(|b| b["version"].as_i64().unwrap()).collect();
    assert_eq!(versions.len(), acknowledged.len(), "every acknowledged command has its own version");
    let sequences = support::sequences(app.pool(), &conv.to_string()).await;
    assert_eq!(sequences, (1..=acknowledged.len() as i64 + 1).collect::<Vec<_>>(), "gap-free, nothing extra");
    let max = *versions.iter().max().unwrap();
    let (s, page) = app.get(&format!("/conversations/{conv}/messages?min_version={max}&limit=100"), &token).await;
    assert_eq!(s, 200);
    let ids: HashSet<Uuid> =
        page["items"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().parse().unwrap()).collect();
    let expected: HashSet<Uuid> =
        acknowledged.iter().map(|b| b["message_id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, expected, "exactly the acknowledged messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_with_one_email_have_one_winner() {
    let app = TestApp::spawn().await;
    for round in 0..3 {
        let email = format!("race{round}-{}@example.com", Uuid::new_v4().simple());
        let attempts = (0..6).map(|i| {
            let app = &app;
            let email = email.clone();
            async move {
                app.post_json(
                    "/auth/register",
                    None,
                    json!({"email": email, "full_name": format!("Racer {i}"), "password": "a good password"}),
                )
                .await
            }
        });
        let results = futures::future::join_all(attempts).await;
        let winners = results.iter().filter(|(s, _)| *s == 201).count();
        assert_eq!(winners, 1, "{results:?}");
        for (s, b) in results.iter().filter(|(s, _)| *s != 201) {
            assert_eq!((*s, b["error"]["code"].as_str()), (409, Some("email_taken")));
        }
        // One UserRegistered for that address, and the winner can log in.
        let registered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type = 'UserRegistered' AND payload::text LIKE $1",
        )
        .bind(format!("%{email}%"))
        .fetch_one(app.pool())
        .await
        .unwrap();
        assert_eq!(registered, 1);
        let (s, _) = app
            .post_json("/auth/login", None, json!({"email": email.to_uppercase(), "password": "a good password"}))
            .await;
        assert_eq!(s, 200);
    }
}
