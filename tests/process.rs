//! The real `colloquy` binary: JSON logs with request ids, and a graceful shutdown on
//! SIGTERM (in-flight requests finish, projectors and relay stop cleanly, exit code 0).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{cleanup, create_database, ensure_broker, isolated_settings};

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
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let email = format!("p{}@example.com", uuid::Uuid::new_v4().simple());
    let r = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": email, "full_name": "P", "password": "long password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": "long password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let conv: Value = http
        .post(format!("{base}/api/v1/conversations"))
        .bearer_auth(&token)
        .json(&json!({"title": "t"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conv = conv["conversation_id"].as_str().unwrap().to_string();

    // A request that stays in flight: it waits for a version that never comes.
    let in_flight = tokio::spawn({
        let (http, base, token, conv) = (http.clone(), base.clone(), token.clone(), conv.clone());
        async move { http.get(format!("{base}/api/v1/conversations/{conv}?min_version=99")).bearer_auth(token).send().await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.lines().any(|l| l == "colloquy_min_version_waiting 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    assert_eq!(messages.iter().filter(|m| **m == "Projector stopped.").count(), 3, "{messages:?}");
    assert!(messages.contains(&"Relay stopped."), "{messages:?}");
    // Every line of a request carries its request id.
    let registered = seen.iter().find(|l| l["message"] == "User registered.").expect("registration logged");
    assert!(registered.to_string().contains("request_id"), "{registered}");
    assert!(!seen.iter().any(|l| l.to_string().contains("long password")), "no password in any log line");
}
