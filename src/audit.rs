//! The audit tooling: an aggregate's history and its state at any version.

use colloquy_domain::{Conversation, User};
use colloquy_infra::event_log::{self, StoredEvent};
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::PgPool;

/// Every event of one aggregate, in order.
pub async fn history(pool: &PgPool, aggregate_type: &str, aggregate_id: &str) -> anyhow::Result<Vec<StoredEvent>> {
    Ok(event_log::read_aggregate(pool, aggregate_type, aggregate_id, 0, None).await?)
}

fn fold<A: Aggregate>(events: &[StoredEvent]) -> anyhow::Result<Value> {
    let mut aggregate = A::default();
    for e in events {
        aggregate.apply(e.to_domain::<A::Event>()?);
    }
    Ok(serde_json::to_value(&aggregate)?)
}

/// The aggregate's state after `version` (all events when `None`), replayed from the store.
pub async fn state_at(pool: &PgPool, aggregate_type: &str, aggregate_id: &str, version: Option<i64>) -> anyhow::Result<Value> {
    let events = event_log::read_aggregate(pool, aggregate_type, aggregate_id, 0, version).await?;
    anyhow::ensure!(!events.is_empty(), "{aggregate_type} {aggregate_id} has no events");
    match aggregate_type {
        "User" => fold::<User>(&events),
        "Conversation" => fold::<Conversation>(&events),
        other => anyhow::bail!("unknown aggregate type {other}"),
    }
}
