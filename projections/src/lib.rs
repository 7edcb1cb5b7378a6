//! The pipeline after the event store, one module per stage: the relay (event store →
//! Kafka), the projector (Kafka → read models, through the projections), rebuilds from the
//! event store alone, reconciliation of the read models with the store, the quarantine of
//! aggregates with poison events, and the queries the API serves from the read models.

pub mod cache;
pub mod conversations;
pub mod export;
pub mod files;
pub mod freshness;
pub mod knowledge;
pub mod knowledge_queries;
pub mod messages;
pub mod projection;
pub mod projector;
pub mod quarantine;
pub mod queries;
pub mod rebuild;
pub mod reconcile;
pub mod relay;
pub mod shares;
pub mod usage;
pub mod users;

use std::sync::Arc;

use colloquy_infra::assistant_settings::PriceTable;

pub use projection::{ApplyError, Projection};

/// Every projection, by name; the usage ledger's priced with `prices`.
pub fn all(prices: &PriceTable) -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(users::UsersProjection),
        Arc::new(conversations::ConversationsProjection),
        Arc::new(messages::MessagesProjection),
        Arc::new(files::FilesProjection),
        Arc::new(knowledge::KnowledgeProjection),
        Arc::new(usage::UsageProjection::new(prices.clone())),
        Arc::new(shares::SharesProjection),
    ]
}

/// The projection called `name` (the usage ledger's priced with `prices`).
pub fn by_name(name: &str, prices: &PriceTable) -> Option<Arc<dyn Projection>> {
    all(prices).into_iter().find(|p| p.name() == name)
}
