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
pub async fn state_at(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    version: Option<i64>,
) -> anyhow::Result<Value> {
    let events = event_log::read_aggregate(pool, aggregate_type, aggregate_id, 0, version).await?;
    anyhow::ensure!(!events.is_empty(), "{aggregate_type} {aggregate_id} has no events");
    match aggregate_type {
        "User" => fold::<User>(&events),
        "Conversation" => fold::<Conversation>(&events),
        other => anyhow::bail!("unknown aggregate type {other}"),
    }
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

/// An aggregate whose event sequence has a hole or does not start at 1.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct SequenceGap {
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Number of events.
    pub events: i64,
    /// Lowest sequence.
    pub first: i64,
    /// Highest sequence.
    pub last: i64,
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
    let mut report = VerifyReport {
        sequence_gaps: sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, count(*) AS events, min(sequence) AS first, max(sequence) AS last
               FROM events GROUP BY aggregate_type, aggregate_id
             HAVING min(sequence) <> 1 OR max(sequence) <> count(*)
              ORDER BY aggregate_type, aggregate_id",
        )
        .fetch_all(pool)
        .await?,
        ..Default::default()
    };
    // Every committed event, in commit order, a page at a time.
    let mut cursor = event_log::LogCursor::default();
    loop {
        let page = event_log::read_committed(pool, cursor, None, 1_000).await?;
        let Some((_, last)) = page.last() else { break };
        cursor = *last;
        for (e, _) in &page {
            report.events += 1;
            let decoded = match e.aggregate_type.as_str() {
                "User" => e.to_domain::<<User as Aggregate>::Event>().map(|_| ()),
                "Conversation" => e.to_domain::<<Conversation as Aggregate>::Event>().map(|_| ()),
                _ => Ok(()),
            };
            if let Err(error) = decoded {
                report.undecodable.push(Undecodable {
                    event_id: e.event_id,
                    aggregate: format!("{}/{}", e.aggregate_type, e.aggregate_id),
                    sequence: e.sequence,
                    error: error.to_string(),
                });
            }
        }
    }
    for projection in colloquy_projections::all() {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (
                SELECT e.aggregate_id FROM events e
                  LEFT JOIN projection_state s ON s.projection = $1 AND s.aggregate_id = e.aggregate_id
                 WHERE e.aggregate_type = ANY($2)
                 GROUP BY e.aggregate_id
                HAVING max(e.sequence) > coalesce(max(s.last_sequence), 0)) AS behind",
        )
        .bind(projection.name())
        .bind(projection.aggregate_types())
        .fetch_one(pool)
        .await?;
        report.projections_behind.insert(projection.name().to_string(), behind);
    }
    report.relay_lag = colloquy_commands::relay::lag(pool, relay_name).await?;
    Ok(report)
}

/// Writes every committed event (optionally of one aggregate
/// type) as CloudEvents, one JSON object per line, in commit order — the records the relay
/// publishes, for auditors and for back-filling consumers whose Kafka retention ran out.
pub async fn export(pool: &PgPool, aggregate_type: Option<&str>, mut out: impl std::io::Write) -> anyhow::Result<u64> {
    let types = aggregate_type.map(|t| vec![t.to_string()]);
    let mut cursor = event_log::LogCursor::default();
    let mut written = 0u64;
    loop {
        let page = event_log::read_committed(pool, cursor, types.as_deref(), 1_000).await?;
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
