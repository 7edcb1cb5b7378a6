//! The pipeline after the event store, one module per stage: the relay (event store →
//! Kafka), the projector (Kafka → read models, through the projections), rebuilds from the
//! event store alone, reconciliation of the read models with the store, the quarantine of
//! aggregates with poison events, and the queries the API serves from the read models.

pub mod cache;
pub mod conversations;
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
pub mod users;

use std::sync::Arc;

pub use projection::{ApplyError, Projection};

/// Every projection, by name.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(users::UsersProjection),
        Arc::new(conversations::ConversationsProjection),
        Arc::new(messages::MessagesProjection),
        Arc::new(files::FilesProjection),
        Arc::new(knowledge::KnowledgeProjection),
    ]
}

/// The projection called `name`.
pub fn by_name(name: &str) -> Option<Arc<dyn Projection>> {
    all().into_iter().find(|p| p.name() == name)
}
