//! A projector killed with SIGKILL (it never leaves its consumer groups) is replaced by a
//! new process that consumes within a bound set by the consumer session timeout — on
//! Tansu as on Apache Kafka (issue 6, item 8).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use colloquy::runtime::Processes;
use colloquy_infra::Settings;
use support::{isolated_settings, TestApp};
use uuid::Uuid;

/// `colloquy project` on the test's database, keys and topics; its log goes to `log`.
fn projector(settings: &Settings, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .arg("project")
        .env("COLLOQUY_DATABASE__URL", &settings.database.url)
        .env("COLLOQUY_DATABASE__MAX_CONNECTIONS", "4")
        .env("COLLOQUY_REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .env("COLLOQUY_KAFKA__BROKERS", &settings.kafka.brokers)
        .env("COLLOQUY_KAFKA__TOPIC_PREFIX", &settings.kafka.topic_prefix)
        .env("COLLOQUY_KAFKA__PARTITIONS", settings.kafka.partitions.to_string())
        .env("COLLOQUY_HTTP__OPS_PORT", "0")
        // Every process but `dev` refuses the published development key: the test's own.
        .env(
            "COLLOQUY_AUTH__KEYS",
            format!(r#"[{{kid="{}",secret="{}"}}]"#, settings.auth.keys[0].kid, settings.auth.keys[0].secret),
        )
        .env("COLLOQUY_AUTH__SIGNING_KID", &settings.auth.signing_kid)
        .env("COLLOQUY_LOG__FILTER", "info,rdkafka=info")
        .env_remove("RUST_LOG")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// How long a supervisor waits before it restarts a process that died.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);

/// Kills its processes when the test ends, also when it fails.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Messages of `conversation` both Conversation projections have applied.
async fn projected(app: &TestApp, conversation: Uuid) -> (i64, i64) {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_messages WHERE conversation_id = $1")
        .bind(conversation)
        .fetch_one(app.pool())
        .await
        .unwrap();
    let counted: Option<i64> =
        sqlx::query_scalar("SELECT message_count FROM rm_conversations WHERE conversation_id = $1")
            .bind(conversation)
            .fetch_optional(app.pool())
            .await
            .unwrap();
    (rows, counted.unwrap_or(-1))
}

/// Polls until both projections show `n` messages; fails after `bound`.
async fn until_projected(app: &TestApp, conversation: Uuid, n: i64, bound: Duration, log: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if projected(app, conversation).await == (n, n) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String =
                log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            panic!(
                "{n} messages not projected within {bound:?} (projected: {:?}); projector log:\n{tail}",
                projected(app, conversation).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_projectors_replacement_consumes_within_the_session_timeout() {
    let settings = isolated_settings();
    // The API and the relay in this process; the projectors in child processes.
    let app = TestApp::spawn_with(
        settings.clone(),
        Processes { api: true, relay: true, projectors: false, assistant: false, ingest: false },
    )
    .await;
    let log = std::env::temp_dir().join(format!("colloquy-failover-{}.log", Uuid::new_v4().simple()));
    let mut children = Children(vec![projector(&settings, &log)]);

    let (_, token) = app.user().await;
    let (conversation, _) = app.conversation(&token, "failover").await;
    app.message(&token, conversation, "before the crash").await;
    // Joining a fresh group takes a few rebalance rounds on Tansu: a generous bound here.
    until_projected(&app, conversation, 1, Duration::from_secs(60), &log).await;

    // kill -9: no LeaveGroup, no final commit. The replacement starts after a supervisor's
    // short back-off; on Tansu that puts the dead leader's expiry in the middle of the
    // newcomer's join, the moment that left the group without assignments (issue 6, item 8).
    children.0[0].kill().unwrap();
    children.0[0].wait().unwrap();
    tokio::time::sleep(RESTART_BACKOFF).await;
    children.0.push(projector(&settings, &log));
    app.message(&token, conversation, "after the crash").await;

    // The replacement waits one session timeout for the dead member to expire, then joins
    // and syncs (Tansu pauses a follower's join for 3 s). Bound: twice the session timeout
    // plus 10 s, from the restart — where a stuck group never gets there at all.
    let session = Duration::from_millis(u64::from(settings.kafka.session_timeout_ms));
    until_projected(&app, conversation, 2, session * 2 + Duration::from_secs(10), &log).await;
    drop(children);
    let _ = std::fs::remove_file(&log);
}
