//! Sharing: a link shows the conversation as it was when shared (later messages and a later
//! title are not shown), works without logging in, reveals nothing about the owner, and dies
//! with its revocation and with the conversation's deletion; a wrong token learns nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use colloquy_providers::testing::{FakeProvider, Script};
use serde_json::{json, Value};
use support::{eventually, isolated_settings, ApiClient};
use uuid::Uuid;

const EVERYTHING: Processes = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: false };

/// The shared conversation behind `link`, read without logging in.
async fn open(client: &ApiClient, link: &str) -> (u16, Value) {
    let (s, b, headers) = client.send(reqwest::Method::GET, &format!("/shared/{link}"), None, None).await;
    if s == 200 {
        assert_eq!(headers["cache-control"], "no-store");
    }
    (s, b)
}

async fn share(client: &ApiClient, token: &str, conversation: Uuid) -> (Uuid, String) {
    let (s, b) = client.post_json(&format!("/conversations/{conversation}/share"), Some(token), json!({})).await;
    assert_eq!(s, 201, "{b}");
    (b["share_id"].as_str().unwrap().parse().unwrap(), b["token"].as_str().unwrap().to_string())
}

async fn shown(client: &ApiClient, link: &str) -> Value {
    eventually("the link works", || async {
        let (s, b) = open(client, link).await;
        (s == 200).then_some(b)
    })
    .await
}

async fn gone(client: &ApiClient, link: &str) {
    eventually("the link is dead", || async {
        let (s, b) = open(client, link).await;
        (s == 404).then(|| assert_eq!(b["error"]["code"], "not_found", "{b}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_shows_the_pinned_version_to_anyone_and_dies_with_revoke_and_deletion() {
    let fake = FakeProvider::start().await;
    fake.set_default(Script::reply(&["Sure thing."]));
    let mut app = support::TestApp::spawn_with(support::with_fake_model(isolated_settings(), &fake), EVERYTHING).await;
    let client = &app.client;
    let (owner, token) = client.user().await;
    let (stranger_id, stranger) = client.user().await;
    let (conversation, _) = client.conversation(&token, "Lisbon trip").await;
    client.exchange(&token, conversation, "When to go?").await;
    client.exchange(&token, conversation, "What to pack?").await;

    let (share_id, link) = share(client, &token, conversation).await;
    assert!(link.starts_with("cshare_") && link.len() > 60, "{link}");
    let seen = shown(client, &link).await;
    assert_eq!(seen["title"], "Lisbon trip");
    let texts: Vec<(&str, &str)> = seen["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        texts,
        [
            ("user", "When to go?"),
            ("assistant", "Sure thing."),
            ("user", "What to pack?"),
            ("assistant", "Sure thing.")
        ]
    );
    // Nothing about the owner, nor ids to act on.
    let body = seen.to_string();
    for secret in [owner.to_string(), conversation.to_string(), "@example".to_string()] {
        assert!(!body.contains(&secret), "{secret} in {body}");
    }

    // Later messages and a later title are not shown.
    client.exchange(&token, conversation, "Where to eat?").await;
    let (s, b, _) = client
        .send(
            reqwest::Method::PATCH,
            &format!("/conversations/{conversation}"),
            Some(&token),
            Some(json!({"title": "Porto"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let later = shown(client, &link).await;
    assert_eq!((later["title"].as_str(), later["messages"].as_array().map(Vec::len)), (Some("Lisbon trip"), Some(4)));
    assert_eq!(later["version"], seen["version"]);

    // A wrong token learns nothing: the same 404 as a revoked link.
    for wrong in ["nope".to_string(), format!("cshare_{}", "0".repeat(64)), link[..link.len() - 1].to_string()] {
        let (s, b) = open(client, &wrong).await;
        assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    }
    // Only the owner lists, shares and revokes.
    for (path, method) in [
        (format!("/conversations/{conversation}/shares"), reqwest::Method::GET),
        (format!("/conversations/{conversation}/share"), reqwest::Method::POST),
        (format!("/conversations/{conversation}/shares/{share_id}"), reqwest::Method::DELETE),
    ] {
        let (s, b, _) = client.send(method, &path, Some(&stranger), None).await;
        assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{path}: {b}");
    }
    assert_ne!(stranger_id, owner);
    let (s, list) = client.get(&format!("/conversations/{conversation}/shares"), &token).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["share_id"], share_id.to_string());
    assert!(list["items"][0]["revoked_at"].is_null());
    assert!(!list.to_string().contains(&link), "the token is never shown again");

    // Revoked: dead. A second revoke finds nothing to revoke.
    let path = format!("/conversations/{conversation}/shares/{share_id}");
    let (s, b, _) = client.send(reqwest::Method::DELETE, &path, Some(&token), None).await;
    assert_eq!(s, 200, "{b}");
    gone(client, &link).await;
    let (s, b, _) = client.send(reqwest::Method::DELETE, &path, Some(&token), None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");

    // Deleting the conversation kills its other links.
    let (_, second) = share(client, &token, conversation).await;
    shown(client, &second).await;
    let (s, b, _) =
        client.send(reqwest::Method::DELETE, &format!("/conversations/{conversation}"), Some(&token), None).await;
    assert_eq!(s, 200, "{b}");
    gone(client, &second).await;
    app.stop_processes().await;
}
