//! The consumer loop: one event at a time (the work is CPU-bound: extraction and embedding
//! take the cores anyway), the offset stored only once the event's work is durable, a
//! failed event retried with backoff until it succeeds or the worker stops.

use std::time::Duration;

use colloquy_domain::{File, KnowledgeDocument};
use colloquy_infra::cloudevents;
use colloquy_infra::kafka::{consumer_config, Topics};
use colloquy_infra::settings::KafkaSettings;
use cqrs_es::Aggregate;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::work::{self, IngestDeps, WORKER_NAME};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The ingest worker.
pub struct Ingest {
    consumer: StreamConsumer,
    deps: IngestDeps,
}

impl Ingest {
    /// Joins the ingest consumer group on the file and knowledge topics.
    pub fn new(kafka: &KafkaSettings, deps: IngestDeps) -> Result<Self, KafkaError> {
        let topics = Topics::new(kafka);
        let consumer: StreamConsumer = consumer_config(kafka, &Self::group(kafka)).create()?;
        consumer.subscribe(&[&topics.events(File::TYPE), &topics.events(KnowledgeDocument::TYPE)])?;
        Ok(Self { consumer, deps })
    }

    /// The consumer group of every ingest worker.
    pub fn group(kafka: &KafkaSettings) -> String {
        Topics::new(kafka).group(WORKER_NAME)
    }

    /// Ingests until `shutdown`, then commits its offsets.
    #[tracing::instrument(skip_all)]
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!("Ingest worker started.");
        loop {
            let message = tokio::select! {
                m = self.consumer.recv() => m,
                _ = shutdown.cancelled() => break,
            };
            let m = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka receive failed.");
                    tokio::time::sleep(FIRST_BACKOFF).await;
                    continue;
                }
            };
            // An undecodable record is the projectors' to dead-letter; nothing to ingest.
            if let Some(Ok(event)) = m.payload().map(cloudevents::decode) {
                let span =
                    tracing::info_span!("ingest", aggregate_id = %event.aggregate_id, event_type = %event.event_type);
                let mut backoff = FIRST_BACKOFF;
                loop {
                    match tracing::Instrument::instrument(work::handle(&self.deps, &event), span.clone()).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(parent: &span, error = %e, ?backoff, "Ingest failed; retrying.");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = shutdown.cancelled() => {
                                    // Not stored: the event is ingested after a restart.
                                    self.commit();
                                    tracing::info!("Ingest worker stopped.");
                                    return;
                                }
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
            let mut tpl = TopicPartitionList::new();
            if tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1)).is_ok() {
                if let Err(e) = self.consumer.store_offsets(&tpl) {
                    tracing::debug!(error = %e, "Could not store the offset (partition revoked).");
                }
            }
        }
        self.commit();
        tracing::info!("Ingest worker stopped.");
    }

    fn commit(&self) {
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "No offsets committed at shutdown.");
        }
    }
}
