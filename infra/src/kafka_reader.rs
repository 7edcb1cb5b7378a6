//! Reading a whole topic once, for `colloquy verify`: every partition from its low
//! watermark up to the high watermark it had when the read began, a batch at a time, by
//! direct assignment (no consumer group joins, no offset is committed).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::settings::KafkaSettings;

/// One record as read.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
}

/// Reads one topic to the end it had when opened.
pub struct TopicReader {
    consumer: Option<StreamConsumer>,
    /// Per partition still being read, the offset of its last record.
    last: HashMap<i32, i64>,
    /// Longest wait for the next record before the read counts as stalled.
    stall: Duration,
}

/// Reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client failed.
    #[error("Kafka read failed")]
    Kafka(#[from] KafkaError),
    /// No record arrived in time although the partition has more.
    #[error("reading partition {partition} stalled before offset {until}")]
    Stalled {
        /// The partition.
        partition: i32,
        /// The last offset it should reach.
        until: i64,
    },
}

impl TopicReader {
    /// Opens `topic` (an absent topic reads as empty).
    pub async fn open(settings: &KafkaSettings, topic: &str) -> Result<Self, ReadError> {
        let brokers = settings.brokers.clone();
        let name = topic.to_string();
        // Metadata and watermarks are blocking calls.
        let ranges: Vec<(i32, i64, i64)> = tokio::task::spawn_blocking(move || -> Result<_, KafkaError> {
            let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
            let metadata = probe.fetch_metadata(Some(&name), Duration::from_secs(10))?;
            let mut ranges = Vec::new();
            for t in metadata.topics().iter().filter(|t| t.name() == name) {
                match t.error() {
                    None => {}
                    // Never created (no event of its type published yet): empty.
                    Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => continue,
                    // Anything else would make a readable topic look empty.
                    Some(e) => return Err(KafkaError::MetadataFetch(e.into())),
                }
                for p in t.partitions() {
                    let (low, high) = probe.fetch_watermarks(&name, p.id(), Duration::from_secs(10))?;
                    ranges.push((p.id(), low, high));
                }
            }
            Ok(ranges)
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        let mut tpl = TopicPartitionList::new();
        let mut last = HashMap::new();
        for (partition, low, high) in ranges {
            if high > low {
                tpl.add_partition_offset(topic, partition, Offset::Offset(low))?;
                last.insert(partition, high - 1);
            }
        }
        let consumer = if last.is_empty() {
            None
        } else {
            let consumer: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", &settings.brokers)
                .set("group.id", format!("{}colloquy.verify", settings.topic_prefix))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "false")
                .create()?;
            consumer.assign(&tpl)?;
            Some(consumer)
        };
        Ok(Self { consumer, last, stall: Duration::from_secs(30) })
    }

    /// Up to `max` more records; `None` once every partition was read to its end.
    pub async fn next_batch(&mut self, max: usize) -> Result<Option<Vec<Record>>, ReadError> {
        let Some(consumer) = &self.consumer else { return Ok(None) };
        if self.last.is_empty() {
            return Ok(None);
        }
        let mut batch = Vec::new();
        while batch.len() < max && !self.last.is_empty() {
            let Ok(received) = tokio::time::timeout(self.stall, consumer.recv()).await else {
                let (partition, until) = self.last.iter().next().map(|(p, o)| (*p, *o)).unwrap_or_default();
                return Err(ReadError::Stalled { partition, until });
            };
            let m = received?;
            let Some(until) = self.last.get(&m.partition()).copied() else { continue };
            if m.offset() > until {
                continue;
            }
            if m.offset() == until {
                self.last.remove(&m.partition());
            }
            batch.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
        }
        Ok(Some(batch))
    }
}
