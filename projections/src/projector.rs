//! The projector: a Kafka consumer (one group per projection) that applies events in
//! batches, one Postgres transaction per batch, and stores offsets only after that
//! transaction committed. Undecodable or inapplicable events go to the dead-letter topic
//! with the error, and the projector moves on. Database outages are retried, not skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use colloquy_infra::cloudevents;
use colloquy_infra::event_store::StoredEvent;
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
use sqlx::{Acquire, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache;
use crate::projection::{apply_all_in_order, apply_in_order, Applied, ApplyError, BatchFailure, Projection};

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
        // The decodable events, and for each the index of its message in `batch`.
        let (mut events, mut origins): (Vec<StoredEvent>, Vec<usize>) = (Vec::new(), Vec::new());
        for (i, m) in batch.iter().enumerate() {
            match cloudevents::decode(&m.payload) {
                Ok(e) if self.projection.aggregate_types().contains(&e.aggregate_type.as_str()) => {
                    events.push(e);
                    origins.push(i);
                }
                Ok(e) => poison.push((i, format!("unexpected aggregate type {}", e.aggregate_type))),
                Err(e) => poison.push((i, e.to_string())),
            }
        }
        // Retry the database part until it commits: an outage must not skip anything.
        let mut backoff = Duration::from_millis(100);
        let (applied, rejected) = loop {
            match self.apply_batch(&events, &origins).await {
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
        poison.extend(rejected);
        for (i, error) in &poison {
            self.dead_letter(&batch[*i], error).await;
        }
        let mut touched: Vec<Uuid> = Vec::new();
        for outcome in &applied {
            let label = match outcome {
                Applied::Duplicate => "duplicate",
                Applied::Applied { filled, touched: t } => {
                    if *filled > 0 {
                        self.metrics.projection_applied.with_label_values(&[name, "gap_filled"]).inc_by(*filled as u64);
                    }
                    touched.extend(t);
                    "applied"
                }
            };
            self.metrics.projection_applied.with_label_values(&[name, label]).inc();
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

    /// Applies `events` in one transaction. The fast path applies the whole batch at once;
    /// if one event is poison, the batch is rolled back and applied again with a savepoint
    /// per event, so the poison one is set aside without undoing the others. Returns the
    /// outcomes and the events rejected as poison.
    async fn apply_batch(
        &self,
        events: &[StoredEvent],
        origins: &[usize],
    ) -> Result<(Vec<Applied>, Vec<(usize, String)>), sqlx::Error> {
        let projection = self.projection.as_ref();
        let mut tx = self.pool.begin().await?;
        match apply_all_in_order(&mut tx, projection, projection.name(), projection.table(), events).await {
            Ok(outcomes) => {
                tx.commit().await?;
                return Ok((outcomes, Vec::new()));
            }
            Err(BatchFailure { error: ApplyError::Database(e), .. }) => return Err(e),
            Err(BatchFailure { error: ApplyError::Poison(_), .. }) => tx.rollback().await?,
        }
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut poison = Vec::new();
        for (event, i) in events.iter().zip(origins) {
            let mut savepoint = tx.begin().await?;
            match apply_in_order(&mut savepoint, projection, projection.name(), projection.table(), event).await {
                Ok(outcome) => {
                    savepoint.commit().await?;
                    outcomes.push(outcome);
                }
                Err(ApplyError::Poison(bad)) => {
                    let reason = bad.describe();
                    savepoint.rollback().await?;
                    poison.push((*i, reason));
                }
                Err(ApplyError::Database(e)) => return Err(e),
            }
        }
        tx.commit().await?;
        Ok((outcomes, poison))
    }

    async fn dead_letter(&self, m: &Received, error: &str) {
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
            match self.dlq.send(record, Duration::from_secs(30)).await {
                Ok(_) => break,
                Err((e, _)) => {
                    tracing::error!(projection = name, error = %e, "DLQ write failed; retrying.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.metrics.dlq_messages.with_label_values(&[name]).inc();
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
