//! Kafka: topic names, client configurations and topic creation.

use std::time::Duration;

use colloquy_domain::registry::topic_of;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::settings::KafkaSettings;

/// Topic and consumer-group names under the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Names under `settings.topic_prefix`.
    pub fn new(settings: &KafkaSettings) -> Self {
        Self { prefix: settings.topic_prefix.clone() }
    }

    /// `colloquy.<aggregate>.events`.
    pub fn events(&self, aggregate_type: &str) -> String {
        format!("{}{}", self.prefix, topic_of(aggregate_type))
    }

    /// `colloquy.dlq`.
    pub fn dlq(&self) -> String {
        format!("{}colloquy.dlq", self.prefix)
    }

    /// Every topic the project owns.
    pub fn all(&self) -> Vec<String> {
        let mut all: Vec<String> = colloquy_domain::aggregates().iter().map(|a| self.events(a.name)).collect();
        all.push(self.dlq());
        all
    }

    /// The consumer group of a projection or worker.
    pub fn group(&self, name: &str) -> String {
        format!("{}colloquy.{}", self.prefix, name)
    }
}

/// An idempotent producer: `enable.idempotence` (which implies `acks=all` and bounded
/// in-flight requests); retries are librdkafka's, bounded by `message.timeout.ms`.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "2")
        .set("message.timeout.ms", settings.message_timeout_ms.to_string())
        .set("partitioner", "murmur2_random");
    cfg
}

/// A consumer in `group` that never commits on its own: offsets are stored explicitly after
/// the work for a message is durable, then committed in the background.
pub fn consumer_config(settings: &KafkaSettings, group: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Low fetch wait: projections are latency-sensitive (read-your-writes waits on them).
        .set("fetch.wait.max.ms", "20")
        .set("session.timeout.ms", "10000")
        .set("max.poll.interval.ms", "300000")
        .set("enable.partition.eof", "false");
    cfg
}

/// Creates the project's topics where missing; existing ones are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &settings.brokers).create()?;
    let topics = Topics::new(settings);
    let names = topics.all();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, settings.partitions, TopicReplication::Fixed(settings.replication_factor)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(new.iter(), &opts).await?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| tracing::error!(%name, "Topic creation failed."))
            }
        }
    }
    Ok(created)
}

/// Checks a broker answers a metadata request within `timeout`.
pub async fn check(settings: &KafkaSettings, timeout: Duration) -> Result<(), KafkaError> {
    let brokers = settings.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, timeout).map(|_| ())
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_contract() {
        let t = Topics::new(&KafkaSettings { topic_prefix: "".into(), ..Default::default() });
        assert_eq!(t.events("Conversation"), "colloquy.conversation.events");
        assert_eq!(t.dlq(), "colloquy.dlq");
        let p = Topics::new(&KafkaSettings { topic_prefix: "t9.".into(), ..Default::default() });
        assert_eq!(p.events("User"), "t9.colloquy.user.events");
        assert_eq!(p.group("projection.users"), "t9.colloquy.projection.users");
    }
}
