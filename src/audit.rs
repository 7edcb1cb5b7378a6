//! The audit tooling: an aggregate's history and its state at any version.

use anyhow::Context;
use colloquy_domain::registry::{self, AggregateType};
use colloquy_infra::event_store::{self, SequenceGap, StoredEvent};
use serde_json::Value;
use sqlx::PgPool;

fn registered(aggregate_type: &str) -> anyhow::Result<&'static AggregateType> {
    registry::find(aggregate_type).with_context(|| {
        let known: Vec<&str> = colloquy_domain::aggregates().iter().map(|a| a.name).collect();
        format!("unknown aggregate type {aggregate_type} (registered: {})", known.join(", "))
    })
}

/// Every event of one aggregate, in order.
pub async fn history(pool: &PgPool, aggregate_type: &str, aggregate_id: &str) -> anyhow::Result<Vec<StoredEvent>> {
    let aggregate = registered(aggregate_type)?;
    Ok(event_store::read_aggregate(pool, aggregate.name, aggregate_id, 0, None).await?)
}

/// The aggregate's state after `version` (all events when `None`), replayed from the store.
pub async fn state_at(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    version: Option<i64>,
) -> anyhow::Result<Value> {
    let aggregate = registered(aggregate_type)?;
    let events = event_store::read_aggregate(pool, aggregate.name, aggregate_id, 0, version).await?;
    anyhow::ensure!(!events.is_empty(), "{aggregate_type} {aggregate_id} has no events");
    let tagged: Vec<Value> = events.iter().map(StoredEvent::tagged).collect();
    Ok(aggregate.replay(&tagged)?)
}

/// What `colloquy verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Events read.
    pub events: u64,
    /// Aggregates whose sequences are not exactly 1..n.
    pub sequence_gaps: Vec<SequenceGap>,
    /// Events that do not decode into their aggregate's event type.
    pub undecodable: Vec<Undecodable>,
    /// Per projection, how many aggregates it has not fully applied yet (lag, not damage).
    pub projections_behind: std::collections::BTreeMap<String, i64>,
    /// Events not yet published by the relay.
    pub relay_lag: i64,
}

/// An event that cannot be read back.
#[derive(Debug, serde::Serialize)]
pub struct Undecodable {
    /// Its id.
    pub event_id: uuid::Uuid,
    /// Its aggregate.
    pub aggregate: String,
    /// Its sequence.
    pub sequence: i64,
    /// Why.
    pub error: String,
}

impl VerifyReport {
    /// True when the log itself is sound (lag is reported, not judged).
    pub fn is_sound(&self) -> bool {
        self.sequence_gaps.is_empty() && self.undecodable.is_empty()
    }
}

/// Checks the event store: gap-free sequences per aggregate, every event decodable, and how
/// far the relay and each projection are behind.
pub async fn verify(pool: &PgPool, relay_name: &str) -> anyhow::Result<VerifyReport> {
    let mut report = VerifyReport { sequence_gaps: event_store::sequence_gaps(pool).await?, ..Default::default() };
    // Every committed event, in commit order, a page at a time.
    let mut cursor = event_store::LogCursor::default();
    loop {
        let page = event_store::read_committed(pool, cursor, None, 1_000).await?;
        let Some((_, last)) = page.last() else { break };
        cursor = *last;
        for (e, _) in &page {
            report.events += 1;
            let decoded = match registry::find(&e.aggregate_type) {
                Some(aggregate) => aggregate.decode(e.tagged()).map_err(|e| e.to_string()),
                None => Err(format!("{} is not a registered aggregate type", e.aggregate_type)),
            };
            if let Err(error) = decoded {
                report.undecodable.push(Undecodable {
                    event_id: e.event_id,
                    aggregate: format!("{}/{}", e.aggregate_type, e.aggregate_id),
                    sequence: e.sequence,
                    error,
                });
            }
        }
    }
    for projection in colloquy_projections::all() {
        let behind =
            event_store::aggregates_ahead_of_projection(pool, projection.name(), projection.aggregate_types()).await?;
        report.projections_behind.insert(projection.name().to_string(), behind);
    }
    report.relay_lag = colloquy_projections::relay::lag(pool, relay_name).await?;
    Ok(report)
}

/// Writes every committed event (optionally of one aggregate
/// type) as CloudEvents, one JSON object per line, in commit order — the records the relay
/// publishes, for auditors and for back-filling consumers whose Kafka retention ran out.
pub async fn export(pool: &PgPool, aggregate_type: Option<&str>, mut out: impl std::io::Write) -> anyhow::Result<u64> {
    let types = aggregate_type.map(|t| vec![t.to_string()]);
    let mut cursor = event_store::LogCursor::default();
    let mut written = 0u64;
    loop {
        let page = event_store::read_committed(pool, cursor, types.as_deref(), 1_000).await?;
        let Some((_, last)) = page.last() else { break };
        cursor = *last;
        for (e, _) in &page {
            out.write_all(&colloquy_infra::cloudevents::encode(e)?)?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(written)
}
