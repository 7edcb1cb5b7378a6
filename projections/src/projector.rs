//! The projector: a Kafka consumer (one group per projection) that applies events in
//! batches, one Postgres transaction per batch, and stores offsets only after that
//! transaction committed. Every record is checked against the event store before it is
//! applied (one statement per batch): only the stored event is ever applied, and a record
//! the store does not hold, or holds differently, is refused. Undecodable and refused
//! records go to the dead-letter topic with the reason; a poison event also quarantines
//! its aggregate (see [`crate::quarantine`]), and the projector moves on. Database outages
//! are retried, not skipped.

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

/// Reports consumer lag from librdkafka's statistics.
pub struct LagContext {
    consumer: String,
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
        self.metrics.consumer_lag.with_label_values(&[&self.consumer]).set(lag);
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

/// What the database part of a batch did: per applied record (by its index in the batch)
/// the outcome, and the records refused with the reason.
struct Checked {
    outcomes: Vec<(usize, Applied)>,
    refused: Vec<(usize, String)>,
}

/// Runs one projection from Kafka.
pub struct Projector {
    projection: Arc<dyn Projection>,
    consumer: StreamConsumer<LagContext>,
    dlq: FutureProducer,
    topics: Topics,
    pool: PgPool,
    redis: Option<RedisStore>,
    metrics: Metrics,
}

impl Projector {
    /// Subscribes to the projection's topics in its own consumer group.
    pub fn new(
        projection: Arc<dyn Projection>,
        kafka: &KafkaSettings,
        pool: PgPool,
        redis: Option<RedisStore>,
        metrics: Metrics,
    ) -> Result<Self, KafkaError> {
        let topics = Topics::new(kafka);
        let group = topics.group(&format!("projection.{}", projection.name()));
        // Publish every series from the start, so dashboards and alerts see zeros, not gaps.
        metrics.consumer_lag.with_label_values(&[projection.name()]).set(0);
        metrics.dlq_messages.with_label_values(&[projection.name()]).inc_by(0);
        metrics.projection_retries.with_label_values(&[projection.name()]).inc_by(0);
        for outcome in ["quarantined", "poison", "refused"] {
            metrics.projection_applied.with_label_values(&[projection.name(), outcome]).inc_by(0);
        }
        let context = LagContext { consumer: projection.name().to_string(), metrics: metrics.clone() };
        let consumer: StreamConsumer<LagContext> =
            consumer_config(kafka, &group).set("statistics.interval.ms", "5000").create_with_context(context)?;
        let names: Vec<String> = projection.aggregate_types().iter().map(|t| topics.events(t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs)?;
        let dlq: FutureProducer = producer_config(kafka).create()?;
        Ok(Self { projection, consumer, dlq, topics, pool, redis, metrics })
    }

    /// Consumes until `shutdown`, then commits the stored offsets.
    #[tracing::instrument(skip_all, fields(projection = self.projection.name()))]
    pub async fn run(&self, shutdown: CancellationToken) {
        let name = self.projection.name();
        tracing::info!(projection = name, "Projector started.");
        loop {
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = shutdown.cancelled() => break,
            };
            let mut batch = Vec::new();
            match first {
                Ok(m) => batch.push(Received::from(&m)),
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "Kafka receive failed.");
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
            tracing::debug!(projection = name, error = %e, "No offsets committed at shutdown.");
        }
        tracing::info!(projection = name, "Projector stopped.");
    }

    async fn handle_batch(&self, batch: &[Received], shutdown: &CancellationToken) {
        let name = self.projection.name();
        let mut poison: Vec<(usize, String)> = Vec::new();
        // The decodable records, and for each the index of its message in `batch`.
        let mut records: Vec<(usize, StoredEvent)> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            match cloudevents::decode(&m.payload) {
                Ok(e) if self.projection.aggregate_types().contains(&e.aggregate_type.as_str()) => records.push((i, e)),
                Ok(e) => poison.push((i, format!("unexpected aggregate type {}", e.aggregate_type))),
                Err(e) => poison.push((i, e.to_string())),
            }
        }
        // Retry the database part until it commits: an outage must not skip anything.
        let mut backoff = Duration::from_millis(100);
        let checked = loop {
            match self.apply_batch(&records).await {
                Ok(result) => break result,
                Err(e) => {
                    tracing::error!(projection = name, error = %e, "Batch failed; retrying.");
                    self.metrics.projection_retries.with_label_values(&[name]).inc();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        // Nothing was stored: the batch is redelivered after a restart.
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let count =
            |outcome: &str, n: u64| self.metrics.projection_applied.with_label_values(&[name, outcome]).inc_by(n);
        for (i, reason) in &checked.refused {
            tracing::warn!(projection = name, offset = batch[*i].offset, %reason, "Record refused: it does not match the event store.");
            count("refused", 1);
            poison.push((*i, format!("refused: {reason}")));
        }
        let mut touched: Vec<Uuid> = Vec::new();
        for (i, outcome) in &checked.outcomes {
            let label = match outcome {
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
            count(label, 1);
        }
        poison.sort_by_key(|(i, _)| *i);
        for (i, error) in &poison {
            if !self.dead_letter(&batch[*i], error, shutdown).await {
                // Shutting down with the DLQ unreachable: store nothing, so the batch is
                // redelivered to the next owner (applied events are duplicates by then; a
                // poison event's cause stays in `projection_quarantine`).
                return;
            }
        }
        touched.sort();
        touched.dedup();
        if let Some(redis) = &self.redis {
            for user in touched {
                if let Err(e) = cache::invalidate(redis, user).await {
                    tracing::warn!(projection = name, %user, error = %e, "Cache invalidation failed; entries expire on their own.");
                }
            }
        }
        self.store_offsets(batch);
    }

    /// Checks the records against the event store (one statement for the whole batch),
    /// then applies the stored events in one transaction. A record the store does not
    /// hold, or holds differently (another id, payload, ...), is refused; where the store
    /// has a real event at that sequence, that event is applied in its place. Poison
    /// events quarantine their aggregate and do not stop the others.
    async fn apply_batch(&self, records: &[(usize, StoredEvent)]) -> Result<Checked, sqlx::Error> {
        let projection = self.projection.as_ref();
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
                    quarantine::add(&mut *tx, projection.name(), record, key.sequence, None, &reason).await?;
                    unreadable.push((*i, Applied::Poisoned { sequence: key.sequence, reason }));
                }
                None => refused.push((*i, format!("{key:?} is not in the event store"))),
            }
        }
        let outcomes = apply_batch(&mut tx, projection, projection.name(), projection.table(), &events).await?;
        tx.commit().await?;
        let mut outcomes: Vec<(usize, Applied)> = origins.into_iter().zip(outcomes).collect();
        outcomes.extend(unreadable);
        Ok(Checked { outcomes, refused })
    }

    /// Copies `m` to the DLQ with `error`, retrying while the DLQ is unreachable; `false`
    /// when `shutdown` came first.
    async fn dead_letter(&self, m: &Received, error: &str, shutdown: &CancellationToken) -> bool {
        let name = self.projection.name();
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
            tracing::warn!(projection = self.projection.name(), error = %e, "Could not store offsets.");
        }
    }
}
