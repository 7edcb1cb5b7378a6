//! Starts colloquy's processes: the API, the relay and the projectors, alone or together.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use colloquy_commands::assistant::{Assistant, AssistantDeps, Grounding};
use colloquy_commands::ingest::{Ingest, IngestDeps};
use colloquy_commands::{CommandSettings, Commands};
use colloquy_extract::{ChunkSettings, Limits};
use colloquy_infra::assistant_settings::ProviderKind;
use colloquy_infra::file_storage::FileStorage;
use colloquy_infra::reply_streams::ReplyStreams;
use colloquy_local::LocalChat;
use colloquy_local::MiniLm;
use colloquy_providers::embeddings::{Embedder, OpenAiEmbedder};
use colloquy_providers::openai::OpenAiCompatible;
use colloquy_providers::router::{http_providers, Router};
use colloquy_providers::ChatProvider;
use cqrs_es::Aggregate;

use colloquy_api::Application;
use colloquy_commands::idempotency::Idempotency;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::ops::{self, Readiness, Scrape};
use colloquy_infra::redis_store::RedisStore;
use colloquy_infra::{kafka, postgres, Settings};
use colloquy_projections::projector::{self, Projector};
use colloquy_projections::reconcile::Reconciler;
use colloquy_projections::relay::{LagProbe, Relay};
use colloquy_projections::Projection;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The connections the selected processes need.
pub struct Deps {
    /// Postgres.
    pub pool: PgPool,
    /// Redis, when a selected process uses it (the API and the projectors' caches).
    pub redis: Option<RedisStore>,
    /// Metrics.
    pub metrics: Metrics,
}

/// Connects Postgres (migrating if configured), and Redis when `which` needs it.
pub async fn connect(settings: &Settings, which: Processes) -> anyhow::Result<Deps> {
    // Creation and migration are safe for any number of processes starting at once.
    if settings.database.migrate_on_start && postgres::prepare(&settings.database).await? {
        tracing::info!("Database created.");
    }
    let pool = postgres::connect(&settings.database).await?;
    let redis = match which.api || which.projectors || which.assistant || which.ingest {
        true => Some(RedisStore::connect(&settings.redis).await?),
        false => None,
    };
    Ok(Deps { pool, redis, metrics: Metrics::new() })
}

/// How often expired idempotency keys are forgotten, so the table stays small.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Which processes to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Processes {
    /// The HTTP API.
    pub api: bool,
    /// The relay.
    pub relay: bool,
    /// The projectors.
    pub projectors: bool,
    /// The assistant worker.
    pub assistant: bool,
    /// The ingest worker.
    pub ingest: bool,
}

impl Processes {
    /// Everything (`colloquy dev`).
    pub fn all() -> Self {
        Self { api: true, relay: true, projectors: true, assistant: true, ingest: true }
    }
}

/// Running processes.
pub struct Running {
    /// The API's port, if it runs.
    pub port: Option<u16>,
    shutdown: CancellationToken,
    /// The process's HTTP listener: the API, or the metrics/health listener of workers.
    http: Option<actix_web::dev::ServerHandle>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops everything gracefully: the API finishes in-flight requests, projectors commit
    /// their offsets, the relay flushes its producer.
    pub async fn stop(mut self) {
        if let Some(http) = &self.http {
            http.stop(true).await;
        }
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Signals every process to stop (the API without finishing requests; workers finish
    /// their batch, commit and close their clients) without waiting; then [`Running::wait`]
    /// from anywhere, on any runtime.
    pub fn begin_stop(&mut self) {
        if let Some(http) = self.http.take() {
            tokio::spawn(async move { http.stop(false).await });
        }
        self.shutdown.cancel();
    }

    /// Cancels every process's task at once.
    pub fn abort_tasks(&mut self) {
        self.tasks.abort_all();
    }

    /// Waits until every process ended (after `stop`, or a failure).
    pub async fn wait(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// The shutdown signal shared by the processes.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts the selected processes on `deps`. Topics are created first when Kafka is used.
pub async fn start(settings: &Settings, deps: &Deps, which: Processes) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut created = Vec::new();
    if which.relay || which.projectors || which.assistant || which.ingest {
        created = kafka::ensure_topics(&settings.kafka).await?;
        if !created.is_empty() {
            tracing::info!(?created, "Topics created.");
        }
    }
    if which.relay {
        let relay = Relay::new(deps.pool.clone(), &settings.kafka, settings.relay.clone(), deps.metrics.clone())?;
        let token = shutdown.clone();
        tasks.spawn(async move { relay.run(token).await });
    }
    if which.projectors {
        // Every group first lets the members of a killed predecessor expire (all at once),
        // unless its topics were created just now (then it never had members).
        let topics = kafka::Topics::new(&settings.kafka);
        let sets = projector::groups(colloquy_projections::all(&settings.assistant.prices));
        let groups: Vec<String> = sets
            .iter()
            .map(|set| set[0].aggregate_types())
            .filter(|types| !types.iter().all(|t| created.contains(&topics.events(t))))
            .map(|types| topics.group(&projector::group_name(types)))
            .collect();
        futures::future::join_all(groups.iter().map(|g| kafka::before_joining(&settings.kafka, g))).await;
        for projections in sets {
            spawn_projector(&mut tasks, settings, deps, projections, shutdown.clone())?;
        }
    }
    // One embedder for the processes of this one: loading the local one costs a fraction
    // of a second and about 90 MiB.
    let embedder = match which.api || which.assistant || which.ingest {
        true => Some(embedder(settings).await?),
        false => None,
    };
    if which.assistant && !settings.assistant.worker.enabled {
        tracing::warn!("The assistant is switched off (assistant.worker.enabled = false): messages stay unanswered.");
    }
    if which.assistant && settings.assistant.worker.enabled {
        spawn_assistant(&mut tasks, settings, deps, &created, embedder.clone(), shutdown.clone()).await?;
    }
    if let (true, Some(embedder)) = (which.ingest, &embedder) {
        spawn_ingest(&mut tasks, settings, deps, &created, embedder.clone(), shutdown.clone()).await?;
    }
    let mut port = None;
    let mut http = None;
    // Every process reports relay lag at scrape time, whichever process runs the relay.
    let scrape = Scrape::new(deps.metrics.clone())
        .with_probe(Arc::new(LagProbe::new(deps.pool.clone(), settings.relay.name.clone())));
    let ops_port = ops_port(settings, which);
    if !which.api && ops_port != 0 {
        // These processes use Postgres and Kafka; the projectors' caches use Redis too.
        let mut readiness = Readiness::default()
            .with("postgres", Arc::new(ops::PostgresCheck(deps.pool.clone())))
            .with("kafka", Arc::new(kafka::KafkaHealth::new(&settings.kafka, ops::CHECK_TIMEOUT)?));
        if let Some(redis) = &deps.redis {
            readiness = readiness.with("redis", Arc::new(ops::RedisCheck(redis.clone())));
        }
        match ops::ops_server(&settings.http.host, ops_port, scrape.clone(), readiness) {
            Ok((bound, server)) => {
                tracing::info!(port = bound, "Metrics and health listening.");
                http = Some(server.handle());
                tasks.spawn(async move {
                    let _ = server.await;
                });
            }
            Err(e) => tracing::warn!(port = ops_port, error = %e, "No metrics listener (port taken?)."),
        }
    }
    if let (true, Some(redis)) = (which.api, &deps.redis) {
        // The API gets its own pool, opened from this runtime (see `connect_for_http`).
        let api_pool = colloquy_infra::postgres::connect_for_http(&settings.database).await?;
        let app = Application::build(settings.clone(), api_pool, redis.clone(), scrape, embedder.clone())?;
        port = Some(app.port());
        http = Some(app.handle());
        tracing::info!(port = app.port(), "API listening.");
        let keys = Idempotency::new(deps.pool.clone(), settings.http.idempotency_ttl_hours);
        tasks.spawn(ops::every(PURGE_EVERY, shutdown.clone(), move || {
            let keys = keys.clone();
            async move {
                match keys.purge_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "Expired idempotency keys removed."),
                    Err(e) => tracing::warn!(error = ?e, "Could not purge idempotency keys."),
                }
            }
        }));
        tasks.spawn(async move {
            if let Err(e) = app.run_until_stopped().await {
                tracing::error!(error = %e, "API server failed.");
            }
        });
    }
    Ok(Running { port, shutdown, http, tasks })
}

/// The `/metrics` and `/health` port of a process without the API: `http.ops_port` when
/// set, else its role's own default, so a relay and a projector on one host both listen.
pub fn ops_port(settings: &Settings, which: Processes) -> u16 {
    let role_default = match (which.projectors, which.relay, which.assistant) {
        (true, _, _) => settings.http.project_ops_port,
        (false, true, _) => settings.http.relay_ops_port,
        (false, false, true) => settings.http.assistant_ops_port,
        (false, false, false) => settings.http.ingest_ops_port,
    };
    settings.http.ops_port.unwrap_or(role_default)
}

/// The provider router of `settings`: every configured HTTP provider, and the local model
/// when a route uses it (loaded from the data directory; nothing downloads).
pub async fn router(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Arc<Router>> {
    let assistant = &settings.assistant;
    if let Err(problems) = assistant.check() {
        let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::bail!("the assistant's configuration: {}", listed.join("; "));
    }
    let mut providers: HashMap<String, Arc<dyn ChatProvider>> = http_providers(assistant)?;
    for (name, provider) in &assistant.providers {
        if provider.kind != ProviderKind::Local || !assistant.routes_use(name) {
            continue;
        }
        let (dir, slots) = (assistant.local.models_dir.clone(), assistant.local.max_concurrent);
        match tokio::task::spawn_blocking(move || LocalChat::load(&dir, slots)).await? {
            Ok(local) => {
                providers.insert(name.clone(), Arc::new(local));
            }
            // A deployment whose default model is a remote one runs without the local
            // model's files: routes through it fail over to their next target.
            Err(e @ colloquy_local::LocalError::ModelMissing { .. }) if !default_is_local(assistant, name) => {
                tracing::warn!(provider = %name, error = %e, "The local model is not installed; routes through it skip it.");
            }
            Err(e) => return Err(e).with_context(|| format!("loading the local model of provider {name}")),
        }
    }
    Ok(Arc::new(Router::new(assistant.clone(), providers, metrics.registry())?))
}

/// Whether the default model's route starts with provider `name`.
fn default_is_local(assistant: &colloquy_infra::assistant_settings::AssistantSettings, name: &str) -> bool {
    assistant.models.get(&assistant.default_model).and_then(|m| m.route.first()).is_some_and(|target| {
        colloquy_infra::assistant_settings::split_target(target).is_some_and(|(provider, _)| provider == name)
    })
}

/// The knowledge base's embedder: the local all-MiniLM-L6-v2 (from the data directory;
/// nothing downloads), or an OpenAI-compatible embeddings API of `assistant.providers`.
pub async fn embedder(settings: &Settings) -> anyhow::Result<Arc<dyn Embedder>> {
    let knowledge = &settings.knowledge;
    if let Err(problems) = knowledge.check(&settings.assistant) {
        let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::bail!("the knowledge base's configuration: {}", listed.join("; "));
    }
    let e = &knowledge.embedder;
    if e.is_local() {
        let (dir, batch) = (settings.assistant.local.models_dir.clone(), e.batch_size);
        let local =
            tokio::task::spawn_blocking(move || MiniLm::load(&dir, 1)).await?.context("loading the local embedder")?;
        return Ok(Arc::new(local.with_batch_size(batch)));
    }
    let entry = settings.assistant.providers.get(&e.provider).context("the embedder's provider is not configured")?;
    let provider = Arc::new(OpenAiCompatible::new(&e.provider, entry)?);
    Ok(Arc::new(OpenAiEmbedder::new(provider, e.model.clone(), e.dimension, e.batch_size)))
}

async fn spawn_ingest(
    tasks: &mut JoinSet<()>,
    settings: &Settings,
    deps: &Deps,
    created: &[String],
    embedder: Arc<dyn Embedder>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let commands = Commands::new(deps.pool.clone(), deps.metrics.clone(), command_settings(settings));
    let topics = kafka::Topics::new(&settings.kafka);
    let ours = [topics.events(colloquy_domain::File::TYPE), topics.events(colloquy_domain::KnowledgeDocument::TYPE)];
    if !ours.iter().all(|t| created.contains(t)) {
        kafka::before_joining(&settings.kafka, &Ingest::group(&settings.kafka)).await;
    }
    let knowledge = &settings.knowledge;
    let deps = IngestDeps {
        commands: Arc::new(commands),
        pool: deps.pool.clone(),
        storage: FileStorage::from_settings(&settings.storage)?,
        embedder,
        chunking: ChunkSettings {
            max_tokens: knowledge.chunking.max_tokens,
            overlap_tokens: knowledge.chunking.overlap_tokens,
        },
        limits: Limits::default(),
        max_file_bytes: knowledge.uploads.max_bytes,
    };
    let worker = Ingest::new(&settings.kafka, deps)?;
    tasks.spawn(async move { worker.run(token).await });
    Ok(())
}

async fn spawn_assistant(
    tasks: &mut JoinSet<()>,
    settings: &Settings,
    deps: &Deps,
    created: &[String],
    embedder: Option<Arc<dyn Embedder>>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let redis = deps.redis.clone().context("the assistant needs Redis")?;
    let router = router(settings, &deps.metrics).await?;
    // With the configured quotas: the worker checks the token quotas before each call.
    let commands =
        Commands::new(deps.pool.clone(), deps.metrics.clone(), command_settings(settings)).with_quotas(settings.quotas);
    let topic = kafka::Topics::new(&settings.kafka).events(colloquy_domain::Conversation::TYPE);
    if !created.contains(&topic) {
        kafka::before_joining(&settings.kafka, &Assistant::group(&settings.kafka)).await;
    }
    let name = format!("assistant-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let worker = Assistant::new(
        &settings.kafka,
        settings.assistant.worker.clone(),
        name,
        AssistantDeps {
            commands: Arc::new(commands),
            pool: deps.pool.clone(),
            router,
            streams: ReplyStreams::new(&redis, &settings.streams),
            metrics: deps.metrics.clone(),
            grounding: embedder.map(|embedder| Grounding { embedder, passages: settings.knowledge.retrieval.passages }),
        },
    )?;
    tasks.spawn(async move { worker.run(token).await });
    Ok(())
}

/// The write side's settings, as every process that issues commands uses them.
pub fn command_settings(settings: &Settings) -> CommandSettings {
    CommandSettings {
        hash_concurrency: settings.auth.hash_concurrency,
        hash_queue: settings.auth.hash_queue,
        idempotency_ttl_hours: settings.http.idempotency_ttl_hours,
        refresh_token_ttl_secs: settings.auth.refresh_token_ttl_secs,
    }
}

fn spawn_projector(
    tasks: &mut JoinSet<()>,
    settings: &Settings,
    deps: &Deps,
    projections: Vec<Arc<dyn Projection>>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let projector = Projector::new(
        projections.clone(),
        &settings.kafka,
        deps.pool.clone(),
        deps.redis.clone(),
        deps.metrics.clone(),
    )?;
    let every = settings.projection.reconcile_interval_ms;
    for projection in projections.into_iter().filter(|_| every > 0) {
        let reconciler = Reconciler::new(
            projection,
            deps.pool.clone(),
            deps.redis.clone(),
            deps.metrics.clone(),
            Duration::from_millis(every),
            Duration::from_millis(settings.projection.reconcile_grace_ms),
        );
        let token = token.clone();
        tasks.spawn(async move { reconciler.run(token).await });
    }
    tasks.spawn(async move { projector.run(token).await });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_and_projector_get_ports_of_their_own() {
        let settings = Settings::default();
        let relay = ops_port(&settings, Processes { relay: true, ..Default::default() });
        let project = ops_port(&settings, Processes { projectors: true, ..Default::default() });
        assert_eq!((relay, project), (9464, 9465));
        let mut one = Settings::default();
        one.http.ops_port = Some(0);
        assert_eq!(ops_port(&one, Processes { projectors: true, ..Default::default() }), 0);
    }
}
