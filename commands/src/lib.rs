//! The application layer of the write side: one entry point per use case (`users.rs`,
//! `conversations.rs`), called alike by HTTP handlers, workers and the CLI. Each owns its
//! command metadata, idempotency, credential checks and authorisation; underneath, the
//! command service loads an aggregate, lets it decide and appends its events.

pub mod caller;
pub mod command_service;
pub mod conversations;
pub mod credentials;
pub mod errors;
pub mod idempotency;
pub mod quotas;
pub mod users;

use std::sync::Arc;

use colloquy_domain::conversation::ConversationServices;
use colloquy_domain::{Conversation, User};
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
    credentials: credentials::Credentials,
    hasher: PasswordHasher,
    idempotency: idempotency::Idempotency,
    quotas: quotas::Quotas,
}

/// What the write side is configured with.
#[derive(Debug, Clone, Copy)]
pub struct CommandSettings {
    /// Concurrent password hashes at most.
    pub hash_concurrency: usize,
    /// How long an Idempotency-Key is remembered.
    pub idempotency_ttl_hours: u32,
}

impl Commands {
    /// The use cases on `pool`.
    pub fn new(pool: PgPool, metrics: Metrics, settings: CommandSettings) -> Self {
        let messages = Arc::new(EventStoreMessages::new(pool.clone()));
        Self {
            users: CommandService::new(pool.clone(), (), metrics.clone()),
            conversations: CommandService::new(pool.clone(), ConversationServices::new(messages), metrics),
            credentials: credentials::Credentials::new(pool.clone()),
            hasher: PasswordHasher::new(settings.hash_concurrency),
            idempotency: idempotency::Idempotency::new(pool.clone(), settings.idempotency_ttl_hours),
            quotas: quotas::Quotas::new(pool, QuotaSettings::default()),
        }
    }

    /// The same use cases with these per-user quotas (default: [`QuotaSettings::default`]).
    pub fn with_quotas(mut self, limits: QuotaSettings) -> Self {
        self.quotas = quotas::Quotas::new(self.quotas.pool().clone(), limits);
        self
    }

    /// The quota counters.
    pub fn quotas(&self) -> &quotas::Quotas {
        &self.quotas
    }
}
