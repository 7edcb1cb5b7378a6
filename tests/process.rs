//! The real `colloquy` binary: JSON logs with request ids, and a graceful shutdown on
//! SIGTERM (in-flight requests finish, projectors and relay stop cleanly, exit code 0).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{cleanup, create_database, ensure_broker, eventually, isolated_settings, ApiClient, PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_requests_finish_and_stops_cleanly() {
    ensure_broker();
    let settings = isolated_settings();
    create_database(&settings).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .arg("dev")
        .env("COLLOQUY_DATABASE__URL", &settings.database.url)
        .env("COLLOQUY_REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .env("COLLOQUY_KAFKA__TOPIC_PREFIX", &settings.kafka.topic_prefix)
        .env("COLLOQUY_KAFKA__PARTITIONS", "2")
        .env("COLLOQUY_HTTP__PORT", "0")
        .env("COLLOQUY_HTTP__MIN_VERSION_WAIT_MS", "3000")
        .env("COLLOQUY_LOG__FORMAT", "json")
        .env("COLLOQUY_LOG__FILTER", "info")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Whatever happens below, the process and the test's database, keys and topics go.
    struct Guard(u32, Option<colloquy_infra::Settings>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg("-KILL").arg(self.0.to_string()).status();
            if let Some(settings) = self.1.take() {
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(cleanup(settings));
                })
                .join();
            }
        }
    }
    let _guard = Guard(pid, Some(settings.clone()));
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = lines_tx.send(v);
            }
        }
    });
    let mut seen = Vec::new();
    let port = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .expect("no API start line")
            .expect("process ended");
        seen.push(line.clone());
        if line["message"] == "API listening." {
            break line["port"].as_u64().unwrap();
        }
    };
    let api = ApiClient::new(u16::try_from(port).unwrap());
    let (_, token) = api.user().await;
    let (conv, _) = api.conversation(&token, "t").await;

    // A request that stays in flight: it waits for a version that never comes.
    let in_flight = tokio::spawn({
        let (http, url, token) =
            (api.http.clone(), api.url(&format!("/conversations/{conv}?min_version=99")), token.clone());
        async move { http.get(url).bearer_auth(token).send().await }
    });
    eventually("the slow request to arrive", || async {
        let metrics = api.http.get(format!("{}/metrics", api.base)).send().await.ok()?.text().await.ok()?;
        metrics.lines().any(|l| l == "colloquy_min_version_waiting 1").then_some(())
    })
    .await;
    Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();

    // The in-flight request gets its real answer (the bounded wait ran out), not a reset.
    let response = in_flight.await.unwrap().expect("in-flight request was cut off");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 503, "{body}");
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status:?}");
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    let messages: Vec<&str> = seen.iter().filter_map(|l| l["message"].as_str()).collect();
    // One projector per set of projections reading the same topics.
    let projectors = colloquy_projections::projector::groups(colloquy_projections::all(&Default::default())).len();
    assert_eq!(messages.iter().filter(|m| **m == "Projector stopped.").count(), projectors, "{messages:?}");
    assert!(messages.contains(&"Relay stopped."), "{messages:?}");
    assert!(messages.contains(&"Assistant worker stopped."), "{messages:?}");
    assert!(messages.contains(&"Ingest worker stopped."), "{messages:?}");
    // Every line of a request carries its request id.
    let registered = seen.iter().find(|l| l["message"] == "User registered.").expect("registration logged");
    assert!(registered.to_string().contains("request_id"), "{registered}");
    assert!(!seen.iter().any(|l| l.to_string().contains(PASSWORD)), "no password in any log line");
}

/// Every process but `dev` refuses the published development keys and short keys, before
/// connecting to anything, naming the key's kid and never its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_other_than_dev_refuse_known_and_short_keys() {
    let settings = isolated_settings();
    // Nothing may be created: the refusal comes first. (Removed anyway, should it not.)
    struct Cleanup(Option<colloquy_infra::Settings>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(settings) = self.0.take() {
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(cleanup(settings));
                })
                .join();
            }
        }
    }
    let _cleanup = Cleanup(Some(settings.clone()));
    let compose = colloquy_infra::settings::PUBLISHED_JWT_SECRETS[1];
    let short = "only-thirty-one-bytes-long-0123";
    assert_eq!(short.len(), 31);
    let cases: Vec<(&str, Option<String>, &str, &str)> = vec![
        ("serve", None, "dev", colloquy_infra::settings::DEV_JWT_SECRET),
        ("relay", None, "dev", colloquy_infra::settings::DEV_JWT_SECRET),
        ("project", None, "dev", colloquy_infra::settings::DEV_JWT_SECRET),
        ("serve", Some(format!(r#"[{{kid="compose-dev",secret="{compose}"}}]"#)), "compose-dev", compose),
        ("serve", Some(format!(r#"[{{kid="tiny",secret="{short}"}}]"#)), "tiny", short),
    ];
    for (process, keys, kid, secret) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_colloquy"));
        command
            .arg(process)
            .env("COLLOQUY_DATABASE__URL", &settings.database.url)
            .env("COLLOQUY_REDIS__KEY_PREFIX", &settings.redis.key_prefix)
            .env("COLLOQUY_KAFKA__TOPIC_PREFIX", &settings.kafka.topic_prefix)
            .env("COLLOQUY_HTTP__PORT", "0")
            .env("COLLOQUY_HTTP__OPS_PORT", "0")
            .env_remove("COLLOQUY_AUTH__KEYS")
            .env_remove("COLLOQUY_AUTH__SIGNING_KID")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(keys) = &keys {
            command.env("COLLOQUY_AUTH__KEYS", keys).env("COLLOQUY_AUTH__SIGNING_KID", kid);
        }
        let mut child = command.spawn().unwrap();
        let pid = child.id();
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                (child.wait().unwrap(), stderr)
            }),
        )
        .await;
        let Ok(waited) = waited else {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("`colloquy {process}` started with the key {kid:?}");
        };
        let (status, stderr) = waited.unwrap();
        assert!(!status.success(), "`colloquy {process}` with {kid:?} exited with {status:?}");
        assert!(stderr.contains(&format!("\"{kid}\"")), "the error names the kid: {stderr}");
        assert!(!stderr.contains(secret), "the error never shows the secret: {stderr}");
    }
    let created: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(settings.database.url.rsplit('/').next().unwrap())
        .fetch_one(&sqlx::PgPool::connect("postgres://postgres:postgres@127.0.0.1:5432/postgres").await.unwrap())
        .await
        .unwrap();
    assert!(!created, "a refused process created nothing");
}
