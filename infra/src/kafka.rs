//! Kafka: topic names, client configurations and topic creation.

use std::sync::Arc;
use std::time::Duration;

use colloquy_domain::registry::topic_of;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::ops::Cached;
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

/// The connection settings every client shares: brokers, and the security settings
/// (`security.protocol`, SASL credentials, the CA) when configured.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.brokers).set("security.protocol", &settings.security_protocol);
    if let Some(mechanism) = &settings.sasl_mechanism {
        cfg.set("sasl.mechanism", mechanism);
    }
    if let Some(username) = &settings.sasl_username {
        cfg.set("sasl.username", username);
    }
    if let Some(password) = &settings.sasl_password {
        cfg.set("sasl.password", password);
    }
    if let Some(ca) = &settings.ssl_ca_location {
        cfg.set("ssl.ca.location", ca);
    }
    cfg
}

/// An idempotent producer: `enable.idempotence` (which implies `acks=all` and bounded
/// in-flight requests); retries are librdkafka's, bounded by `message.timeout.ms`.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut cfg = client_config(settings);
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "2")
        .set("message.timeout.ms", settings.message_timeout_ms.to_string())
        .set("partitioner", "murmur2_random");
    cfg
}

/// A consumer in `group` that never commits on its own: offsets are stored explicitly after
/// the work for a message is durable, then committed in the background.
///
/// Failover: a member that dies without leaving its group (`kill -9`, a lost host) keeps
/// its partitions until the coordinator notices its silence after `session.timeout.ms`.
/// Static membership (`group.instance.id`) is deliberately not used: it needs a stable
/// identity per replica, and Tansu never expires a static member that stopped sending
/// heartbeats. See docs/operations.md for what each setting means on Tansu and on Kafka.
pub fn consumer_config(settings: &KafkaSettings, group: &str) -> ClientConfig {
    let mut cfg = client_config(settings);
    cfg.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Low by default: projections are latency-sensitive (read-your-writes waits on them).
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
        .set("session.timeout.ms", settings.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", settings.heartbeat_interval_ms.to_string())
        .set("max.poll.interval.ms", settings.max_poll_interval_ms.to_string())
        // librdkafka's default, named so that it never changes under a running group: Tansu
        // keeps a group's protocol from its first member and refuses members without it.
        .set("partition.assignment.strategy", "range,roundrobin")
        .set("enable.partition.eof", "false");
    cfg
}

/// Waits, before a consumer joins `group`, until a member that died without leaving it has
/// had its session expire. Call it before subscribing a consumer of any group (projectors,
/// workers), unless the group's topics were only just created (then it cannot have had
/// members).
///
/// Why: a process killed without leaving its group (`kill -9`) stays a member until the
/// coordinator notices its silence. Apache Kafka then rebalances correctly whenever it
/// notices. Tansu 0.6 does not when the dead member was the group's leader and a newcomer
/// is mid-join: the newcomer joins as a follower of the dead leader, and if the leader's
/// session expires while the newcomer's `SyncGroup` (with no assignments, as a follower's
/// is) is being handled, Tansu evicts the leader there and accepts that empty assignment as
/// the group's. The group is then stable and nobody owns a partition until its membership
/// changes again: a replacement projector that applies nothing for as long as it runs.
/// Joining only after the dead member's session expired makes the newcomer's first
/// `JoinGroup` evict it, so the newcomer becomes the leader and assigns every partition.
///
/// A group the broker describes without members (left cleanly, or never joined) is joined
/// at once. Tansu's SQLite storage cannot describe groups (the request fails): then the
/// consumer waits one session timeout, to be safe.
pub async fn before_joining(settings: &KafkaSettings, group: &str) {
    let (config, name) = (client_config(settings), group.to_string());
    let listed = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = config.create()?;
        let groups = consumer.fetch_group_list(Some(&name), Duration::from_secs(5))?;
        Ok::<bool, KafkaError>(groups.groups().iter().any(|g| !g.members().is_empty()))
    })
    .await;
    let reason = match listed {
        Ok(Ok(false)) => return,
        Ok(Ok(true)) => "the group lists members".to_string(),
        Ok(Err(e)) => format!("the group could not be described: {e}"),
        Err(e) => format!("the group could not be described: {e}"),
    };
    let wait = Duration::from_millis(u64::from(settings.session_timeout_ms)) + HANDOVER_MARGIN;
    tracing::info!(%group, %reason, wait_ms = wait.as_millis() as u64, "Waiting a session timeout before joining, so a killed member cannot be the group's leader.");
    tokio::time::sleep(wait).await;
}

/// Added to the session timeout before joining a group with members: the coordinator
/// measures silence from the member's last heartbeat, which came before it died.
const HANDOVER_MARGIN: Duration = Duration::from_millis(500);

/// Creates the project's topics where missing; existing ones are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings).create()?;
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

/// How long a readiness answer about the broker is reused.
pub const HEALTH_TTL: Duration = Duration::from_secs(1);

/// Whether the brokers answer, for readiness probes: one client for the life of the
/// process (creating a client per probe costs threads and connections), and an answer
/// reused for [`HEALTH_TTL`], so a flood of probes costs one metadata request a second.
pub struct KafkaHealth {
    client: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
    answer: Cached<bool>,
}

impl KafkaHealth {
    /// A client for `settings`' brokers (no connection is made yet); a check waits at most
    /// `timeout` for the metadata answer.
    pub fn new(settings: &KafkaSettings, timeout: Duration) -> Result<Self, KafkaError> {
        let client = client_config(settings).create()?;
        Ok(Self { client: Arc::new(client), timeout, answer: Cached::new(HEALTH_TTL) })
    }

    /// Whether a broker answered a metadata request, as of at most a second ago.
    pub async fn check(&self) -> bool {
        self.answer
            .get_or(|| async {
                let (client, timeout) = (self.client.clone(), self.timeout);
                tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, timeout).is_ok())
                    .await
                    .unwrap_or(false)
            })
            .await
    }

    /// How many metadata requests the checks made so far (for tests of the caching).
    pub fn probes(&self) -> u64 {
        self.answer.computations()
    }
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

    fn value(cfg: &ClientConfig, key: &str) -> Option<String> {
        cfg.get(key).map(str::to_string)
    }

    #[test]
    fn every_client_carries_the_security_settings() {
        let settings = KafkaSettings {
            security_protocol: "sasl_ssl".into(),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("colloquy".into()),
            sasl_password: Some("pw".into()),
            ssl_ca_location: Some("/etc/kafka/ca.pem".into()),
            ..Default::default()
        };
        for cfg in [client_config(&settings), producer_config(&settings), consumer_config(&settings, "g")] {
            assert_eq!(value(&cfg, "security.protocol").as_deref(), Some("sasl_ssl"));
            assert_eq!(value(&cfg, "sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
            assert_eq!(value(&cfg, "sasl.username").as_deref(), Some("colloquy"));
            assert_eq!(value(&cfg, "sasl.password").as_deref(), Some("pw"));
            assert_eq!(value(&cfg, "ssl.ca.location").as_deref(), Some("/etc/kafka/ca.pem"));
        }
        let plain = client_config(&KafkaSettings::default());
        assert_eq!(value(&plain, "security.protocol").as_deref(), Some("plaintext"));
        assert_eq!(value(&plain, "sasl.password"), None);
    }

    #[test]
    fn consumers_fail_over_within_the_session_timeout() {
        let cfg = consumer_config(&KafkaSettings::default(), "g");
        let session: u32 = value(&cfg, "session.timeout.ms").unwrap_or_default().parse().unwrap_or(0);
        let heartbeat: u32 = value(&cfg, "heartbeat.interval.ms").unwrap_or_default().parse().unwrap_or(0);
        // Apache Kafka refuses sessions below group.min.session.timeout.ms (6 s by default);
        // heartbeats at most a third of the session, so two may be lost without eviction.
        assert!((6_000..=10_000).contains(&session), "{session}");
        assert!(heartbeat > 0 && heartbeat * 3 <= session, "{heartbeat}");
        assert_eq!(value(&cfg, "group.instance.id"), None, "no static membership");
        // Valid for librdkafka (it checks the combination when the client is created).
        assert!(cfg.create::<rdkafka::consumer::BaseConsumer>().is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_readiness_probes_makes_one_broker_request() {
        // Nothing listens on port 1: the check fails, after its timeout.
        let settings = KafkaSettings { brokers: "127.0.0.1:1".into(), ..Default::default() };
        let health =
            Arc::new(KafkaHealth::new(&settings, Duration::from_millis(300)).unwrap_or_else(|e| panic!("{e}")));
        let probes: Vec<_> = (0..50)
            .map(|_| {
                let health = health.clone();
                tokio::spawn(async move { health.check().await })
            })
            .collect();
        for probe in probes {
            assert!(!probe.await.unwrap_or(true), "an unreachable broker is not ready");
        }
        assert_eq!(health.probes(), 1, "50 probes within a second share one broker request");
    }
}
