//! Authentication end to end: forged and revoked tokens, refresh tokens, the login limits
//! behind a proxy, and the headers of auth and profile answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use reqwest::Method;
use serde_json::{json, Value};
use support::{isolated_settings, TestApp, PASSWORD};
use uuid::Uuid;

const API_ONLY: Processes = Processes { api: true, relay: false, projectors: false, assistant: false, ingest: false };

fn new_email() -> String {
    format!("a{}@example.com", Uuid::new_v4().simple())
}

async fn register(app: &TestApp, email: &str) {
    let (s, b) =
        app.post_json("/auth/register", None, json!({"email": email, "full_name": "A", "password": PASSWORD})).await;
    assert_eq!(s, 201, "{b}");
}

async fn login(app: &TestApp, email: &str) -> Value {
    let (s, b) = app.post_json("/auth/login", None, json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(s, 200, "{b}");
    b
}

/// A login attempt from `client` (sent as `X-Forwarded-For`): status, body, Retry-After.
async fn login_from(app: &TestApp, client: &str, email: &str, password: &str) -> (u16, Value, Option<u64>) {
    let r = app
        .http
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", client)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    let body: Value = r.json().await.unwrap();
    support::assert_declared_error_code(status, &body);
    (status, body, retry)
}

async fn forget_redis_keys(app: &TestApp) {
    // Only this test's keys (its own prefix): never the whole shared server.
    app.deps.redis.as_ref().unwrap().delete_prefixed("").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_validly_signed_token_for_an_unknown_user_or_session_is_401_and_changes_nothing() {
    let app = TestApp::spawn_with(isolated_settings(), API_ONLY).await;
    let (user, _) = app.user().await;
    let before = app.event_count().await;
    let tokens = colloquy_api::tokens::Tokens::new(&app.settings.auth).unwrap();
    let forged_sub = tokens.issue(Uuid::new_v4(), Uuid::new_v4()).unwrap().0;
    let forged_session = tokens.issue(user, Uuid::new_v4()).unwrap().0;
    for token in [&forged_sub, &forged_session] {
        let (s, b) = app.post_json("/conversations", Some(token), json!({"title": "not mine"})).await;
        assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "{b}");
        let (s, _) = app.get("/users/me", token).await;
        assert_eq!(s, 401);
    }
    assert_eq!(app.event_count().await, before, "nothing was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_tokens_stay_refused_with_redis_emptied() {
    let app = TestApp::spawn_with(isolated_settings(), API_ONLY).await;
    // One user deactivates, another logs out; a third keeps working.
    let (_, leaving) = app.user().await;
    let email = new_email();
    register(&app, &email).await;
    let session = login(&app, &email).await;
    let logged_out = session["access_token"].as_str().unwrap().to_string();
    let (_, staying) = app.user().await;
    // Reads by revoked tokens: the list is read first (it succeeds), so that a read that
    // succeeds is what the refusal must hold back; the profile (no projector runs here) and
    // an unknown conversation are reads that would fail with 404, and the refusal must still
    // be what answers.
    let reads = ["/conversations", "/users/me"];
    for token in [&leaving, &logged_out] {
        assert_eq!(app.get("/conversations", token).await.0, 200, "before");
    }

    let (s, _, _) = app.send(Method::DELETE, "/users/me", Some(&leaving), None).await;
    assert_eq!(s, 200);
    let (s, _, _) = app.send(Method::POST, "/auth/logout", Some(&logged_out), None).await;
    assert_eq!(s, 204);
    // With no refusal cached (a cached one answers before PostgreSQL is asked): the session
    // check itself refuses, whatever the read would have answered.
    let unknown = format!("/conversations/{}", Uuid::new_v4());
    for token in [&leaving, &logged_out] {
        for path in reads.into_iter().chain([unknown.as_str()]) {
            forget_redis_keys(&app).await;
            let (s, b) = app.get(path, token).await;
            assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "{path}: {b}");
        }
    }
    for round in ["with the refusals cached", "with Redis emptied"] {
        for token in [&leaving, &logged_out] {
            let (s, b) = app.post_json("/conversations", Some(token), json!({"title": "after"})).await;
            assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "{round}: {b}");
        }
        let (s, _) = app.post_json("/auth/refresh", None, json!({"refresh_token": session["refresh_token"]})).await;
        assert_eq!(s, 401, "{round}: the logged-out session's refresh token");
        assert_eq!(app.get("/conversations", &staying).await.0, 200, "{round}");
        forget_redis_keys(&app).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_session() {
    let app = TestApp::spawn_with(isolated_settings(), API_ONLY).await;
    let email = new_email();
    register(&app, &email).await;
    let first = login(&app, &email).await;
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], app.settings.auth.access_token_ttl_secs);
    assert_eq!(first["refresh_expires_in"], app.settings.auth.refresh_token_ttl_secs);
    let first_refresh = first["refresh_token"].as_str().unwrap();

    // A refresh token is no access token, and an access token no refresh token.
    assert_eq!(app.get("/conversations", first_refresh).await.0, 401);
    let (s, _) = app.post_json("/auth/refresh", None, json!({"refresh_token": first["access_token"]})).await;
    assert_eq!(s, 401);

    let (s, second) = app.post_json("/auth/refresh", None, json!({"refresh_token": first_refresh})).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["user_id"], first["user_id"]);
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let access = second["access_token"].as_str().unwrap();
    assert_eq!(app.get("/conversations", access).await.0, 200);

    // The used refresh token again: 401, and every token of the session stops working.
    let (s, b) = app.post_json("/auth/refresh", None, json!({"refresh_token": first_refresh})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(app.get("/conversations", access).await.0, 401);
    assert_eq!(app.get("/conversations", first["access_token"].as_str().unwrap()).await.0, 401);
    let (s, _) = app.post_json("/auth/refresh", None, json!({"refresh_token": second["refresh_token"]})).await;
    assert_eq!(s, 401);
    // Logging in again starts a new session.
    let third = login(&app, &email).await;
    assert_eq!(app.get("/conversations", third["access_token"].as_str().unwrap()).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_back_off_per_account_from_any_address_without_locking_the_address() {
    let mut settings = isolated_settings();
    settings.http.trusted_proxies = vec!["127.0.0.1".into(), "::1".into()];
    // The production per-address defaults: generous, not a lock-out.
    settings.rate_limit.auth_per_minute = colloquy_infra::settings::RateLimitSettings::default().auth_per_minute;
    settings.rate_limit.auth_burst = colloquy_infra::settings::RateLimitSettings::default().auth_burst;
    settings.rate_limit.login_failures_free = 3;
    // Long enough that the outcome cannot depend on the test's speed.
    settings.rate_limit.login_backoff_base_secs = 600;
    let app = TestApp::spawn_with(settings, API_ONLY).await;
    let (victim, bystander, resetter) = (new_email(), new_email(), new_email());
    for email in [&victim, &bystander, &resetter] {
        register(&app, email).await;
    }
    let nobody = new_email();

    // Credential stuffing: each guess from another address, on a registered and an
    // unregistered account alike.
    for account in [&victim, &nobody] {
        for i in 0..3 {
            let (s, _, _) = login_from(&app, &format!("198.51.100.{i}"), account, "wrong password").await;
            assert_eq!(s, 401, "{account}: guess {i}");
        }
        // The next attempt waits, from yet another address, even with the right password.
        let (s, b, retry) = login_from(&app, "198.51.100.99", account, PASSWORD).await;
        assert_eq!((s, b["error"]["code"].as_str()), (429, Some("rate_limited")), "{account}: {b}");
        assert!(retry.is_some_and(|r| (1..=600).contains(&r)), "{retry:?}");
    }
    // The same address logs in to another account at once.
    let (s, _, _) = login_from(&app, "198.51.100.0", &bystander, PASSWORD).await;
    assert_eq!(s, 200);

    // A success forgets the failures.
    for _ in 0..2 {
        assert_eq!(login_from(&app, "203.0.113.1", &resetter, "wrong password").await.0, 401);
    }
    assert_eq!(login_from(&app, "203.0.113.1", &resetter, PASSWORD).await.0, 200);
    for _ in 0..2 {
        assert_eq!(login_from(&app, "203.0.113.1", &resetter, "wrong password").await.0, 401);
    }
    assert_eq!(login_from(&app, "203.0.113.1", &resetter, PASSWORD).await.0, 200);

    // Fifty failures from one address (on as many accounts) do not lock that address out.
    for _ in 0..50 {
        assert_eq!(login_from(&app, "192.0.2.7", &new_email(), "wrong password").await.0, 401);
    }
    assert_eq!(login_from(&app, "192.0.2.7", &bystander, PASSWORD).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    // Two attempts per client address a minute at most: the third is refused.
    let strict = |trusted: &[&str]| {
        let mut settings = isolated_settings();
        settings.rate_limit.auth_per_minute = 1;
        settings.rate_limit.auth_burst = 1;
        settings.http.trusted_proxies = trusted.iter().map(|t| t.to_string()).collect();
        settings
    };
    let nobody = new_email();

    // The peer (this machine) is not a trusted proxy: the header is ignored, so three
    // attempts claiming three addresses are one client.
    let direct = TestApp::spawn_with(strict(&["10.0.0.0/8"]), API_ONLY).await;
    let statuses = [
        login_from(&direct, "198.51.100.1", &nobody, "pw").await.0,
        login_from(&direct, "198.51.100.2", &nobody, "pw").await.0,
        login_from(&direct, "198.51.100.3", &nobody, "pw").await.0,
    ];
    assert_eq!(statuses, [401, 401, 429]);
    drop(direct);

    // Behind a trusted proxy: the rightmost untrusted hop is the client.
    let proxied = TestApp::spawn_with(strict(&["127.0.0.1", "::1", "10.0.0.0/8"]), API_ONLY).await;
    let statuses = [
        login_from(&proxied, "198.51.100.1", &nobody, "pw").await.0,
        login_from(&proxied, "198.51.100.2", &nobody, "pw").await.0,
        login_from(&proxied, "198.51.100.3", &nobody, "pw").await.0,
    ];
    assert_eq!(statuses, [401, 401, 401], "three clients");
    // One client cannot pose as others by writing addresses left of its own.
    let statuses = [
        login_from(&proxied, "1.1.1.1, 203.0.113.5", &new_email(), "pw").await.0,
        login_from(&proxied, "2.2.2.2, 203.0.113.5, 10.1.2.3", &new_email(), "pw").await.0,
        login_from(&proxied, "3.3.3.3, 203.0.113.5", &new_email(), "pw").await.0,
    ];
    assert_eq!(statuses, [401, 401, 429], "one client, 203.0.113.5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_and_profile_answers_are_not_stored_and_nothing_is_sniffed() {
    let app = TestApp::spawn_with(isolated_settings(), API_ONLY).await;
    let email = new_email();
    let send = |method: Method, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut req = app.http.request(method, format!("{}{path}", app.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    let header = |r: &reqwest::Response, name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let no_store = Some("no-store".to_string());
    let nosniff = Some("nosniff".to_string());

    let r = send(
        Method::POST,
        "/api/v1/auth/register",
        None,
        Some(json!({"email": email, "full_name": "H", "password": PASSWORD})),
    )
    .await
    .unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (201, no_store.clone()));
    let r = send(Method::POST, "/api/v1/auth/login", None, Some(json!({"email": email, "password": PASSWORD})))
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (200, no_store.clone()));
    let tokens: Value = r.json().await.unwrap();
    let r = send(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": tokens["refresh_token"]})))
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (200, no_store.clone()));
    let tokens: Value = r.json().await.unwrap();
    let token = tokens["access_token"].as_str().unwrap();
    let r = send(Method::PATCH, "/api/v1/users/me", Some(token), Some(json!({"full_name": "H2"}))).await.unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (200, no_store.clone()));
    // (No projector runs here: the profile is not in the read model, a 404. Its header is
    // the same as a 200's.)
    let r = send(Method::GET, "/api/v1/users/me", Some(token), None).await.unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (404, no_store.clone()));
    // Errors of these routes too.
    let r = send(Method::POST, "/api/v1/auth/login", None, Some(json!({"email": email, "password": "wrong password"})))
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (401, no_store.clone()));

    // nosniff on everything: successes, errors, unknown routes, health, metrics.
    for (method, path, token) in [
        (Method::GET, "/api/v1/conversations", Some(token)),
        (Method::GET, "/api/v1/conversations", None),
        (Method::GET, "/api/v1/users/me", Some("garbage")),
        (Method::PUT, "/api/v1/conversations", Some(token)),
        (Method::GET, "/nope", None),
        (Method::GET, "/health", None),
        (Method::GET, "/health/ready", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/openapi.json", None),
    ] {
        let r = send(method.clone(), path, token, None).await.unwrap();
        assert_eq!(header(&r, "x-content-type-options"), nosniff, "{method} {path}: {}", r.status());
    }

    let r = send(Method::POST, "/api/v1/auth/logout", Some(token), None).await.unwrap();
    assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (204, no_store.clone()));
    assert_eq!(header(&r, "x-content-type-options"), nosniff);
}
