//! Removes the topics the end-to-end tests left on the local broker. Tests drop their own
//! databases and Redis keys, but not their topics while others run (see
//! `support::cleanup`): `scripts/test.sh` runs this after the suite, alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// A test topic: `t` + 12 hex digits + `.` (see `support::isolated_settings`).
fn is_test_topic(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else { return false };
    rest.len() > 13 && rest.as_bytes()[12] == b'.' && rest[..12].bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn only_test_topics_are_swept() {
    assert!(is_test_topic("t0123456789ab.colloquy.user.events"));
    assert!(!is_test_topic("colloquy.user.events"));
    assert!(!is_test_topic("t0123456789a.colloquy.user.events"));
    assert!(!is_test_topic("tnot-hex-at-all.colloquy.dlq"));
}

#[tokio::test]
#[ignore = "run by scripts/test.sh after the suite, when no test uses the broker"]
async fn sweep_test_topics() {
    let brokers = colloquy_infra::Settings::default().kafka.brokers;
    let config = ClientConfig::new().set("bootstrap.servers", &brokers).clone();
    let consumer: BaseConsumer = config.create().unwrap();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let topics: Vec<String> =
        metadata.topics().iter().map(|t| t.name().to_string()).filter(|n| is_test_topic(n)).collect();
    drop(consumer);
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    for chunk in topics.chunks(100) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        admin.delete_topics(&refs, &AdminOptions::new()).await.unwrap();
    }
    eprintln!("swept {} test topics", topics.len());
}
