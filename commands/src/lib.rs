//! The application layer of the write side: one entry point per use case (`users.rs`,
//! `sessions.rs`, `conversations.rs`), called alike by HTTP handlers, workers and the CLI. Each owns its
//! command metadata, idempotency, credential checks and authorisation; underneath, the
//! command service loads an aggregate, lets it decide and appends its events.

pub mod access_checks;
pub mod api_chats;
pub mod api_keys;
pub mod assistant;
pub mod branches;
pub mod caller;
pub mod command_service;
pub mod conversations;
pub mod credentials;
pub mod errors;
pub mod files;
pub mod idempotency;
pub mod imports;
pub mod ingest;
pub mod knowledge;
pub mod models;
pub mod quotas;
pub mod replies;
pub mod sessions;
pub mod shares;
pub mod snapshots;
pub mod users;

use std::sync::Arc;

use colloquy_domain::conversation::ConversationServices;
use colloquy_domain::{Conversation, File, KnowledgeDocument, User};
use colloquy_infra::event_store::EventStoreMessages;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::passwords::PasswordHasher;
use colloquy_infra::settings::QuotaSettings;
use sqlx::PgPool;

pub use caller::Caller;
pub use command_service::{Actor, CommandError, CommandMeta, CommandService, Committed};
pub use errors::{Failure, UseCaseError};
pub use idempotency::{Answer, IdempotencyKey};

/// Every write-side use case, over one Postgres pool.
pub struct Commands {
    users: CommandService<User>,
    conversations: CommandService<Conversation>,
    files: CommandService<File>,
    knowledge: CommandService<KnowledgeDocument>,
    credentials: credentials::Credentials,
    sessions: sessions::Sessions,
    hasher: PasswordHasher,
    idempotency: idempotency::Idempotency,
    quotas: quotas::Quotas,
    models: models::ModelCatalog,
    pool: PgPool,
}

/// What the write side is configured with.
#[derive(Debug, Clone, Copy)]
pub struct CommandSettings {
    /// Concurrent password hashes at most.
    pub hash_concurrency: usize,
    /// Password hashes that may wait for a slot; past that, hashing fails at once with
    /// `PasswordError::Overloaded`.
    pub hash_queue: usize,
    /// How long an Idempotency-Key is remembered.
    pub idempotency_ttl_hours: u32,
    /// How long a refresh token lives, in seconds.
    pub refresh_token_ttl_secs: u64,
}

impl Default for CommandSettings {
    fn default() -> Self {
        Self {
            hash_concurrency: 4,
            hash_queue: colloquy_infra::passwords::DEFAULT_QUEUE,
            idempotency_ttl_hours: 24,
            refresh_token_ttl_secs: 30 * 24 * 3600,
        }
    }
}

impl Commands {
    /// The use cases on `pool`.
    pub fn new(pool: PgPool, metrics: Metrics, settings: CommandSettings) -> Self {
        let messages = Arc::new(EventStoreMessages::new(pool.clone()));
        Self {
            users: CommandService::new(pool.clone(), (), metrics.clone()),
            conversations: CommandService::new(pool.clone(), ConversationServices::new(messages), metrics.clone()),
            files: CommandService::new(pool.clone(), (), metrics.clone()),
            knowledge: CommandService::new(pool.clone(), (), metrics),
            credentials: credentials::Credentials::new(pool.clone()),
            sessions: sessions::Sessions::new(pool.clone(), settings.refresh_token_ttl_secs),
            hasher: PasswordHasher::bounded(settings.hash_concurrency, settings.hash_queue),
            idempotency: idempotency::Idempotency::new(pool.clone(), settings.idempotency_ttl_hours),
            quotas: quotas::Quotas::new(pool.clone(), QuotaSettings::default()),
            models: models::ModelCatalog::default(),
            pool,
        }
    }

    /// How long an unfinished request holds its Idempotency-Key before the same request may
    /// run again (default [`idempotency::IN_PROGRESS_LEASE_SECS`]).
    pub fn with_idempotency_lease(mut self, lease: std::time::Duration) -> Self {
        self.idempotency = self.idempotency.with_lease(lease);
        self
    }

    /// The same use cases with these per-user quotas (default: [`QuotaSettings::default`]).
    pub fn with_quotas(mut self, limits: QuotaSettings) -> Self {
        self.quotas = quotas::Quotas::new(self.quotas.pool().clone(), limits);
        self
    }

    /// The same use cases answering with the models of `catalog` (default: the local model only).
    pub fn with_models(mut self, catalog: models::ModelCatalog) -> Self {
        self.models = catalog;
        self
    }

    /// The quota counters.
    pub fn quotas(&self) -> &quotas::Quotas {
        &self.quotas
    }
}
