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
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    // A broker with thousands of topics (Tansu on SQLite) can take longer than a request's
    // default timeout to delete a batch, and may answer late for deletions it did make:
    // delete in small batches with a long timeout, then look again, a few times over.
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(120)));
    let mut swept = 0;
    for pass in 1..=3 {
        let topics = test_topics(&config);
        if topics.is_empty() {
            eprintln!("swept {swept} test topics");
            return;
        }
        for chunk in topics.chunks(20) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            match admin.delete_topics(&refs, &options).await {
                Ok(_) => swept += chunk.len(),
                Err(e) => eprintln!("pass {pass}: deleting {} topics failed ({e}); looking again", chunk.len()),
            }
        }
    }
    let left = test_topics(&config);
    assert!(left.is_empty(), "{} test topics could not be deleted: {:?}", left.len(), &left[..left.len().min(5)]);
}

/// The test topics the broker lists now.
fn test_topics(config: &ClientConfig) -> Vec<String> {
    let consumer: BaseConsumer = config.create().unwrap();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30)).unwrap();
    metadata.topics().iter().map(|t| t.name().to_string()).filter(|n| is_test_topic(n)).collect()
}
