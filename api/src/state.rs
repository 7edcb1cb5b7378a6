//! What every handler can reach: the state of each HTTP worker, with connections of its own,
//! made from what the workers of a process share.

use std::sync::Arc;
use std::time::Duration;

use colloquy_commands::access_checks::AccessChecks;
use colloquy_commands::Commands;
use colloquy_infra::file_storage::FileStorage;
use colloquy_infra::ops::Scrape;
use colloquy_infra::reply_streams::ReplyStreams;
use colloquy_infra::Settings;
use colloquy_projections::queries::Queries;
use colloquy_providers::embeddings::Embedder;
use colloquy_infra::postgres;
use colloquy_infra::redis_store::RedisStore;
use sqlx::PgPool;

use crate::rate_limit::RateLimiter;
use crate::streams::hub::Hub;
use crate::tokens::Tokens;

/// Session-check statements in flight at once per HTTP worker. One: while it runs, the
/// checks of requests arriving meanwhile queue and the next statement answers all of them,
/// so the busier the worker, the fewer statements per request (`session_checks_total` ÷
/// `session_check_statements_total` on `/metrics` is the mean batch). A request waits at
/// most for the statement in flight and its own.
const SESSION_CHECK_LANES: usize = 1;

/// One HTTP worker's application state: its connections (a pool and a Redis connection of
/// its own, opened on the worker's runtime, see [`postgres::pool_for_worker`]) and handles to
/// what the process's workers share.
pub struct AppState {
    /// The settings the app was built with.
    pub settings: Settings,
    /// The write-side use cases.
    pub commands: Commands,
    /// The read-side queries.
    pub queries: Queries,
    /// Access tokens.
    pub tokens: Arc<Tokens>,
    /// The session check of every authenticated request (this worker's concurrent ones share
    /// a statement).
    pub access: AccessChecks,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Metrics and their probes.
    pub scrape: Scrape,
    /// This worker's pool: the readiness check, and conversation ownership checks of the
    /// reply routes (one primary-key read of the event store).
    pub pool: PgPool,
    /// This worker's Redis connection, for the readiness check.
    pub redis: RedisStore,
    /// The reply streams in Redis.
    pub streams: ReplyStreams,
    /// This instance's fan-out of reply entries to its SSE and WebSocket clients.
    pub hub: Hub,
    /// Uploaded files.
    pub storage: FileStorage,
    /// The knowledge base's embedder, for vector search (`None`: text search only).
    pub embedder: Option<Arc<dyn Embedder>>,
}

/// What the HTTP workers of a process share, built once on the process's main runtime.
pub(crate) struct Shared {
    pub settings: Settings,
    /// The use cases on the process's pool; each worker's copy runs on its own pool and
    /// shares their in-process queues and caches.
    pub commands: Commands,
    pub tokens: Arc<Tokens>,
    pub scrape: Scrape,
    /// The process's pool, whose server and settings the workers' pools copy.
    pub pool: PgPool,
    /// The process's Redis connection: the reply streams, and any worker that could not
    /// open its own.
    pub redis: RedisStore,
    pub streams: ReplyStreams,
    pub hub: Hub,
    pub storage: FileStorage,
    pub embedder: Option<Arc<dyn Embedder>>,
    pub min_version_wait: Duration,
    /// Connections in each worker's pool.
    pub pool_per_worker: u32,
}

impl Shared {
    /// The state of the HTTP worker whose runtime calls this: its connections are opened
    /// here, on that runtime, and its session checker runs there.
    pub async fn for_worker(&self) -> AppState {
        let metrics = self.scrape.metrics.clone();
        let pool = postgres::pool_for_worker(&self.pool, &self.settings.database, self.pool_per_worker).await;
        let redis = match self.redis.connect_again().await {
            Ok(redis) => redis,
            Err(e) => {
                tracing::warn!(error = %e, "An HTTP worker could not open its Redis connection; it shares the process's.");
                self.redis.clone()
            }
        };
        let commands = self.commands.on_pool(pool.clone());
        let access = commands.access_checks(SESSION_CHECK_LANES, metrics.clone());
        AppState {
            settings: self.settings.clone(),
            commands,
            access,
            queries: Queries::new(pool.clone(), redis.clone(), metrics, self.min_version_wait),
            tokens: self.tokens.clone(),
            limiter: RateLimiter::new(redis.clone(), self.settings.rate_limit.clone()),
            scrape: self.scrape.clone(),
            pool,
            redis,
            streams: self.streams.clone(),
            hub: self.hub.clone(),
            storage: self.storage.clone(),
            embedder: self.embedder.clone(),
        }
    }
}
