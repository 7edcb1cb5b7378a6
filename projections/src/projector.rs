//! The projector: a Kafka consumer that feeds the projections reading the same topics (one
//! consumer group per set of topics: the four projections of conversations share one) and
//! applies events in batches, one Postgres transaction per batch for all of them, storing
//! offsets only after that transaction committed. Every record is checked against the event
//! store before it is applied (one statement per batch): only the stored event is ever
//! applied, and a record the store does not hold, or holds differently, is refused.
//! Undecodable and refused records go to the dead-letter topic with the reason, once for
//! each projection (as a projector of its own would); a poison event also quarantines its
//! aggregate for the projection it poisoned (see [`crate::quarantine`]), while the other
//! projections apply it, and the projector moves on. Database outages are retried, not
//! skipped.
//!
//! Why one group per set of topics rather than per projection: every group fetches, decodes
//! and checks each record against the store, and opens a transaction per batch. Four groups
//! on the conversation topic did all of that four times per event, and under load the
//! broker's fetches and the per-batch statements cost more than the projections' own writes.
//! Each projection keeps its own progress (`projection_state`), quarantine, rebuild and
//! metrics, so nothing downstream of the consumer tells the difference.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use colloquy_infra::cloudevents;
use colloquy_infra::event_store::{self, EventKey, EventStoreError, StoredEvent};
use colloquy_infra::kafka::{consumer_config, producer_config, Topics};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::redis_store::RedisStore;
use colloquy_infra::settings::KafkaSettings;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::projection::{apply_batch, Applied, Projection};
use crate::{cache, quarantine};

/// Most messages applied in one transaction.
const MAX_BATCH: usize = 500;

/// Reports consumer lag from librdkafka's statistics, under the name of every projection the
/// consumer feeds (they share its lag).
pub struct LagContext {
    consumers: Vec<String>,
    metrics: Metrics,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0)
            .map(|p| p.consumer_lag.max(0))
            .sum();
        for consumer in &self.consumers {
            self.metrics.consumer_lag.with_label_values(&[consumer]).set(lag);
        }
    }
}

impl ConsumerContext for LagContext {}

/// One message, taken out of the consumer's buffers.
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl Received {
    fn from(m: &BorrowedMessage<'_>) -> Self {
        Self {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        }
    }
}

/// What the database part of a batch did: per projection (in the projector's order) and
/// per applied record (by its index in the batch) the outcome, and the records refused
/// with the reason.
struct Checked {
    outcomes: Vec<Vec<(usize, Applied)>>,
    refused: Vec<(usize, String)>,
}

/// Runs the projections of one set of topics from Kafka.
pub struct Projector {
    /// What it is called in logs and in its consumer group (`projectors.<types>`).
    name: String,
    projections: Vec<Arc<dyn Projection>>,
    consumer: StreamConsumer<LagContext>,
    dlq: FutureProducer,
    topics: Topics,
    pool: PgPool,
    redis: Option<RedisStore>,
    metrics: Metrics,
}

impl Projector {
    /// Subscribes to the topics of `projections`, which must all read the same aggregate
    /// types ([`groups`] sorts them so), in their shared consumer group ([`group_name`]).
    ///
    /// # Panics
    /// When `projections` is empty or its members read different topics: a programming error.
    pub fn new(
        projections: Vec<Arc<dyn Projection>>,
        kafka: &KafkaSettings,
        pool: PgPool,
        redis: Option<RedisStore>,
        metrics: Metrics,
    ) -> Result<Self, KafkaError> {
        let types = projections.first().map(|p| p.aggregate_types()).unwrap_or_default();
        assert!(
            !types.is_empty() && projections.iter().all(|p| p.aggregate_types() == types),
            "a projector's projections read the same topics"
        );
        let topics = Topics::new(kafka);
        let name = group_name(types);
        let group = topics.group(&name);
        for projection in &projections {
            // Publish every series from the start, so dashboards and alerts see zeros, not gaps.
            let label = projection.name();
            metrics.consumer_lag.with_label_values(&[label]).set(0);
            metrics.dlq_messages.with_label_values(&[label]).inc_by(0);
            metrics.projection_retries.with_label_values(&[label]).inc_by(0);
            for outcome in ["quarantined", "poison", "refused"] {
                metrics.projection_applied.with_label_values(&[label, outcome]).inc_by(0);
            }
        }
        let consumers = projections.iter().map(|p| p.name().to_string()).collect();
        let context = LagContext { consumers, metrics: metrics.clone() };
        let consumer: StreamConsumer<LagContext> =
            consumer_config(kafka, &group).set("statistics.interval.ms", "5000").create_with_context(context)?;
        let names: Vec<String> = types.iter().map(|t| topics.events(t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs)?;
        let dlq: FutureProducer = producer_config(kafka).create()?;
        Ok(Self { name, projections, consumer, dlq, topics, pool, redis, metrics })
    }

    /// The types of aggregate whose events it reads.
    fn aggregate_types(&self) -> &'static [&'static str] {
        self.projections.first().map(|p| p.aggregate_types()).unwrap_or_default()
    }

    /// Consumes until `shutdown`, then commits the stored offsets.
    #[tracing::instrument(skip_all, fields(projector = %self.name))]
    pub async fn run(&self, shutdown: CancellationToken) {
        let name = self.name.as_str();
        tracing::info!(projector = name, "Projector started.");
        loop {
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = shutdown.cancelled() => break,
            };
            let mut batch = Vec::new();
            match first {
                Ok(m) => batch.push(Received::from(&m)),
                Err(e) => {
                    tracing::warn!(projector = name, error = %e, "Kafka receive failed.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            // Take whatever else is already buffered, without waiting.
            while batch.len() < MAX_BATCH {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(Received::from(&m)),
                    _ => break,
                }
            }
            self.handle_batch(&batch, &shutdown).await;
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(projector = name, error = %e, "No offsets committed at shutdown.");
        }
        tracing::info!(projector = name, "Projector stopped.");
    }

    async fn handle_batch(&self, batch: &[Received], shutdown: &CancellationToken) {
        let name = self.name.as_str();
        // Records no projection can apply: every projection dead-letters them.
        let mut unusable: Vec<(usize, String)> = Vec::new();
        // The decodable records, and for each the index of its message in `batch`.
        let mut records: Vec<(usize, StoredEvent)> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            match cloudevents::decode(&m.payload) {
                Ok(e) if self.aggregate_types().contains(&e.aggregate_type.as_str()) => records.push((i, e)),
                Ok(e) => unusable.push((i, format!("unexpected aggregate type {}", e.aggregate_type))),
                Err(e) => unusable.push((i, e.to_string())),
            }
        }
        // Retry the database part until it commits: an outage must not skip anything.
        let mut backoff = Duration::from_millis(100);
        let checked = loop {
            match self.apply_batch(&records).await {
                Ok(result) => break result,
                Err(e) => {
                    tracing::error!(projector = name, error = %e, "Batch failed; retrying.");
                    for projection in &self.projections {
                        self.metrics.projection_retries.with_label_values(&[projection.name()]).inc();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        // Nothing was stored: the batch is redelivered after a restart.
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        for (i, reason) in &checked.refused {
            tracing::warn!(projector = name, offset = batch[*i].offset, %reason, "Record refused: it does not match the event store.");
            unusable.push((*i, format!("refused: {reason}")));
        }
        let mut touched: Vec<Uuid> = Vec::new();
        // Per projection, its dead letters; then every one is sent, projection by projection.
        let mut dead: Vec<(&str, Vec<(usize, String)>)> = Vec::new();
        for (projection, outcomes) in self.projections.iter().zip(&checked.outcomes) {
            let label = projection.name();
            let count =
                |outcome: &str, n: u64| self.metrics.projection_applied.with_label_values(&[label, outcome]).inc_by(n);
            count("refused", checked.refused.len() as u64);
            let mut poison = unusable.clone();
            for (i, outcome) in outcomes {
                let outcome = match outcome {
                    Applied::Duplicate => "duplicate",
                    Applied::Quarantined => "quarantined",
                    Applied::Poisoned { reason, .. } => {
                        poison.push((*i, reason.clone()));
                        "poison"
                    }
                    Applied::Applied { filled, touched: t } => {
                        if *filled > 0 {
                            count("gap_filled", *filled as u64);
                        }
                        touched.extend(t);
                        "applied"
                    }
                };
                count(outcome, 1);
            }
            poison.sort_by_key(|(i, _)| *i);
            dead.push((label, poison));
        }
        for (projection, poison) in &dead {
            for (i, error) in poison {
                if !self.dead_letter(projection, &batch[*i], error, shutdown).await {
                    // Shutting down with the DLQ unreachable: store nothing, so the batch is
                    // redelivered to the next owner (applied events are duplicates by then; a
                    // poison event's cause stays in `projection_quarantine`).
                    return;
                }
            }
        }
        touched.sort();
        touched.dedup();
        if let Some(redis) = &self.redis {
            for user in touched {
                if let Err(e) = cache::invalidate(redis, user).await {
                    tracing::warn!(projector = name, %user, error = %e, "Cache invalidation failed; entries expire on their own.");
                }
            }
        }
        self.store_offsets(batch);
    }

    /// Checks the records against the event store (one statement for the whole batch),
    /// then applies the stored events to every projection in one transaction. A record the
    /// store does not hold, or holds differently (another id, payload, ...), is refused;
    /// where the store has a real event at that sequence, that event is applied in its
    /// place. Poison events quarantine their aggregate for the projection they poisoned and
    /// do not stop the others.
    async fn apply_batch(&self, records: &[(usize, StoredEvent)]) -> Result<Checked, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let keys: Vec<EventKey> = records.iter().map(|(_, e)| EventKey::of(e)).collect();
        let stored: HashMap<EventKey, Result<StoredEvent, EventStoreError>> =
            event_store::find_events(&mut *tx, &keys).await?.into_iter().collect();
        let (mut events, mut origins, mut refused, mut unreadable) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((i, record), key) in records.iter().zip(&keys) {
            match stored.get(key) {
                Some(Ok(real)) => {
                    if let Some(field) = record.mismatch(real) {
                        refused.push((*i, format!("{key:?}: its {field} differs from the event store's")));
                    }
                    events.push(real.clone());
                    origins.push(*i);
                }
                // The store's own copy cannot be read: nothing can be applied for this
                // aggregate until that is fixed.
                Some(Err(e)) => {
                    let reason = format!("the stored event is unreadable: {e}");
                    for projection in &self.projections {
                        quarantine::add(&mut *tx, projection.name(), record, key.sequence, None, &reason).await?;
                    }
                    unreadable.push((*i, Applied::Poisoned { sequence: key.sequence, reason }));
                }
                None => refused.push((*i, format!("{key:?} is not in the event store"))),
            }
        }
        let mut outcomes = Vec::with_capacity(self.projections.len());
        for projection in &self.projections {
            let projection = projection.as_ref();
            let applied = apply_batch(&mut tx, projection, projection.name(), projection.table(), &events).await?;
            let mut applied: Vec<(usize, Applied)> = origins.iter().copied().zip(applied).collect();
            applied.extend(unreadable.iter().cloned());
            outcomes.push(applied);
        }
        tx.commit().await?;
        Ok(Checked { outcomes, refused })
    }

    /// Copies `m` to the DLQ with `error` for the projection `name`, retrying while the DLQ is unreachable; `false`
    /// when `shutdown` came first.
    async fn dead_letter(&self, name: &str, m: &Received, error: &str, shutdown: &CancellationToken) -> bool {
        tracing::warn!(projection = name, topic = %m.topic, partition = m.partition, offset = m.offset, %error, "Poison message sent to the DLQ.");
        let partition = m.partition.to_string();
        let offset = m.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "dlq_error", value: Some(error.as_bytes()) })
            .insert(Header { key: "dlq_consumer", value: Some(name.as_bytes()) })
            .insert(Header { key: "dlq_topic", value: Some(m.topic.as_bytes()) })
            .insert(Header { key: "dlq_partition", value: Some(partition.as_bytes()) })
            .insert(Header { key: "dlq_offset", value: Some(offset.as_bytes()) });
        let dlq = self.topics.dlq();
        // Keep trying: moving on without the DLQ copy would lose the message.
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&dlq).payload(&m.payload[..]).headers(headers.clone());
            if let Some(k) = &m.key {
                record = record.key(&k[..]);
            }
            let sent = tokio::select! {
                sent = self.dlq.send(record, Duration::from_secs(30)) => sent,
                _ = shutdown.cancelled() => return false,
            };
            match sent {
                Ok(_) => break,
                Err((e, _)) => {
                    tracing::error!(projection = name, error = %e, "DLQ write failed; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return false,
                    }
                }
            }
        }
        self.metrics.dlq_messages.with_label_values(&[name]).inc();
        true
    }

    fn store_offsets(&self, batch: &[Received]) {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for m in batch {
            let e = next.entry((m.topic.as_str(), m.partition)).or_insert(0);
            *e = (*e).max(m.offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::error!(error = %e, "Invalid offset.");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // Partitions revoked meanwhile: the new owner re-reads them; duplicates are skipped.
            tracing::warn!(projector = %self.name, error = %e, "Could not store offsets.");
        }
    }
}

/// The consumer group name of the projections reading `aggregate_types`:
/// `projectors.<type>[+<type>...]`, lowercase, e.g. `projectors.conversation`.
pub fn group_name(aggregate_types: &[&str]) -> String {
    let types: Vec<String> = aggregate_types.iter().map(|t| t.to_lowercase()).collect();
    format!("projectors.{}", types.join("+"))
}

/// `projections` sorted into the sets a projector runs together (those reading the same
/// topics), in the order each set first appears.
pub fn groups(projections: Vec<Arc<dyn Projection>>) -> Vec<Vec<Arc<dyn Projection>>> {
    let mut groups: Vec<Vec<Arc<dyn Projection>>> = Vec::new();
    for projection in projections {
        match groups.iter_mut().find(|g| g[0].aggregate_types() == projection.aggregate_types()) {
            Some(group) => group.push(projection),
            None => groups.push(vec![projection]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_of_the_same_topics_share_one_consumer_group() {
        let groups = groups(crate::all(&Default::default()));
        let named: Vec<(String, Vec<&str>)> =
            groups.iter().map(|g| (group_name(g[0].aggregate_types()), g.iter().map(|p| p.name()).collect())).collect();
        assert_eq!(
            named,
            [
                ("projectors.user".to_string(), vec!["users"]),
                ("projectors.conversation".to_string(), vec!["conversations", "messages", "usage", "shares"]),
                ("projectors.file".to_string(), vec!["files"]),
                ("projectors.knowledgedocument".to_string(), vec!["knowledge"]),
            ]
        );
    }
}
