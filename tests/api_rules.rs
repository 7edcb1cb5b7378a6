//! Access control, bad input, idempotency, rate limits and the operational endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::Method;
use serde_json::json;
use support::{isolated_settings, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_conversation_is_404_on_every_route_and_bad_tokens_are_401() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.user().await;
    let (_, stranger) = app.user().await;
    let (conv, _) = app.conversation(&owner, "Private").await;
    app.message(&owner, conv, "secret").await;
    let (s, _) = app.get(&format!("/conversations/{conv}/messages?min_version=2"), &owner).await;
    assert_eq!(s, 200);
    let before = app.event_count().await;

    let routes: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, format!("/conversations/{conv}"), None),
        (Method::PATCH, format!("/conversations/{conv}"), Some(json!({"title": "mine now"}))),
        (Method::POST, format!("/conversations/{conv}/archive"), None),
        (Method::POST, format!("/conversations/{conv}/unarchive"), None),
        (Method::DELETE, format!("/conversations/{conv}"), None),
        (Method::POST, format!("/conversations/{conv}/messages"), Some(json!({"content": "hi"}))),
        (Method::GET, format!("/conversations/{conv}/messages"), None),
        (Method::GET, format!("/conversations/{conv}/events"), None),
    ];
    for (method, path, body) in &routes {
        let (s, b, _) = app.send(method.clone(), path, Some(&stranger), body.clone()).await;
        assert_eq!(s, 404, "{method} {path} as a stranger: {b}");
        assert_eq!(b["error"]["code"], "not_found");
    }
    assert_eq!(app.event_count().await, before, "a stranger changed nothing");
    let (_, list) = app.get("/conversations", &stranger).await;
    assert!(list["items"].as_array().unwrap().is_empty());

    // Missing, malformed, wrongly signed, expired and wrong-audience tokens: 401 everywhere.
    let forged = {
        let mut settings = isolated_settings().auth;
        settings.keys[0].secret = "another-secret-that-is-long-enough-0123456789".into();
        colloquy_api::tokens::Tokens::new(&settings)
            .unwrap()
            .issue(uuid::Uuid::new_v4(), uuid::Uuid::new_v4())
            .unwrap()
            .0
    };
    let wrong_audience = {
        let mut settings = app.settings.auth.clone();
        settings.audience = "someone-else".into();
        colloquy_api::tokens::Tokens::new(&settings)
            .unwrap()
            .issue(uuid::Uuid::new_v4(), uuid::Uuid::new_v4())
            .unwrap()
            .0
    };
    let expired = {
        let key = jsonwebtoken::EncodingKey::from_secret(app.settings.auth.keys[0].secret.as_bytes());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(app.settings.auth.keys[0].kid.clone());
        let claims = json!({"sub": uuid::Uuid::new_v4().to_string(), "iss": app.settings.auth.issuer, "aud": app.settings.auth.audience,
                            "exp": chrono::Utc::now().timestamp() - 3600, "iat": 0, "jti": uuid::Uuid::new_v4().to_string(), "sid": uuid::Uuid::new_v4().to_string(), "typ": "access"});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    for token in [None, Some("garbage"), Some(forged.as_str()), Some(wrong_audience.as_str()), Some(expired.as_str())] {
        for (method, path, body) in routes.iter().chain(
            [(Method::GET, "/conversations".to_string(), None), (Method::GET, "/users/me".to_string(), None)].iter(),
        ) {
            let (s, b, h) = app.send(method.clone(), path, token, body.clone()).await;
            assert_eq!(s, 401, "{method} {path} with {token:?}: {b}");
            assert_eq!(b["error"]["code"], "unauthorized");
            assert_eq!(h.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
        }
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "Inputs").await;
    let before = app.event_count().await;
    let raw = |body: &'static str| {
        app.http
            .post(app.url(&format!("/conversations/{conv}/messages")))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
    };
    let r = raw("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["code"], "invalid_json");
    let cases = [
        (format!("/conversations/{conv}/messages"), json!({}), 422, "invalid_request"),
        (format!("/conversations/{conv}/messages"), json!({"content": "  "}), 422, "invalid_message"),
        (format!("/conversations/{conv}/messages"), json!({"content": "x", "extra": 1}), 422, "invalid_request"),
        ("/conversations".to_string(), json!({"title": ""}), 422, "invalid_title"),
        ("/conversations".to_string(), json!({"title": "x".repeat(201)}), 422, "invalid_title"),
        ("/conversations".to_string(), json!({"title": "ok", "kind": "weird"}), 422, "invalid_request"),
        (format!("/conversations/{}/messages", uuid::Uuid::new_v4()), json!({"content": "hi"}), 404, "not_found"),
        ("/conversations/not-a-uuid/messages".to_string(), json!({"content": "hi"}), 404, "not_found"),
    ];
    for (path, body, status, code) in cases {
        let (s, b) = app.post_json(&path, Some(&token), body.clone()).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{path} {body}");
        assert!(b["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let huge = json!({"content": "x".repeat(app.settings.http.json_limit_bytes + 10)});
    let (s, b) = app.post_json(&format!("/conversations/{conv}/messages"), Some(&token), huge).await;
    assert_eq!((s, b["error"]["code"].as_str()), (413, Some("payload_too_large")));
    let (s, b) = app
        .post_json("/auth/register", None, json!({"email": "nope", "full_name": "A", "password": "long enough pw"}))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_email")));
    let (s, b) = app
        .post_json("/auth/register", None, json!({"email": "short@example.com", "full_name": "A", "password": "short"}))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_password")));
    let (s, _) =
        app.post_json("/auth/login", None, json!({"email": "nobody@example.com", "password": "whatever123"})).await;
    assert_eq!(s, 401);
    assert_eq!(app.event_count().await, before, "rejected requests recorded nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_replays_and_rejects_reuse() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let (conv, _) = app.conversation(&token, "Idem").await;
    let send = |key: &'static str, content: &'static str| {
        app.http
            .post(app.url(&format!("/conversations/{conv}/messages")))
            .bearer_auth(&token)
            .header("Idempotency-Key", key)
            .json(&json!({"content": content}))
            .send()
    };
    let first = send("k-1", "hello").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let before = app.event_count().await;
    let again = send("k-1", "hello").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(again.json::<serde_json::Value>().await.unwrap(), first, "same response");
    assert_eq!(app.event_count().await, before, "no new event");
    let other = send("k-1", "different").await.unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(other.json::<serde_json::Value>().await.unwrap()["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.event_count().await, before);
    // Another key is another request.
    assert_eq!(send("k-2", "hello").await.unwrap().status(), 201);
    assert_eq!(app.event_count().await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_answers_429_with_retry_after() {
    let mut settings = isolated_settings();
    // One request a minute sustained, four more as a burst: the outcome cannot depend on timing.
    settings.rate_limit.per_minute = 1;
    settings.rate_limit.burst = 4;
    let app = TestApp::spawn_with(
        settings,
        colloquy::runtime::Processes { api: true, relay: false, projectors: false, assistant: false, ingest: false },
    )
    .await;
    let (_, token) = app.user().await;
    let checks_before = app.metric("colloquy_session_checks_total").await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (s, _, h) = app.send(Method::GET, "/conversations", Some(&token), None).await;
        if s == 429 {
            let retry: u64 = h.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry));
        }
        statuses.push(s);
    }
    // burst 4 → the first 5 pass, the rest are limited.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
    // Only the admitted requests reached PostgreSQL's session check.
    assert_eq!(app.metric("colloquy_session_checks_total").await - checks_before, 5);
    // Another user has their own budget.
    let (_, other) = app.user().await;
    assert_eq!(app.get("/conversations", &other).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_metrics_and_openapi() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    app.conversation(&token, "m").await;
    let get = |p: &str| app.http.get(format!("{}{p}", app.base)).send();
    let r = get("/health").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let r = get("/health/ready").await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: serde_json::Value = r.json().await.unwrap();
    // The API's request path never uses Kafka, so its readiness does not ask it.
    assert_eq!(ready["checks"], json!({"postgres": "ok", "redis": "ok"}));
    assert_eq!(get("/api/v1/no-such-route").await.unwrap().status(), 404);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    // Requests are counted by the pattern of the route they matched, never by raw path.
    assert!(
        metrics
            .contains("colloquy_http_requests_total{method=\"POST\",route=\"/api/v1/conversations\",status=\"201\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"unmatched\",status=\"404\"} 1"), "{metrics}");
    assert!(!metrics.contains("no-such-route"), "{metrics}");
    for name in [
        "colloquy_http_requests_total",
        "colloquy_http_request_duration_seconds",
        "colloquy_relay_lag_events",
        "colloquy_commands_total",
        "colloquy_consumer_lag_messages{consumer=\"messages\"}",
        "colloquy_consumer_lag_messages{consumer=\"conversations\"}",
        "colloquy_consumer_lag_messages{consumer=\"users\"}",
        "colloquy_dlq_messages_total{consumer=\"messages\"}",
        "colloquy_min_version_waiting",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let doc: serde_json::Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/api/v1/users/me",
        "/api/v1/conversations",
        "/api/v1/conversations/{id}",
        "/api/v1/conversations/{id}/archive",
        "/api/v1/conversations/{id}/unarchive",
        "/api/v1/conversations/{id}/messages",
        "/api/v1/conversations/{id}/events",
        "/health",
        "/health/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
    }
    let r = get("/nope").await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.http.put(app.url("/conversations")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["code"], "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deactivated_account_cannot_log_in_and_its_tokens_stop_working() {
    let app = TestApp::spawn().await;
    let email = format!("d{}@example.com", uuid::Uuid::new_v4().simple());
    let (s, _) = app
        .post_json("/auth/register", None, json!({"email": email, "full_name": "D", "password": "long password"}))
        .await;
    assert_eq!(s, 201);
    let (_, login) = app.post_json("/auth/login", None, json!({"email": email, "password": "long password"})).await;
    let token = login["access_token"].as_str().unwrap().to_string();
    let (s, b, _) = app
        .send(
            Method::PATCH,
            "/users/me",
            Some(&token),
            Some(json!({"system_prompt": "Be brief.", "default_model": "m1"})),
        )
        .await;
    assert_eq!((s, b["version"].as_i64()), (200, Some(2)));
    let (s, me) = app.get("/users/me?min_version=2", &token).await;
    assert_eq!((s, me["system_prompt"].as_str(), me["default_model"].as_str()), (200, Some("Be brief."), Some("m1")));
    // New conversations inherit the user's preferences.
    let (conv, _) = app.conversation(&token, "Prefs").await;
    let (_, c) = app.get(&format!("/conversations/{conv}?min_version=1"), &token).await;
    assert_eq!((c["model"].as_str(), c["system_prompt"].as_str()), (Some("m1"), Some("Be brief.")));

    let (s, b, _) = app.send(Method::DELETE, "/users/me", Some(&token), None).await;
    assert_eq!((s, b["version"].as_i64()), (200, Some(3)));
    let (s, b) = app.get("/conversations", &token).await;
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (s, _) = app.post_json("/auth/login", None, json!({"email": email, "password": "long password"})).await;
    assert_eq!(s, 401);
    let (user_id, _) = (login["user_id"].as_str().unwrap().to_string(), ());
    assert!(colloquy_projections::freshness::wait_for_version(
        app.pool(),
        &["users"],
        &user_id,
        3,
        std::time::Duration::from_secs(15)
    )
    .await
    .unwrap());
    let active: bool = sqlx::query_scalar("SELECT active FROM rm_users WHERE email = $1")
        .bind(&email)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(!active, "the read model shows the deactivation");
    let deactivated: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'UserDeactivated'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(deactivated, 1);
    // The address stays taken.
    let (s, _) = app
        .post_json("/auth/register", None, json!({"email": email, "full_name": "D2", "password": "long password"}))
        .await;
    assert_eq!(s, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_chosen_ids_are_scoped_and_retry_safe() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user().await;
    let (a, _) = app.conversation(&token, "A").await;
    let (b, _) = app.conversation(&token, "B").await;
    let id = uuid::Uuid::new_v4();
    let (s, r) = app
        .post_json(&format!("/conversations/{a}/messages"), Some(&token), json!({"id": id, "content": "in a"}))
        .await;
    assert_eq!((s, r["message_id"].as_str()), (201, Some(id.to_string().as_str())));
    // The same message id in another conversation is another message.
    let (s, r) = app
        .post_json(&format!("/conversations/{b}/messages"), Some(&token), json!({"id": id, "content": "in b"}))
        .await;
    assert_eq!(s, 201);
    let vb = r["version"].as_i64().unwrap();
    // Repeating it in the same conversation is refused and records nothing.
    let before = app.event_count().await;
    let (s, r) = app
        .post_json(&format!("/conversations/{a}/messages"), Some(&token), json!({"id": id, "content": "again"}))
        .await;
    assert_eq!((s, r["error"]["code"].as_str()), (409, Some("duplicate_message")));
    assert_eq!(app.event_count().await, before);
    let (s, page) = app.get(&format!("/conversations/{b}/messages?min_version={vb}"), &token).await;
    assert_eq!((s, page["items"][0]["content"].as_str()), (200, Some("in b")));
    // A client-chosen conversation id makes a retried start detectable.
    let cid = uuid::Uuid::new_v4();
    let (s, _) = app.post_json("/conversations", Some(&token), json!({"id": cid, "title": "Mine"})).await;
    assert_eq!(s, 201);
    let (s, r) = app.post_json("/conversations", Some(&token), json!({"id": cid, "title": "Mine"})).await;
    assert_eq!((s, r["error"]["code"].as_str()), (409, Some("conversation_exists")));
}
