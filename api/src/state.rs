//! What every handler can reach.

use std::sync::Arc;

use colloquy_commands::access_checks::AccessChecks;
use colloquy_commands::Commands;
use colloquy_infra::file_storage::FileStorage;
use colloquy_infra::ops::Scrape;
use colloquy_infra::reply_streams::ReplyStreams;
use colloquy_infra::Settings;
use colloquy_projections::queries::Queries;
use colloquy_providers::embeddings::Embedder;
use sqlx::PgPool;

use crate::rate_limit::RateLimiter;
use crate::streams::hub::Hub;
use crate::tokens::Tokens;

/// Shared application state.
pub struct AppState {
    /// The settings the app was built with.
    pub settings: Settings,
    /// The write-side use cases.
    pub commands: Commands,
    /// The read-side queries.
    pub queries: Queries,
    /// Access tokens.
    pub tokens: Tokens,
    /// The session check of every authenticated request (concurrent ones share a statement).
    pub access: AccessChecks,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Metrics and their probes.
    pub scrape: Scrape,
    /// Postgres: the readiness check, and conversation ownership checks of the reply routes
    /// (one primary-key read of the event store).
    pub pool: PgPool,
    /// Redis, for the readiness check only.
    pub redis: colloquy_infra::redis_store::RedisStore,
    /// The reply streams in Redis.
    pub streams: ReplyStreams,
    /// This instance's fan-out of reply entries to its SSE and WebSocket clients.
    pub hub: Hub,
    /// Uploaded files.
    pub storage: FileStorage,
    /// The knowledge base's embedder, for vector search (`None`: text search only).
    pub embedder: Option<Arc<dyn Embedder>>,
}
