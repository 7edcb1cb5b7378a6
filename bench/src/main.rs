//! `colloquy-bench`: starts colloquy in-process (API, relay and projectors) on a fresh
//! database and measures, over real HTTP:
//!
//! 1. command throughput and latency: `POST .../messages` from N keep-alive connections
//!    spread over many conversations;
//! 2. command-to-read-model lag: for a sample of those commands, the time from the
//!    command's acknowledgement until `GET .../messages` shows the message;
//! 3. the raw Postgres append rate (`pgbench` inserting into `events`), as a ceiling the
//!    command rate can be compared with;
//! 4. whether a long conversation (thousands of events) is slower to write to than a
//!    fresh one.
//!
//! It prints figures; it is not a test and never fails on a missed target.
//!
//! `--layout split` runs colloquy as deployed instead, one process per role (`processes.rs`),
//! and `--layout both` measures the load both ways, one after the other, and prints both.
//!
//! `--assistant` measures the assistant's streaming path instead (`assistant.rs`), and
//! `--retrieval` the knowledge base's search quality and latency (`retrieval.rs`).

mod assistant;
mod assistant_clients;
mod broker;
mod cpu;
mod processes;
mod retrieval;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use colloquy::runtime::{self, Processes};
use colloquy_infra::{telemetry, Settings};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::migrate::MigrateDatabase;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

/// The targets the README states; printed next to the figures.
const TARGET_COMMANDS_PER_SEC: f64 = 1_000.0;
const TARGET_LAG_P99_MS: f64 = 250.0;
const TARGET_LONG_NEW_RATIO: f64 = 1.5;

/// Stands for "not visible within `--lag-timeout`" among lag durations: it sorts last, so
/// percentiles that land on it read as "more than the timeout" rather than being dropped.
const NEVER: Duration = Duration::MAX;

#[derive(Parser, Debug)]
#[command(name = "colloquy-bench", about = "Throughput, latency and read-model lag of colloquy (prints figures)")]
struct Args {
    /// Duration of the load phase, in seconds.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// How colloquy runs: `dev` (API, relay and projectors in the bench's own process, as
    /// `colloquy dev`), `split` (`--serve-processes` `colloquy serve`, one `colloquy relay`, one
    /// `colloquy project`, each its own process) or `both` (the load phase in `dev`, then in
    /// `split`, each on a fresh database; the other phases run once, in `split`).
    #[arg(long, value_enum, default_value_t = Layout::Dev)]
    layout: Layout,
    /// `split`: the `colloquy serve` processes; the load's connections are spread over them.
    #[arg(long, default_value_t = 2)]
    serve_processes: usize,
    /// Concurrent HTTP connections (one load task, one keep-alive connection each).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Commands per second the connections send together (paced evenly); unset, each
    /// connection sends its next command as soon as the last one was answered (the most the
    /// machine can take). Lag is meant to be read at a rate the machine sustains.
    #[arg(long)]
    rate: Option<f64>,
    /// Conversations the load is spread over.
    #[arg(long, default_value_t = 1_000)]
    conversations: usize,
    /// Users the load's conversations belong to (connection w writes as user w mod N). One
    /// user sending everything makes that user's quota counters a hot row every command
    /// updates; real traffic at this rate comes from many users.
    #[arg(long, default_value_t = 1)]
    users: usize,
    /// Measure read-model lag for every N-th command.
    #[arg(long, default_value_t = 20)]
    lag_every: u64,
    /// Most lag checkers polling at once (a sample is skipped when all are busy).
    #[arg(long, default_value_t = 16)]
    lag_checkers: usize,
    /// Shortest pause between two polls of one lag checker, in milliseconds (the pause grows
    /// to a twentieth of the time waited, so a long lag is measured to within 5 %).
    #[arg(long, default_value_t = 2)]
    lag_poll_ms: u64,
    /// Seconds a lag checker polls before it records the sample as never seen.
    #[arg(long, default_value_t = 60)]
    lag_timeout: u64,
    /// Messages posted into the long conversation before it is measured.
    #[arg(long, default_value_t = 2_000)]
    long_messages: usize,
    /// Concurrent posters filling the long conversation.
    #[arg(long, default_value_t = 8)]
    fill_concurrency: usize,
    /// Sequential posts measured on the long conversation, and fresh conversations measured.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// pgbench duration, in seconds.
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u64,
    /// pgbench clients.
    #[arg(long, default_value_t = 32)]
    pgbench_clients: usize,
    /// Postgres server URL without a database name (the bench creates and drops its own).
    #[arg(long, env = "COLLOQUY_BENCH_POSTGRES", default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
    postgres_url: String,
    /// `sslmode` of colloquy's and pgbench's connections. Everything runs on one machine, where
    /// TLS over the loopback only costs CPU (about 8 % of PostgreSQL's, and some of
    /// colloquy's); `prefer` measures it.
    #[arg(long, default_value = "disable")]
    postgres_sslmode: String,
    /// colloquy's Postgres pool size (default: colloquy's default).
    #[arg(long)]
    db_pool: Option<u32>,
    /// What answers the posted messages during the load: `off` (the assistant is switched
    /// off by configuration, `assistant.worker.enabled = false`: the event pipeline alone) or
    /// `instant` (the assistant runs, its model is a fake OpenAI-compatible server in this
    /// process that answers every message at once: two more events per message).
    #[arg(long, value_enum, default_value_t = Replies::Off)]
    replies: Replies,
    /// Consumers' `fetch.wait.max.ms` (`kafka.fetch_wait_max_ms`, default 100).
    #[arg(long)]
    fetch_wait_ms: Option<u32>,
    /// The broker's nice value (`renice`; below 0 needs root). A broker shares these two
    /// cores with colloquy, PostgreSQL and the load clients, where a Kafka cluster has
    /// machines of its own; a negative value keeps it from being starved. 0 leaves it be.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    broker_nice: i32,
    /// Measure the assistant's streaming path instead (time to first token added, SSE
    /// streams held, the local model's speed); see bench/README.md.
    #[arg(long)]
    assistant: bool,
    /// `--assistant`: conversations streaming replies at once (the streams in flight).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// `--assistant`: rounds of the burst, and replies per conversation in the steady phase.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// `--assistant`: SSE clients held by the API at once.
    #[arg(long, default_value_t = 1_000)]
    sse_clients: usize,
    /// Measure the knowledge base's retrieval instead (recall@5 and MRR per search mode on
    /// bench/retrieval, then search latency over a grown index); see bench/README.md.
    #[arg(long)]
    retrieval: bool,
    /// `--retrieval`: live chunks the index grows to before latency is measured.
    #[arg(long, default_value_t = 10_000)]
    retrieval_chunks: usize,
    /// `--retrieval`: how the index grows (copies: corpus copies with reused, perturbed
    /// vectors, about a minute; shuffled: shuffled corpus paragraphs embedded for real, about
    /// 25 minutes for 10,000 chunks on two cores).
    #[arg(long, value_enum, default_value_t = retrieval::Growth::Copies)]
    retrieval_growth: retrieval::Growth,
    /// `--retrieval`: searches measured per mode (whole rounds of the questions, at least this many).
    #[arg(long, default_value_t = 500)]
    retrieval_searches: usize,
    /// `--retrieval`: the evaluation data (default: bench/retrieval of this checkout).
    #[arg(long)]
    retrieval_data: Option<PathBuf>,
    /// `--retrieval`: the models directory holding all-minilm-l6-v2 (default:
    /// `$COLLOQUY_STATE_DIR/models`, else `.colloquy/models` of this checkout).
    #[arg(long, env = "COLLOQUY_MODELS_DIR")]
    models_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The clients of `--assistant` run in child processes of their own (their CPU and
    // memory must not count as colloquy's): `colloquy-bench ttft-clients` (with the fake
    // provider) and `colloquy-bench sse-clients <count> <token> <url>...`.
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("ttft-clients") => return assistant_clients::ttft_clients().await,
        Some("sse-clients") => {
            let count = argv.get(2).and_then(|c| c.parse().ok()).context("sse-clients <count> <token> <url>...")?;
            let token = argv.get(3).cloned().context("sse-clients <count> <token> <url>...")?;
            return assistant_clients::sse_clients(count, token, argv[4..].to_vec()).await;
        }
        _ => {}
    }
    let args = Args::parse();
    // The throughput runs start a broker of their own (broker.rs).
    if args.assistant {
        ensure_kafka()?;
    }

    let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
    let server = args.postgres_url.trim_end_matches('/').to_string();
    let db_name = format!("colloquy_bench_{tag}");
    let db_url = format!("{server}/{db_name}?sslmode={}", args.postgres_sslmode);
    sqlx::Postgres::create_database(&db_url).await.context("creating the bench database")?;
    eprintln!("[bench] database {db_name} created");

    if args.retrieval {
        let outcome = retrieval::run(&args, &tag, &db_url).await;
        let dropped = sqlx::Postgres::force_drop_database(&db_url).await;
        outcome?;
        dropped.context("dropping the bench database")?;
        eprintln!("[bench] database {db_name} dropped");
        return Ok(());
    }
    if args.assistant {
        let outcome = assistant::run(&args, &tag, &db_url).await;
        let dropped = sqlx::Postgres::force_drop_database(&db_url).await;
        outcome?;
        dropped.context("dropping the bench database")?;
        return Ok(());
    }
    let layouts = match args.layout {
        Layout::Both => vec![Layout::Dev, Layout::Split],
        one => vec![one],
    };
    let mut reports = Vec::new();
    for (i, layout) in layouts.iter().enumerate() {
        // Every layout on a database, topics and keys of its own.
        let (tag, db_name, db_url) = if i == 0 {
            (tag.clone(), db_name.clone(), db_url.clone())
        } else {
            let tag = format!("{tag}{i}");
            let db_name = format!("colloquy_bench_{tag}");
            let db_url = format!("{server}/{db_name}?sslmode={}", args.postgres_sslmode);
            sqlx::Postgres::create_database(&db_url).await.context("creating the bench database")?;
            (tag, db_name, db_url)
        };
        let last = i + 1 == layouts.len();
        eprintln!("[bench] layout {}", layout.describe(&args));
        let outcome = run(&args, &tag, &db_url, *layout, last).await;
        // Always drop the database, also after a failure; FORCE ends connections left behind.
        let dropped = sqlx::Postgres::force_drop_database(&db_url).await;
        let report = outcome?;
        dropped.context("dropping the bench database")?;
        eprintln!("[bench] database {db_name} dropped");
        reports.push((report.commands_per_sec(), layout.describe(&args)));
        report.print(&args, &layout.describe(&args))?;
    }
    if let [(dev, dev_name), (split, split_name)] = reports.as_slice() {
        writeln!(
            std::io::stdout().lock(),
            "layouts: {dev_name} {dev:.1} commands/s, {split_name} {split:.1} commands/s: split ÷ dev = {:.2}",
            split / dev
        )?;
    }
    Ok(())
}

/// How colloquy runs during a throughput run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Layout {
    /// In the bench's process, as `colloquy dev`.
    Dev,
    /// One process per role.
    Split,
    /// `dev`, then `split`.
    Both,
}

impl Layout {
    fn describe(self, args: &Args) -> String {
        match self {
            Layout::Dev => "dev (API, relay and projectors in one process with the clients)".into(),
            Layout::Split => format!("split ({} serve + relay + project processes)", args.serve_processes.max(1)),
            Layout::Both => "both".into(),
        }
    }
}

/// colloquy, running in one of the layouts.
enum Colloquy {
    InProcess(runtime::Running),
    Split(processes::Split),
}

impl Colloquy {
    async fn stop(self) {
        match self {
            Colloquy::InProcess(running) => {
                if tokio::time::timeout(Duration::from_secs(30), running.stop()).await.is_err() {
                    eprintln!("[bench] warning: colloquy did not stop within 30 s");
                }
            }
            Colloquy::Split(split) => split.stop().await,
        }
    }
}

/// What answers posted messages during the throughput run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Replies {
    /// Nothing: the assistant is switched off.
    Off,
    /// A fake model answering at once.
    Instant,
}

/// Runs `scripts/services.sh <verb>` of this checkout (its stderr passes through) and
/// answers what it printed on stdout.
fn services_script(verb: &str) -> anyhow::Result<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/services.sh"))
        .arg(verb)
        .current_dir(&root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running scripts/services.sh {verb}"))?;
    if !out.status.success() {
        bail!("scripts/services.sh {verb} failed: {}", out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Starts the broker (idempotent) with the project's own script.
fn ensure_kafka() -> anyhow::Result<()> {
    services_script("kafka").map(drop)
}

/// Everything between database creation and its removal. `extras`: after the load, also
/// the long/new comparison, the rebuild and pgbench.
async fn run(args: &Args, tag: &str, db_url: &str, layout: Layout, extras: bool) -> anyhow::Result<Report> {
    let mut settings = bench_settings(args, tag, db_url);
    telemetry::init(&settings.log);
    let broker = broker::Broker::start(args.broker_nice).await?;
    settings.kafka.brokers = broker.address.clone();
    let outcome = run_on(args, tag, db_url, &mut settings, &broker, layout, extras).await;
    let restarts = broker.restarts();
    broker.stop().await;
    let mut report = outcome?;
    report.broker_restarts = restarts;
    Ok(report)
}

/// [`run`] with its broker running.
async fn run_on(
    args: &Args,
    tag: &str,
    db_url: &str,
    settings: &mut Settings,
    broker: &broker::Broker,
    layout: Layout,
    extras: bool,
) -> anyhow::Result<Report> {
    let broker_pid: Vec<(u32, String)> =
        broker.pid().map(|pid| (pid, "broker (tansu)".to_string())).into_iter().collect();
    // The assistant process runs either way: whether it answers is configuration.
    let fake = match args.replies {
        Replies::Off => {
            settings.assistant.worker.enabled = false;
            None
        }
        Replies::Instant => {
            let fake = colloquy_providers::testing::FakeProvider::start().await;
            fake.set_default(colloquy_providers::testing::Script::instant());
            instant_model(settings, &fake);
            Some(fake)
        }
    };
    eprintln!("[bench] replies: {:?}", args.replies);

    let (colloquy, ports, labels, pool) = match layout {
        Layout::Split => {
            let split = processes::Split::start(settings, args.serve_processes, fake.is_some()).await?;
            let labels = cpu::Labels { me: "bench clients".into(), children: [split.pids(), broker_pid].concat() };
            let pool = colloquy_infra::postgres::connect(&settings.database).await?;
            let ports = split.ports.clone();
            (Colloquy::Split(split), ports, labels, pool)
        }
        _ => {
            let everything = Processes { api: true, relay: true, projectors: true, assistant: true, ingest: false };
            let deps = runtime::connect(settings, everything).await.context("connecting Postgres and Redis")?;
            let running = runtime::start(settings, &deps, everything).await?;
            let Some(port) = running.port else { bail!("the API did not start") };
            let labels = cpu::Labels { me: "colloquy + bench clients".into(), children: broker_pid };
            (Colloquy::InProcess(running), vec![port], labels, deps.pool.clone())
        }
    };
    eprintln!("[bench] colloquy listening on {ports:?}");

    let measured = measure(args, tag, &ports, &labels, extras).await;
    drop(fake);
    // The rebuild is compared with the live read model: let it apply everything first.
    if measured.is_ok() && extras {
        messages_caught_up(&pool, Duration::from_secs(120)).await?;
    }

    colloquy.stop().await;
    if let Err(e) = forget_redis_keys(&settings.redis.url, &settings.redis.key_prefix).await {
        eprintln!("[bench] warning: could not delete this run's Redis keys: {e}");
    }
    let mut report = measured?;
    if !extras {
        pool.close().await;
        return Ok(report);
    }
    eprintln!("[bench] rebuild messages");
    report.rebuild = Some(rebuild_messages(&pool, settings).await?);
    pool.close().await;

    // pgbench runs with colloquy stopped: the relay would otherwise try to publish the
    // rows pgbench inserts, and the figure is meant to be Postgres's own ceiling.
    eprintln!("[bench] pgbench: {} clients, {} s", args.pgbench_clients, args.pgbench_seconds);
    report.pgbench = Some(pgbench(args, tag, db_url).await?);
    Ok(report)
}

/// The fake's instant model as the default (and only) model.
fn instant_model(settings: &mut Settings, fake: &colloquy_providers::testing::FakeProvider) {
    use colloquy_infra::assistant_settings::{ModelSettings, ProviderKind, ProviderSettings};
    let a = &mut settings.assistant;
    a.providers.clear();
    a.models.clear();
    let entry = ProviderSettings {
        kind: ProviderKind::Openai,
        base_url: fake.base_url(),
        api_key: Some("bench".into()),
        ..ProviderSettings::default()
    };
    a.providers.insert("fake".into(), entry);
    a.models.insert(
        "fake".into(),
        ModelSettings { route: vec!["fake/instant".into()], context_window: 8192, max_output_tokens: 64 },
    );
    a.default_model = "fake".into();
    a.worker.max_concurrent_replies = 256;
}

/// colloquy's settings for one bench run on `db_url`.
fn bench_settings(args: &Args, tag: &str, db_url: &str) -> Settings {
    let mut settings = Settings::default();
    settings.database.url = db_url.to_string();
    if let Some(pool) = args.db_pool {
        settings.database.max_connections = pool;
    }
    // Unique topic, consumer-group and key prefixes: runs never see each other's data.
    settings.kafka.topic_prefix = format!("bench{tag}.");
    settings.redis.key_prefix = format!("colloquy-bench-{tag}:");
    settings.http.port = 0;
    settings.http.ops_port = Some(0);
    if let Some(wait) = args.fetch_wait_ms {
        settings.kafka.fetch_wait_max_ms = wait;
    }
    // One user sends everything, far above the production per-user limit.
    settings.rate_limit.per_minute = 10_000_000;
    settings.rate_limit.burst = 10_000_000;
    // Unlimited, as far as a settings file can say (TOML integers are 64-bit signed).
    let unlimited = i64::MAX as u64;
    settings.quotas.messages_per_day = unlimited;
    settings.quotas.stored_bytes = unlimited;
    settings.quotas.conversations = unlimited;
    settings.quotas.tokens_per_day = unlimited;
    settings.quotas.tokens_per_month = unlimited;
    settings.log.filter = "warn".into();
    // A local, throwaway instance like `colloquy dev`: the development key is fine.
    settings.auth.allow_published_keys = true;
    settings
}

/// The HTTP phases, against a running colloquy listening on `ports` (the load's connections
/// are spread over them; everything else uses the first). `extras`: also long/new.
async fn measure(args: &Args, tag: &str, ports: &[u16], labels: &cpu::Labels, extras: bool) -> anyhow::Result<Report> {
    let bases: Vec<String> = ports.iter().map(|port| format!("http://127.0.0.1:{port}/api/v1")).collect();
    let base = bases.first().context("no API port")?;
    let api = Api::login(http_client(4)?, base, tag).await?;
    let mut report = Report::default();

    // The writers: `api` and `--users` - 1 more, each with its share of the conversations.
    let mut writers = vec![api.clone()];
    for u in 1..args.users.max(1) {
        writers.push(Api::login(http_client(4)?, base, &format!("{tag}-w{u}")).await?);
    }
    eprintln!("[bench] creating {} conversations of {} users", args.conversations, writers.len());
    let mut owned = Vec::new();
    for (u, writer) in writers.iter().enumerate() {
        let share = args.conversations / writers.len() + usize::from(u < args.conversations % writers.len());
        let conversations = Arc::new(create_conversations(writer, share, "load").await?);
        wait_for_conversations(writer, &conversations).await?;
        owned.push((writer.clone(), conversations));
    }

    // A second user who only reads while the first one writes: the cached queries.
    let reader = Api::login(http_client(1)?, base, &format!("{tag}-reader")).await?;
    let listed = Arc::new(create_conversations(&reader, 20, "read").await?);
    wait_for_conversations(&reader, &listed).await?;

    eprintln!("[bench] load: {} connections for {} s", args.connections, args.seconds);
    report.load = Some(load(args, &owned, &bases, reader, labels).await?);
    if !extras {
        return Ok(report);
    }

    eprintln!("[bench] long vs new conversation");
    report.long_new = Some(long_vs_new(args, &api).await?);
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// A keep-alive HTTP/1.1 client holding at most `idle` idle connections.
fn http_client(idle: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(idle)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// An authenticated API client.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// Registers a user and logs it in.
    async fn login(client: reqwest::Client, base: &str, tag: &str) -> anyhow::Result<Self> {
        let email = format!("bench-{tag}@example.com");
        let password = format!("bench-password-{tag}");
        let register = json!({"email": email, "full_name": "Bench User", "password": password});
        let response = client.post(format!("{base}/auth/register")).json(&register).send().await?;
        expect(response.status(), StatusCode::CREATED, "register", &response.text().await?)?;
        let response = client
            .post(format!("{base}/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        expect(status, StatusCode::OK, "login", &body.to_string())?;
        let token = body["access_token"].as_str().context("login answered no access_token")?.to_string();
        Ok(Self { client, base: base.to_string(), token })
    }

    /// The same identity over another client (another connection pool).
    fn with_client(&self, client: reqwest::Client) -> Self {
        Self { client, ..self.clone() }
    }

    /// The same identity and client against another API instance.
    fn at(&self, base: &str) -> Self {
        Self { base: base.to_string(), ..self.clone() }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value), reqwest::Error> {
        let request = self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(body);
        Self::send(request).await
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Value), reqwest::Error> {
        Self::send(self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token)).await
    }

    /// Sends and reads the whole body (a body that is not JSON reads as `null`).
    async fn send(request: reqwest::RequestBuilder) -> Result<(StatusCode, Value), reqwest::Error> {
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// Posts one message; `Ok` only on 201.
    async fn post_message(&self, conversation: Uuid, content: String) -> Result<Posted, Failure> {
        match self.post(&format!("/conversations/{conversation}/messages"), &json!({"content": content})).await {
            Ok((StatusCode::CREATED, body)) => {
                let version = body["version"].as_i64().ok_or(Failure::Malformed)?;
                let message_id = body["message_id"].as_str().ok_or(Failure::Malformed)?.to_string();
                Ok(Posted { version, message_id })
            }
            Ok((status, _)) => Err(Failure::Status(status)),
            Err(_) => Err(Failure::Transport),
        }
    }
}

/// A committed message.
#[derive(Clone)]
struct Posted {
    version: i64,
    message_id: String,
}

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Status(StatusCode),
    Transport,
    Malformed,
}

fn expect(got: StatusCode, want: StatusCode, what: &str, body: &str) -> anyhow::Result<()> {
    if got != want {
        bail!("{what}: expected {want}, got {got}: {body}");
    }
    Ok(())
}

/// Runs `f(0..count)` on `workers` concurrent tasks; results in index order.
async fn parallel<T, F, Fut>(workers: usize, count: usize, f: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..workers.max(1) {
        let (next, f) = (next.clone(), f.clone());
        set.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(done);
                }
                done.push((i, f(i).await?));
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(joined) = set.join_next().await {
        all.extend(joined??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

async fn create_conversations(api: &Api, count: usize, label: &'static str) -> anyhow::Result<Vec<Uuid>> {
    let api = api.clone();
    parallel(16, count, move |i| {
        let api = api.clone();
        async move {
            let (status, body) = api.post("/conversations", &json!({"title": format!("bench {label} {i}")})).await?;
            expect(status, StatusCode::CREATED, "create conversation", &body.to_string())?;
            body["conversation_id"].as_str().context("no conversation_id")?.parse::<Uuid>().context("conversation_id")
        }
    })
    .await
}

/// Waits until the read model knows every conversation, so the load starts with the
/// projectors idle and lag checkers never see a 404 for a conversation that exists.
async fn wait_for_conversations(api: &Api, conversations: &Arc<Vec<Uuid>>) -> anyhow::Result<()> {
    let (api, ids) = (api.clone(), conversations.clone());
    parallel(16, ids.len(), move |i| {
        let (api, id) = (api.clone(), ids[i]);
        // min_version makes the server wait (up to its own limit) for the projection.
        async move { wait_until_ok(&api, &format!("/conversations/{id}?min_version=1")).await }
    })
    .await?;
    Ok(())
}

/// How long the setup waits for the read model.
const WAIT_FOR_READ_MODEL_SECS: u64 = 300;

/// GETs `path` until it answers 200 (at most [`WAIT_FOR_READ_MODEL_SECS`]).
async fn wait_until_ok(api: &Api, path: &str) -> anyhow::Result<()> {
    // Generous: on a saturated machine the read model may trail the setup by minutes, and
    // a bench that gives up reports nothing.
    let give_up = Instant::now() + Duration::from_secs(WAIT_FOR_READ_MODEL_SECS);
    loop {
        if let Ok((StatusCode::OK, _)) = api.get(path).await {
            return Ok(());
        }
        if Instant::now() > give_up {
            bail!("GET {path} did not answer 200 within {WAIT_FOR_READ_MODEL_SECS} s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Load and lag
// ---------------------------------------------------------------------------------------

/// Outcomes by kind: successes, error statuses, transport failures.
#[derive(Debug, Default, Clone)]
struct Tally {
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    transport: u64,
    malformed: u64,
}

impl Tally {
    fn fail(&mut self, failure: Failure) {
        match failure {
            Failure::Status(s) => *self.statuses.entry(s.as_u16()).or_default() += 1,
            Failure::Transport => self.transport += 1,
            Failure::Malformed => self.malformed += 1,
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.ok += other.ok;
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.transport += other.transport;
        self.malformed += other.malformed;
    }

    fn failures(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport + self.malformed
    }

    fn describe_failures(&self) -> String {
        let mut parts: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{n}× HTTP {s}")).collect();
        if self.transport > 0 {
            parts.push(format!("{}× transport error", self.transport));
        }
        if self.malformed > 0 {
            parts.push(format!("{}× malformed 201 body", self.malformed));
        }
        parts.join(", ")
    }
}

/// One lag sample.
struct LagSample {
    /// When the command's response arrived.
    acked: Instant,
    /// When a read first showed the message; `None`: not within the lag timeout.
    seen: Option<Instant>,
    polls: u64,
    /// Polls answered with something other than 200 or 404, or not at all.
    poll_errors: u64,
}

/// What one load task saw.
struct WorkerResult {
    latencies: Vec<Duration>,
    tally: Tally,
    stopped: Instant,
    /// Lag checks still running when the load stopped, or finished.
    checks: JoinSet<LagSample>,
    lag_skipped: u64,
    /// The task's last acknowledged command, with the reader that may see it.
    last: Option<(Api, Uuid, Posted, Instant)>,
}

/// The load phase's figures.
struct LoadResult {
    elapsed: Duration,
    latencies: Vec<Duration>,
    tally: Tally,
    /// Lags, `NEVER` for samples not seen within the timeout.
    lags: Vec<Duration>,
    /// Median lag of the samples acknowledged in each third of the load phase: a rising
    /// series means the relay or projectors fall behind and a backlog builds up.
    lag_thirds: [Option<Duration>; 3],
    lag_timeouts: u64,
    lag_skipped: u64,
    lag_polls: u64,
    lag_poll_errors: u64,
    /// From the last command's response until the read model showed every connection's
    /// last command; `None` if one never showed.
    drain: Option<Duration>,
    /// CPU per command and cores busy, per process, over the load phase.
    cpu: Vec<(String, f64, f64)>,
    /// Context switches per command of colloquy's processes over the load phase.
    switches: Vec<(String, f64)>,
    /// The reading user's queries during the load.
    queries: CachedQueries,
}

/// Latencies of another user's cached queries while the load runs.
#[derive(Default)]
struct CachedQueries {
    /// `GET /conversations` (the first page of the list).
    list: Vec<Duration>,
    /// `GET /users/me`.
    profile: Vec<Duration>,
    /// Answers other than 200, or none.
    errors: u64,
}

/// Runs [`cached_queries`] on a thread and a runtime of its own, with a client of its own.
/// The bench's runtime is kept busy by the load's connections and the lag checkers, and a
/// reader queued behind them would time the load generator rather than colloquy (a real
/// client is a process of its own).
fn cached_queries_apart(
    reader: Api,
    deadline: Instant,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<CachedQueries>>> {
    Ok(std::thread::Builder::new().name("bench-reader".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let reader = reader.with_client(http_client(1)?);
        Ok(runtime.block_on(cached_queries(reader, deadline)))
    })?)
}

/// Until `deadline`, asks for `reader`'s conversation list and profile in turn, one request
/// every 10 ms on one connection. The reader changes nothing, so after the first request of
/// each both are served from the Redis cache (the writer's own list is not: every batch of
/// its messages makes it stale).
async fn cached_queries(reader: Api, deadline: Instant) -> CachedQueries {
    let mut seen = CachedQueries::default();
    // Untimed: opens the connection and fills both caches.
    for path in ["/conversations?limit=20", "/users/me"] {
        if !matches!(reader.get(path).await, Ok((StatusCode::OK, _))) {
            seen.errors += 1;
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for turn in 0u64.. {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let (path, into) = match turn % 2 {
            0 => ("/conversations?limit=20", &mut seen.list),
            _ => ("/users/me", &mut seen.profile),
        };
        let sent = Instant::now();
        match reader.get(path).await {
            Ok((StatusCode::OK, _)) => into.push(sent.elapsed()),
            _ => seen.errors += 1,
        }
    }
    seen
}

/// The load phase: `owned` holds each writing user with their conversations.
async fn load(
    args: &Args,
    owned: &[(Api, Arc<Vec<Uuid>>)],
    bases: &[String],
    reader: Api,
    labels: &cpu::Labels,
) -> anyhow::Result<LoadResult> {
    let workers = args.connections.max(1);
    let users = owned.len().max(1);
    let checkers = Arc::new(Semaphore::new(args.lag_checkers));
    // Checkers share one pool of their own, so they never queue behind a load connection.
    let checker_client = http_client(args.lag_checkers)?;
    let sequence = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu::CpuSample::take(labels);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);

    let mut set = JoinSet::new();
    for w in 0..workers {
        // Task w writes as user u = w mod users and owns the k-th of every K of that user's
        // conversations (k = w / users, K = the user's tasks): no two connections ever write
        // to the same conversation at once, so no optimistic-concurrency conflicts are
        // manufactured (each conversation has one writer at a time, as with real users).
        let (user, conversations) = &owned[w % users];
        let tasks = (workers - w % users).div_ceil(users);
        let mine: Vec<Uuid> = conversations.iter().skip(w / users).step_by(tasks).copied().collect();
        if mine.is_empty() {
            continue;
        }
        let worker = LoadWorker {
            // Connection w talks to API instance w mod n, as a load balancer would spread them.
            api: user.with_client(http_client(1)?).at(&bases[w % bases.len().max(1)]),
            checker_api: user.with_client(checker_client.clone()),
            conversations: mine,
            deadline,
            lag_every: args.lag_every.max(1),
            poll: Duration::from_millis(args.lag_poll_ms),
            timeout: Duration::from_secs(args.lag_timeout),
            checkers: checkers.clone(),
            sequence: sequence.clone(),
            pace: args.rate.filter(|r| *r > 0.0).map(|rate| {
                let every = Duration::from_secs_f64(workers as f64 / rate);
                // Spread the connections' first commands over one interval.
                (start + every.mul_f64(w as f64 / workers as f64), every)
            }),
        };
        set.spawn(worker.run());
    }
    let queries = cached_queries_apart(reader, deadline)?;

    let mut result = LoadResult {
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        tally: Tally::default(),
        lags: Vec::new(),
        lag_thirds: [None; 3],
        lag_timeouts: 0,
        lag_skipped: 0,
        lag_polls: 0,
        lag_poll_errors: 0,
        drain: None,
        cpu: Vec::new(),
        switches: Vec::new(),
        queries: CachedQueries::default(),
    };
    let mut last_stop = start;
    let mut pending = Vec::new();
    let mut lasts = Vec::new();
    while let Some(joined) = set.join_next().await {
        let w = joined?;
        last_stop = last_stop.max(w.stopped);
        result.latencies.extend(w.latencies);
        result.tally.merge(&w.tally);
        result.lag_skipped += w.lag_skipped;
        lasts.extend(w.last);
        pending.push(w.checks);
    }
    // Throughput counts until the last connection's last response, not until the last
    // lag checker finished.
    result.elapsed = last_stop - start;
    let cpu_after = cpu::CpuSample::take(labels);
    result.cpu = cpu_before.per_unit(&cpu_after, result.tally.ok, result.elapsed);
    // colloquy's own processes: PostgreSQL's backends come and go, and the broker's,
    // Redis's and the clients' threads are not colloquy's to change.
    result.switches = cpu_before.switches_per_unit(&cpu_after, result.tally.ok, |kind| {
        !matches!(kind, "postgres" | "redis" | "bench clients") && !kind.starts_with("broker")
    });
    result.queries = tokio::task::spawn_blocking(move || queries.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the cached-query reader panicked"))??;
    result.drain = drain(lasts, last_stop, Duration::from_secs(args.lag_timeout)).await;

    let mut thirds: [Vec<Duration>; 3] = Default::default();
    for mut checks in pending {
        while let Some(joined) = checks.join_next().await {
            let Ok(sample) = joined else { continue };
            result.lag_polls += sample.polls;
            result.lag_poll_errors += sample.poll_errors;
            let lag = match sample.seen {
                Some(seen) => seen - sample.acked,
                None => {
                    result.lag_timeouts += 1;
                    NEVER
                }
            };
            let third = (3.0 * (sample.acked - start).as_secs_f64() / args.seconds) as usize;
            thirds[third.min(2)].push(lag);
            result.lags.push(lag);
        }
    }
    for (median, third) in result.lag_thirds.iter_mut().zip(thirds.iter_mut()) {
        *median = percentile(third, 0.50);
    }
    Ok(result)
}

/// How long after the load stopped the read model showed every connection's last command
/// (`None`: not within `timeout` of its acknowledgement). The commands are checked one at a
/// time, not with one poller each: a message already visible when its turn comes costs a
/// single poll and cannot raise the maximum, so the latest moment is still found (to within
/// a poll) without 32 more pollers competing with the projectors for the CPU.
async fn drain(lasts: Vec<(Api, Uuid, Posted, Instant)>, stopped: Instant, timeout: Duration) -> Option<Duration> {
    let mut latest = stopped;
    for (api, conversation, posted, acked) in lasts {
        let check = Check { api, conversation, posted, acked, poll: Duration::from_millis(5), timeout };
        latest = latest.max(check.run(None).await.seen?);
    }
    Some(latest - stopped)
}

struct LoadWorker {
    api: Api,
    checker_api: Api,
    conversations: Vec<Uuid>,
    deadline: Instant,
    lag_every: u64,
    poll: Duration,
    timeout: Duration,
    checkers: Arc<Semaphore>,
    sequence: Arc<AtomicU64>,
    /// With `--rate`: when this connection sends first, and how often.
    pace: Option<(Instant, Duration)>,
}

impl LoadWorker {
    async fn run(self) -> WorkerResult {
        let mut latencies = Vec::new();
        let mut tally = Tally::default();
        let mut lag_skipped = 0;
        let mut checks = JoinSet::new();
        let mut last_posted = None;
        let mut next = 0;
        let mut pace = self.pace.map(|(first, every)| {
            let mut ticks = tokio::time::interval_at(first.into(), every);
            // A connection that fell behind sends at once, without a burst to catch up.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        while Instant::now() < self.deadline {
            if let Some(ticks) = &mut pace {
                ticks.tick().await;
                if Instant::now() >= self.deadline {
                    break;
                }
            }
            let conversation = self.conversations[next % self.conversations.len()];
            next += 1;
            let n = self.sequence.fetch_add(1, Ordering::Relaxed);
            let sent = Instant::now();
            let outcome = self.api.post_message(conversation, format!("bench message {n}")).await;
            let acked = Instant::now();
            match outcome {
                Ok(posted) => {
                    tally.ok += 1;
                    latencies.push(acked - sent);
                    last_posted = Some((conversation, posted.clone(), acked));
                    if n % self.lag_every == 0 {
                        // Never wait for a checker: a busy pool skips the sample instead of
                        // slowing the load down.
                        match self.checkers.clone().try_acquire_owned() {
                            Ok(permit) => {
                                let check = Check {
                                    api: self.checker_api.clone(),
                                    conversation,
                                    posted,
                                    acked,
                                    poll: self.poll,
                                    timeout: self.timeout,
                                };
                                checks.spawn(check.run(Some(permit)));
                            }
                            Err(_) => lag_skipped += 1,
                        }
                    }
                }
                Err(failure) => tally.fail(failure),
            }
        }
        // Running checks are handed over, not awaited: the drain is timed from now.
        let last =
            last_posted.map(|(conversation, posted, acked)| (self.checker_api.clone(), conversation, posted, acked));
        WorkerResult { latencies, tally, stopped: Instant::now(), checks, lag_skipped, last }
    }
}

/// One lag measurement: `posted` was acknowledged at `acked` in `conversation`.
struct Check {
    api: Api,
    conversation: Uuid,
    posted: Posted,
    acked: Instant,
    poll: Duration,
    timeout: Duration,
}

impl Check {
    /// Polls the messages read model until it shows the message; the lag runs from the
    /// command's acknowledgement to the response that first shows it. The permit (if any)
    /// is held until then.
    async fn run(self, _permit: Option<OwnedSemaphorePermit>) -> LagSample {
        // Message sequence numbers are the conversation's event versions.
        let path = format!("/conversations/{}/messages?after={}&limit=1", self.conversation, self.posted.version - 1);
        let mut sample = LagSample { acked: self.acked, seen: None, polls: 0, poll_errors: 0 };
        loop {
            sample.polls += 1;
            match self.api.get(&path).await {
                Ok((StatusCode::OK, body))
                    if body["items"][0]["message_id"].as_str() == Some(self.posted.message_id.as_str()) =>
                {
                    sample.seen = Some(Instant::now());
                    return sample;
                }
                // Not projected yet.
                Ok((StatusCode::OK | StatusCode::NOT_FOUND, _)) => {}
                _ => sample.poll_errors += 1,
            }
            let waited = self.acked.elapsed();
            if waited > self.timeout {
                return sample;
            }
            tokio::time::sleep(poll_pause(self.poll, waited)).await;
        }
    }
}

/// The pause before a lag checker's next poll, `waited` after the acknowledgement: `poll`
/// at first, then a twentieth of the time waited, so a sample is late by at most 5 % (or
/// one `poll`) while a long lag costs a checker about a hundred polls, not one every `poll`:
/// pollers that kept hammering a lagging read model would add to the very lag they measure.
fn poll_pause(poll: Duration, waited: Duration) -> Duration {
    poll.max(waited / 20)
}

// ---------------------------------------------------------------------------------------
// Long vs new conversation
// ---------------------------------------------------------------------------------------

struct LongNewResult {
    long: Vec<Duration>,
    new: Vec<Duration>,
    fill: Duration,
    fill_retries: u64,
    tally: Tally,
}

async fn long_vs_new(args: &Args, api: &Api) -> anyhow::Result<LongNewResult> {
    let fresh = create_conversations(api, args.samples, "fresh").await?;
    let long = create_conversations(api, 1, "long").await?;
    let long = *long.first().context("no long conversation")?;

    // Fill the long conversation. Concurrent posters to one conversation do conflict; the
    // server retries a few times and may still answer 409, in which case we post again.
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let versions = {
        let (api, retries) = (api.clone(), retries.clone());
        parallel(args.fill_concurrency, args.long_messages, move |i| {
            let (api, retries) = (api.clone(), retries.clone());
            async move {
                for _ in 0..50 {
                    match api.post_message(long, format!("filler {i}")).await {
                        Ok(posted) => return Ok(posted.version),
                        Err(Failure::Status(StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE)) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(failure) => bail!("filling the long conversation: {failure:?}"),
                    }
                }
                bail!("filling the long conversation: still conflicting after 50 attempts")
            }
        })
        .await?
    };
    let fill = started.elapsed();
    let last = versions.into_iter().max().unwrap_or(0);

    // Let the relay and projectors drain the fill before measuring, so both series see an
    // idle system (the server waits for the version itself, up to its own limit).
    wait_until_ok(api, &format!("/conversations/{long}/messages?after={}&limit=1&min_version={last}", last - 1))
        .await?;

    // Interleave long and new posts: background noise (a late projector batch, a
    // checkpoint) then hits both series alike instead of whichever ran second.
    let mut result = LongNewResult {
        long: Vec::new(),
        new: Vec::new(),
        fill,
        fill_retries: retries.load(Ordering::Relaxed),
        tally: Tally::default(),
    };
    for (i, conversation) in fresh.iter().enumerate() {
        for (target, series) in [(long, 0), (*conversation, 1)] {
            let sent = Instant::now();
            match api.post_message(target, format!("measured {i}")).await {
                Ok(_) => {
                    result.tally.ok += 1;
                    let latency = sent.elapsed();
                    if series == 0 {
                        result.long.push(latency)
                    } else {
                        result.new.push(latency)
                    }
                }
                Err(failure) => result.tally.fail(failure),
            }
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------------------

/// One event per transaction, shaped like a `UserMessagePosted` colloquy appends (same
/// table, same columns, payload and metadata of similar size). A random aggregate id
/// keeps the primary key free of conflicts.
const PGBENCH_SCRIPT: &str = r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
VALUES ('PgBench', md5(random()::text), 1, 'UserMessagePosted', '1.0',
        '{"UserMessagePosted":{"message_id":"0b0e2f4e-5d6a-4c1e-9a43-2b7f3c1d9e10","author_id":"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","content":"bench message 123456"}}',
        '{"actor":"user:6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","correlation_id":"5e8a7d6c-1b2a-4f3e-9d8c-7b6a5f4e3d2c"}');
"#;

struct PgbenchResult {
    tps: f64,
    transactions: Option<u64>,
    failed: Option<u64>,
}

/// `pgbench` on PATH, else the newest Debian-packaged one.
fn pgbench_binary() -> PathBuf {
    let on_path = std::process::Command::new("pgbench").arg("--version").output().is_ok_and(|o| o.status.success());
    if on_path {
        return PathBuf::from("pgbench");
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from("pgbench"))
}

async fn pgbench(args: &Args, tag: &str, db_url: &str) -> anyhow::Result<PgbenchResult> {
    let script = std::env::temp_dir().join(format!("colloquy-bench-{tag}.sql"));
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let output = tokio::process::Command::new(pgbench_binary())
        .args(["-n", "-j", "2"])
        .args(["-c", &args.pgbench_clients.to_string(), "-T", &args.pgbench_seconds.to_string()])
        .arg("-f")
        .arg(&script)
        .arg(db_url)
        .output()
        .await;
    let _ = std::fs::remove_file(&script);
    let output = output.context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench failed ({}): {}{}", output.status, stdout, String::from_utf8_lossy(&output.stderr));
    }
    let field =
        |prefix: &str| stdout.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::trim).map(str::to_string));
    // "tps = 4567.890123 (without initial connection time)"
    let tps = field("tps =")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()))
        .with_context(|| format!("no tps line in pgbench's output:\n{stdout}"))?;
    let count =
        |prefix: &str| field(prefix).and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()));
    Ok(PgbenchResult {
        tps,
        transactions: count("number of transactions actually processed:"),
        failed: count("number of failed transactions:"),
    })
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// Deletes the keys this run created (rate limits, cache generations).
async fn forget_redis_keys(url: &str, prefix: &str) -> redis::RedisResult<()> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    /// How often the bench's broker exited and was restarted.
    broker_restarts: u64,
    load: Option<LoadResult>,
    long_new: Option<LongNewResult>,
    rebuild: Option<RebuildResult>,
    pgbench: Option<PgbenchResult>,
}

/// Waits until the messages projection has applied every conversation event in the store.
async fn messages_caught_up(pool: &sqlx::PgPool, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT aggregate_id, max(sequence) AS last FROM events
                                    WHERE aggregate_type = 'Conversation' GROUP BY aggregate_id) e
               LEFT JOIN projection_state p ON p.projection = 'messages' AND p.aggregate_id = e.aggregate_id
              WHERE coalesce(p.last_sequence, 0) < e.last",
        )
        .fetch_one(pool)
        .await?;
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the messages read model was still {behind} conversations behind after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `colloquy rebuild messages` over everything the run wrote.
struct RebuildResult {
    events: u64,
    elapsed: Duration,
    /// Whether the rebuilt table holds exactly what the live one held.
    identical: bool,
}

/// Rebuilds the messages read model from the event store (as `colloquy rebuild messages`
/// does) with colloquy stopped, timed, and compares the result with the live table it
/// replaced, row for row.
async fn rebuild_messages(pool: &sqlx::PgPool, settings: &Settings) -> anyhow::Result<RebuildResult> {
    let projection =
        colloquy_projections::by_name("messages", &settings.assistant.prices).context("no messages projection")?;
    // Every column of every row, in key order: equal digests, equal tables.
    let digest = "SELECT md5(coalesce(string_agg(m::text, '|' ORDER BY m.message_id), '')) FROM rm_messages m";
    let live: String = sqlx::query_scalar(digest).fetch_one(pool).await?;
    let start = Instant::now();
    let report = colloquy_projections::rebuild::rebuild(pool, projection.as_ref()).await?;
    let elapsed = start.elapsed();
    let rebuilt: String = sqlx::query_scalar(digest).fetch_one(pool).await?;
    Ok(RebuildResult { events: report.events, elapsed, identical: live == rebuilt && report.quarantined.is_empty() })
}

/// Nearest-rank percentile of `values` (sorted here); `None` if there are none.
fn percentile(values: &mut [Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// Milliseconds, for ratios and target checks (`NaN` when there is nothing to compare, so
/// every comparison with it is false).
fn millis(d: Option<Duration>) -> f64 {
    match d {
        Some(d) if d != NEVER => d.as_secs_f64() * 1_000.0,
        Some(_) => f64::INFINITY,
        None => f64::NAN,
    }
}

/// A duration for people: `12.3 ms`, `> 60 s` for `NEVER`, `n/a` for nothing.
fn show(d: Option<Duration>, timeout: u64) -> String {
    match d {
        Some(NEVER) => format!("> {timeout} s"),
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1_000.0),
        None => "n/a".into(),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

impl Report {
    /// Successful commands per second of the load phase (`NaN` without one).
    fn commands_per_sec(&self) -> f64 {
        self.load.as_ref().map_or(f64::NAN, |l| l.tally.ok as f64 / l.elapsed.as_secs_f64())
    }

    fn print(mut self, args: &Args, layout: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out)?;
        writeln!(out, "=== colloquy-bench ===")?;
        writeln!(out, "layout: {layout}")?;
        writeln!(out, "replies: {:?}", args.replies)?;
        let mut commands_per_sec = f64::NAN;
        let mut lag_p99 = f64::NAN;
        let mut ratio = f64::NAN;
        let mut problems = Vec::new();
        let t = args.lag_timeout;

        if let Some(load) = &mut self.load {
            let secs = load.elapsed.as_secs_f64();
            commands_per_sec = load.tally.ok as f64 / secs;
            writeln!(
                out,
                "commands/s: {commands_per_sec:.1}  ({} commands in {secs:.1} s, {} connections, {} conversations of {} users{})",
                load.tally.ok,
                args.connections,
                args.conversations,
                args.users.max(1),
                args.rate.map_or(String::new(), |r| format!(", paced at {r}/s"))
            )?;
            let (p50, p99) = (percentile(&mut load.latencies, 0.50), percentile(&mut load.latencies, 0.99));
            writeln!(out, "latency p50: {}  p99: {}", show(p50, t), show(p99, t))?;
            writeln!(out, "CPU per command: {}", cpu::describe(&load.cpu))?;
            writeln!(out, "context switches per command: {}", cpu::describe_switches(&load.switches))?;
            let (p50, p99) = (percentile(&mut load.lags, 0.50), percentile(&mut load.lags, 0.99));
            lag_p99 = millis(p99);
            writeln!(
                out,
                "lag p50: {}  p99: {}  ({} samples of every {}th command, {} of them not seen within {t} s; {} skipped, all {} checkers busy; {} GET polls)",
                show(p50, t),
                show(p99, t),
                load.lags.len(),
                args.lag_every,
                load.lag_timeouts,
                load.lag_skipped,
                args.lag_checkers,
                load.lag_polls
            )?;
            let [a, b, c] = load.lag_thirds;
            writeln!(
                out,
                "lag p50 by third of the load phase: {} / {} / {};  read model caught up with the load {} after it stopped",
                show(a, t),
                show(b, t),
                show(c, t),
                load.drain.map_or(format!("more than {t} s"), |d| format!("{:.0} ms", d.as_secs_f64() * 1_000.0))
            )?;
            let q = &mut load.queries;
            writeln!(
                out,
                "cached queries of another user during the load: list p50 {} p99 {}, profile p50 {} p99 {}  ({} + {} requests)",
                show(percentile(&mut q.list, 0.50), t),
                show(percentile(&mut q.list, 0.99), t),
                show(percentile(&mut q.profile, 0.50), t),
                show(percentile(&mut q.profile, 0.99), t),
                q.list.len(),
                q.profile.len()
            )?;
            if q.errors > 0 {
                problems.push(format!("cached queries: {} requests not answered 200", q.errors));
            }
            if load.tally.failures() > 0 {
                problems.push(format!("load: {}", load.tally.describe_failures()));
            }
            if load.lag_timeouts > 0 {
                problems.push(format!("lag: {} samples not visible within {t} s", load.lag_timeouts));
            }
            if load.lag_poll_errors > 0 {
                problems.push(format!("lag: {} polls failed (neither 200 nor 404)", load.lag_poll_errors));
            }
        }

        if let Some(r) = &self.rebuild {
            let secs = r.elapsed.as_secs_f64();
            writeln!(
                out,
                "rebuild messages: {} events in {secs:.2} s = {:.0} events/s  (rebuilt read model identical to the live one: {})",
                r.events,
                r.events as f64 / secs,
                if r.identical { "yes" } else { "NO" }
            )?;
            if !r.identical {
                problems.push("rebuild: the rebuilt messages read model differs from the live one".to_string());
            }
        }

        if let Some(pg) = &self.pgbench {
            writeln!(
                out,
                "pgbench raw append: {:.1} tps   ratio: {:.2}  (commands/s ÷ tps; -c {} -j 2 -T {}, {} inserts, {} failed)",
                pg.tps,
                commands_per_sec / pg.tps,
                args.pgbench_clients,
                args.pgbench_seconds,
                pg.transactions.map_or("?".into(), |n| n.to_string()),
                pg.failed.map_or("?".into(), |n| n.to_string())
            )?;
            if let Some(failed) = pg.failed.filter(|n| *n > 0) {
                problems.push(format!("pgbench: {failed} failed transactions"));
            }
        }

        if let Some(ln) = &mut self.long_new {
            let (long, new) = (millis(percentile(&mut ln.long, 0.50)), millis(percentile(&mut ln.new, 0.50)));
            ratio = long / new;
            writeln!(
                out,
                "long ({} msgs) p50: {long:.2} ms  new p50: {new:.2} ms  ratio: {ratio:.2}  ({} + {} sequential posts, interleaved; fill took {:.1} s, {} conflict retries)",
                args.long_messages,
                ln.long.len(),
                ln.new.len(),
                ln.fill.as_secs_f64(),
                ln.fill_retries
            )?;
            if ln.tally.failures() > 0 {
                problems.push(format!("long/new: {}", ln.tally.describe_failures()));
            }
        }

        if self.broker_restarts > 0 {
            problems.push(format!("the broker exited and was restarted {} times", self.broker_restarts));
        }
        // NaN (nothing measured) compares false, so it reads as missed.
        writeln!(
            out,
            "targets: ≥ {TARGET_COMMANDS_PER_SEC} commands/s {}; lag p99 ≤ {TARGET_LAG_P99_MS} ms {}; long/new ≤ {TARGET_LONG_NEW_RATIO} {}",
            verdict(commands_per_sec >= TARGET_COMMANDS_PER_SEC),
            verdict(lag_p99 <= TARGET_LAG_P99_MS),
            verdict(ratio <= TARGET_LONG_NEW_RATIO)
        )?;
        if problems.is_empty() {
            writeln!(out, "errors: none (every measured request answered 2xx)")?;
        } else {
            writeln!(out, "errors: {}", problems.join("; "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_polls_stay_fine_early_and_few_when_the_lag_is_long() {
        let poll = Duration::from_millis(2);
        assert_eq!(poll_pause(poll, Duration::from_millis(10)), poll);
        assert_eq!(poll_pause(poll, Duration::from_secs(1)), Duration::from_millis(50));
        // Polls until a sample times out at 60 s: a fine grid first, then 5 % steps.
        let (mut waited, mut polls) = (Duration::ZERO, 0);
        while waited < Duration::from_secs(60) {
            waited += poll_pause(poll, waited);
            polls += 1;
        }
        assert!((150..250).contains(&polls), "{polls} polls");
    }
}
