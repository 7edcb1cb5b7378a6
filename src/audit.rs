//! The audit tooling: an aggregate's history and its state at any version, and
//! `colloquy verify`'s checks of the event store and of what Kafka holds.

use std::collections::HashMap;

use anyhow::Context;
use colloquy_domain::registry::{self, AggregateType};
use colloquy_infra::event_store::{self, EventKey, SeenOnKafka, SequenceGap, StoredEvent};
use colloquy_infra::kafka::Topics;
use colloquy_infra::kafka_reader::{Record, TopicReader};
use colloquy_infra::settings::KafkaSettings;
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
    /// Aggregates a projection set aside after a poison event (see `colloquy quarantine`).
    pub quarantined: Vec<colloquy_projections::quarantine::Quarantined>,
    /// What Kafka holds compared with the store (absent when not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaReport>,
}

/// Kafka's topics compared with the event store.
#[derive(Debug, Default, serde::Serialize)]
pub struct KafkaReport {
    /// Records read.
    pub records: u64,
    /// Distinct stored events found on their topic.
    pub matched: u64,
    /// Further copies of events already found (redeliveries: harmless).
    pub duplicates: u64,
    /// Published events (at or before the relay's checkpoint) found on no record.
    pub missing_count: i64,
    /// The first of them, in commit order.
    pub missing: Vec<MissingEvent>,
    /// Records that match no stored event (or not in every field): forged or corrupt.
    pub forged_count: u64,
    /// The first of them.
    pub forged: Vec<ForgedRecord>,
}

/// A published event no record carries.
#[derive(Debug, serde::Serialize)]
pub struct MissingEvent {
    /// Its topic.
    pub topic: String,
    /// `<type>/<id>`.
    pub aggregate: String,
    /// Its sequence.
    pub sequence: i64,
    /// Its id.
    pub event_id: uuid::Uuid,
}

/// A record that does not match the store.
#[derive(Debug, serde::Serialize)]
pub struct ForgedRecord {
    /// Where it is.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// What is wrong with it.
    pub reason: String,
}

/// How many missing events and forged records a report lists (all are counted).
const LISTED: usize = 100;

/// Records compared per statement.
const BATCH: usize = 1_000;

impl KafkaReport {
    fn forged(&mut self, topic: &str, r: &Record, reason: String) {
        self.forged_count += 1;
        if self.forged.len() < LISTED {
            self.forged.push(ForgedRecord {
                topic: topic.to_string(),
                partition: r.partition,
                offset: r.offset,
                reason,
            });
        }
    }
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
        self.sequence_gaps.is_empty()
            && self.undecodable.is_empty()
            && self.kafka.as_ref().is_none_or(|k| k.missing_count == 0 && k.forged_count == 0)
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
    // Names and aggregate types only: prices do not matter here.
    for projection in colloquy_projections::all(&Default::default()) {
        let behind =
            event_store::aggregates_ahead_of_projection(pool, projection.name(), projection.aggregate_types()).await?;
        report.projections_behind.insert(projection.name().to_string(), behind);
    }
    report.relay_lag = colloquy_projections::relay::lag(pool, relay_name).await?;
    report.quarantined = colloquy_projections::quarantine::list(pool, None).await?;
    Ok(report)
}

/// Reads every event topic to its end and compares it with the event store: every event
/// the relay has published (up to its checkpoint) must be on its topic, and every record
/// must be a stored event, identical in id, sequence, aggregate and content. Memory stays
/// bounded: records are compared a batch at a time (one statement each), and the set of
/// events seen is kept in a temporary table on the database side.
pub async fn verify_kafka(pool: &PgPool, kafka: &KafkaSettings, relay_name: &str) -> anyhow::Result<KafkaReport> {
    let published = colloquy_projections::relay::checkpoint(pool, relay_name).await?;
    // A connection of its own, closed afterwards (its temporary table goes with it).
    let mut conn = pool.acquire().await?.detach();
    let seen = SeenOnKafka::create(&mut conn).await?;
    let topics = Topics::new(kafka);
    let mut report = KafkaReport::default();
    let mut types = Vec::new();
    for aggregate in colloquy_domain::aggregates() {
        let topic = topics.events(aggregate.name);
        types.push(aggregate.name.to_string());
        let mut reader = TopicReader::open(kafka, &topic).await.with_context(|| format!("reading {topic}"))?;
        while let Some(batch) = reader.next_batch(BATCH).await.with_context(|| format!("reading {topic}"))? {
            report.records += batch.len() as u64;
            let mut decoded = Vec::with_capacity(batch.len());
            for r in &batch {
                match colloquy_infra::cloudevents::decode(&r.payload) {
                    Ok(e) if e.aggregate_type == aggregate.name => decoded.push((r, e)),
                    Ok(e) => report.forged(&topic, r, format!("a {} event on this topic", e.aggregate_type)),
                    Err(e) => report.forged(&topic, r, format!("not a CloudEvent of ours: {e}")),
                }
            }
            let keys: Vec<EventKey> = decoded.iter().map(|(_, e)| EventKey::of(e)).collect();
            let stored: HashMap<EventKey, Result<StoredEvent, event_store::EventStoreError>> =
                event_store::find_events(&mut conn, &keys).await?.into_iter().collect();
            let mut present = Vec::with_capacity(keys.len());
            for ((r, record), key) in decoded.iter().zip(keys) {
                match stored.get(&key) {
                    Some(Ok(real)) => match record.mismatch(real) {
                        None => present.push(key),
                        Some(field) => {
                            report.forged(&topic, r, format!("{key:?}: its {field} differs from the store's"))
                        }
                    },
                    // The stored copy is unreadable (reported with the store's checks); the
                    // record is there all the same.
                    Some(Err(_)) => present.push(key),
                    None => report.forged(&topic, r, format!("{key:?} is not in the event store")),
                }
            }
            let new = seen.record(&mut conn, &present).await?;
            report.matched += new;
            report.duplicates += present.len() as u64 - new;
        }
    }
    let (count, listed) = seen.missing(&mut conn, &types, published, LISTED as i64).await?;
    seen.drop_table(&mut conn).await?;
    report.missing_count = count;
    report.missing = listed
        .into_iter()
        .map(|(key, event_id)| MissingEvent {
            topic: topics.events(&key.aggregate_type),
            aggregate: format!("{}/{}", key.aggregate_type, key.aggregate_id),
            sequence: key.sequence,
            event_id,
        })
        .collect();
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
