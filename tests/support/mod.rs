//! Test harness: a whole colloquy (API, relay, projectors) on the real services, isolated
//! per test by its own database, Redis key prefix and Kafka topic prefix, and removed
//! afterwards (also when the test fails).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod sse;

use std::time::Duration;

use colloquy::runtime::{self, Deps, Processes, Running};
use colloquy_infra::Settings;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sqlx::migrate::MigrateDatabase;
use sqlx::PgPool;
use uuid::Uuid;

/// Makes sure the broker runs (the project's script installs/starts it when missing).
pub fn ensure_broker() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
        let status = std::process::Command::new("bash").arg(script).arg("kafka").status().expect("run services.sh");
        assert!(status.success(), "could not start the Kafka broker");
    });
}

/// Settings isolated for one test.
pub fn isolated_settings() -> Settings {
    let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut s = Settings::default();
    s.database.url = format!("postgres://postgres:postgres@127.0.0.1:5432/colloquy_test_{tag}");
    s.database.max_connections = 6;
    s.redis.key_prefix = format!("colloquy_test_{tag}:");
    s.kafka.topic_prefix = format!("t{tag}.");
    s.kafka.partitions = 2;
    s.http.port = 0;
    s.http.workers = 2;
    s.http.ops_port = Some(0);
    s.http.min_version_wait_ms = 15_000;
    s.rate_limit.per_minute = 1_000_000;
    s.rate_limit.burst = 1_000_000;
    s.rate_limit.auth_per_minute = 1_000_000;
    s.auth.hash_concurrency = 8;
    // A key of the test's own: only `colloquy dev` starts with the published development key.
    s.auth.keys = vec![colloquy_infra::settings::JwtKey {
        kid: format!("test-{tag}"),
        secret: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
    }];
    s.auth.signing_kid = format!("test-{tag}");
    s.log.filter = "error".into();
    // Uploaded files in a folder of the test's own, removed by `cleanup`.
    s.storage.local.root = std::env::temp_dir().join(format!("colloquy_test_{tag}_files"));
    s
}

/// `settings` whose only model, and the default, is `fake-model`, answered by `fake` (a
/// server speaking OpenAI's wire format) as provider `fake`, upstream model `upstream`.
pub fn with_fake_model(mut settings: Settings, fake: &colloquy_providers::testing::FakeProvider) -> Settings {
    use colloquy_infra::assistant_settings::{ModelSettings, ProviderKind, ProviderSettings};
    let a = &mut settings.assistant;
    a.providers.retain(|name, _| name == "local");
    a.models.clear();
    let entry = ProviderSettings {
        kind: ProviderKind::Openai,
        base_url: fake.base_url(),
        api_key: Some("test-key".into()),
        ..ProviderSettings::default()
    };
    a.providers.insert("fake".into(), entry);
    let model = ModelSettings { route: vec!["fake/upstream".into()], context_window: 8192, max_output_tokens: 64 };
    a.models.insert("fake-model".into(), model);
    a.default_model = "fake-model".into();
    settings
}

/// The payload of the one `event_type` event of `aggregate_id` (panics unless exactly one).
pub async fn only_event(pool: &PgPool, aggregate_id: Uuid, event_type: &str) -> Value {
    sqlx::query_scalar("SELECT payload::jsonb -> $2 FROM events WHERE aggregate_id = $1 AND event_type = $2")
        .bind(aggregate_id.to_string())
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn create_database(settings: &Settings) {
    sqlx::Postgres::create_database(&settings.database.url).await.expect("create database");
}

/// The password every test user gets.
pub const PASSWORD: &str = "correct horse battery";

/// An HTTP client for one colloquy API, with the calls tests make over and over.
pub struct ApiClient {
    pub base: String,
    pub http: reqwest::Client,
}

/// A running colloquy for one test; its API client is reachable directly (`app.get(..)`).
pub struct TestApp {
    pub settings: Settings,
    pub client: ApiClient,
    pub deps: Deps,
    running: Option<Running>,
    /// The instance that created the database, topics and keys removes them; instances
    /// attached to them (a second API, a restarted relay) only stop their processes.
    owner: bool,
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

#[allow(unused_imports)]
pub use colloquy_infra::testing::eventually;

impl TestApp {
    /// Everything: API, relay, projectors.
    pub async fn spawn() -> Self {
        Self::spawn_with(
            isolated_settings(),
            Processes { api: true, relay: true, projectors: true, assistant: false, ingest: false },
        )
        .await
    }

    /// The given processes with the given settings (database created here).
    pub async fn spawn_with(settings: Settings, which: Processes) -> Self {
        // The API alone never talks to Kafka (only its readiness check asks it).
        if which.relay || which.projectors {
            ensure_broker();
        }
        colloquy_infra::telemetry::init(&settings.log);
        create_database(&settings).await;
        let mut app = Self::attach(settings, which).await;
        app.owner = true;
        app
    }

    /// Starts processes on an existing test database (e.g. after `stop_processes`).
    pub async fn attach(settings: Settings, which: Processes) -> Self {
        let deps = runtime::connect(&settings, which).await.expect("connect");
        let running = runtime::start(&settings, &deps, which).await.expect("start");
        let client = ApiClient::new(running.port.unwrap_or(0));
        Self { settings, client, deps, running: Some(running), owner: false }
    }

    pub fn pool(&self) -> &PgPool {
        &self.deps.pool
    }

    /// Stops the processes but keeps the database, topics and keys.
    pub async fn stop_processes(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Kills the processes as a crash would: no graceful stop, nothing released or flushed.
    pub fn kill_processes(&mut self) {
        if let Some(mut r) = self.running.take() {
            r.abort_tasks();
        }
    }

    /// Number of rows in the events table.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(self.pool()).await.unwrap()
    }

    /// A counter of the app's `/metrics` (`series` with its labels), 0 when absent.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        let prefix = format!("{series} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.parse().ok()).unwrap_or(0)
    }
}

impl ApiClient {
    /// A client for the API on `port` of this machine.
    pub fn new(port: u16) -> Self {
        Self { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.base, path)
    }

    /// Registers and logs in a fresh user; returns (user_id, token).
    pub async fn user(&self) -> (Uuid, String) {
        let email = format!("u{}@example.com", Uuid::new_v4().simple());
        let r = self
            .post_json("/auth/register", None, json!({"email": email, "full_name": "Test User", "password": PASSWORD}))
            .await;
        assert_eq!(r.0, 201, "register: {}", r.1);
        let r = self.post_json("/auth/login", None, json!({"email": email, "password": PASSWORD})).await;
        assert_eq!(r.0, 200, "login: {}", r.1);
        (r.1["user_id"].as_str().unwrap().parse().unwrap(), r.1["access_token"].as_str().unwrap().to_string())
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert_declared_error_code(status, &body);
        (status, body, headers)
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let (s, b, _) = self.send(reqwest::Method::POST, path, token, Some(body)).await;
        (s, b)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (s, b, _) = self.send(reqwest::Method::GET, path, Some(token), None).await;
        (s, b)
    }

    /// Starts a conversation; returns (id, version).
    pub async fn conversation(&self, token: &str, title: &str) -> (Uuid, i64) {
        let (s, b) = self.post_json("/conversations", Some(token), json!({"title": title})).await;
        assert_eq!(s, 201, "start conversation: {b}");
        (b["conversation_id"].as_str().unwrap().parse().unwrap(), b["version"].as_i64().unwrap())
    }

    /// Waits until reply `reply` of `conversation` has completed (read along the branch
    /// through it, so wherever the active path is).
    pub async fn reply_completed(&self, token: &str, conversation: Uuid, reply: &str) {
        eventually("the reply completed", || async {
            let (_, page) = self.get(&format!("/conversations/{conversation}/messages?leaf={reply}"), token).await;
            let last = page["items"].as_array()?.last()?.clone();
            (last["message_id"] == reply && last["status"] == "completed").then_some(())
        })
        .await;
    }

    /// Posts `content` and waits until the assistant's reply to it completed; returns the
    /// message's and the reply's ids.
    pub async fn exchange(&self, token: &str, conversation: Uuid, content: &str) -> (Uuid, Uuid) {
        let (s, b) = self
            .post_json(&format!("/conversations/{conversation}/messages"), Some(token), json!({"content": content}))
            .await;
        assert_eq!(s, 201, "post message: {b}");
        let id = |field: &str| -> Uuid { b[field].as_str().unwrap().parse().unwrap() };
        let (message, reply) = (id("message_id"), id("reply_id"));
        self.reply_completed(token, conversation, &reply.to_string()).await;
        (message, reply)
    }

    /// Posts a message; returns the new version.
    pub async fn message(&self, token: &str, conversation: Uuid, content: &str) -> i64 {
        let (s, b) = self
            .post_json(&format!("/conversations/{conversation}/messages"), Some(token), json!({"content": content}))
            .await;
        assert_eq!(s, 201, "post message: {b}");
        b["version"].as_i64().unwrap()
    }
}

/// Every error the API answers carries a code `ErrorCode` declares: a test fails the
/// moment a route answers an undeclared one.
pub fn assert_declared_error_code(status: u16, body: &Value) {
    if status < 400 {
        return;
    }
    let code = &body["error"]["code"];
    let parsed: Result<colloquy_api::errors::ErrorCode, _> = serde_json::from_value(code.clone());
    assert!(parsed.is_ok(), "{status} answered with an undeclared error code {code}: {body}");
    assert_eq!(parsed.unwrap().status().as_u16(), status, "{code} answered with another status than declared");
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The processes stop first (projectors commit and close their consumers), then the
        // database, topics and keys go: a consumer still committing offsets to a deleted
        // topic crashes the broker's storage (Tansu 0.6) and librdkafka. Both on a separate
        // runtime, so it also happens when the test panicked; the test's own (multi-thread)
        // runtime keeps driving the processes meanwhile.
        let settings = self.settings.clone();
        let mut running = self.running.take();
        if let Some(r) = running.as_mut() {
            r.begin_stop();
        }
        let owner = self.owner;
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Some(mut r) = running {
                    if tokio::time::timeout(Duration::from_secs(20), r.wait()).await.is_err() {
                        r.abort_tasks();
                    }
                }
                if owner {
                    cleanup(settings).await;
                }
            });
        })
        .join();
    }
}

/// Drops the test's database and Redis keys. Its topics stay until the run ends
/// (`tests/sweep.rs`, run by `scripts/test.sh` after the suite): deleting a topic while other
/// tests' Kafka clients are live in this process crashes librdkafka's metadata cache
/// (SIGSEGV in `rd_kafka_metadata_cache_find`, seen with Tansu 0.6).
pub async fn cleanup(settings: Settings) {
    let _ = sqlx::Postgres::force_drop_database(&settings.database.url).await;
    if let Ok(redis) = colloquy_infra::redis_store::RedisStore::connect(&settings.redis).await {
        let _ = redis.delete_prefixed("").await;
    }
    if settings.storage.local.root.starts_with(std::env::temp_dir()) {
        let _ = std::fs::remove_dir_all(&settings.storage.local.root);
    }
}

/// Reads every record of `topic` from the beginning until `done` says enough (or 30 s pass).
pub async fn consume_until(
    settings: &Settings,
    topic: &str,
    mut done: impl FnMut(&[(Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>)]) -> bool,
) -> Vec<(Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", format!("{}test-reader-{}", settings.kafka.topic_prefix, Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&out) {
        let m = tokio::time::timeout_at(deadline, consumer.recv()).await.expect("timed out reading Kafka").unwrap();
        let headers = m
            .headers()
            .map(|h| h.iter().map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        out.push((m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec(), headers));
    }
    out
}

/// Writes one record to `topic` (as a retrying producer or a replayed partition would).
pub async fn produce(
    settings: &Settings,
    topic: &str,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &settings.kafka.brokers).create().unwrap();
    let mut owned = OwnedHeaders::new();
    for (k, v) in &headers {
        owned = owned.insert(Header { key: k, value: Some(v) });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(&payload[..]).headers(owned);
    if let Some(k) = &key {
        record = record.key(&k[..]);
    }
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
}

/// The user's usage report (`GET /users/me/usage`) once it shows `calls` provider calls.
pub async fn usage_with(client: &ApiClient, token: &str, calls: i64) -> Value {
    eventually("the usage is projected", || async {
        let (s, report) = client.get("/users/me/usage", token).await;
        assert_eq!(s, 200, "{report}");
        (report["calls"].as_i64() == Some(calls)).then_some(report)
    })
    .await
}

/// Where `scripts/models.sh` put the local models (`COLLOQUY_MODELS_DIR` overrides).
pub fn models_dir() -> std::path::PathBuf {
    std::env::var_os("COLLOQUY_MODELS_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".colloquy/models"))
}

/// Checks a CloudEvent's `data` against the published schema of its `type` (every required
/// field present, no field the schema does not name, JSON types of the named fields).
pub fn assert_data_matches_schema(ce: &Value) {
    let ty = ce["type"].as_str().expect("type");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").join(format!("{ty}.json"));
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("no schema for {ty}"))).unwrap();
    let data = ce["data"].as_object().unwrap_or_else(|| panic!("{ty}: data is not an object"));
    let properties = schema["properties"].as_object().cloned().unwrap_or_default();
    for required in schema["required"].as_array().cloned().unwrap_or_default() {
        assert!(data.contains_key(required.as_str().unwrap()), "{ty}: data lacks {required}");
    }
    for (field, value) in data {
        let prop = properties.get(field).unwrap_or_else(|| panic!("{ty}: {field} is not in the schema"));
        let allowed: Vec<&str> = match &prop["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => continue, // references and combinators: presence is enough here
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        assert!(
            allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number")),
            "{ty}.{field}: {actual} not in {allowed:?}"
        );
    }
}

/// The sequences stored for one aggregate, in order.
pub async fn sequences(pool: &PgPool, aggregate_id: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence")
        .bind(aggregate_id)
        .fetch_all(pool)
        .await
        .unwrap()
}
