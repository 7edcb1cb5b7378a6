//! What every handler can reach.

use colloquy_commands::credentials::Credentials;
use colloquy_commands::CommandService;
use colloquy_domain::{Conversation, User};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::redis_store::RedisStore;
use colloquy_infra::Settings;
use sqlx::PgPool;

use crate::auth::Tokens;
use crate::rate_limit::RateLimiter;

/// Shared application state.
pub struct AppState {
    /// The settings the app was built with.
    pub settings: Settings,
    /// Postgres.
    pub pool: PgPool,
    /// Redis.
    pub redis: RedisStore,
    /// User commands.
    pub users: CommandService<User>,
    /// Conversation commands.
    pub conversations: CommandService<Conversation>,
    /// Registration and login.
    pub credentials: Credentials,
    /// Access tokens.
    pub tokens: Tokens,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Metrics.
    pub metrics: Metrics,
}
