//! What must hold after every fault: every acknowledged command is in the event store
//! exactly once; Kafka holds every stored event (by id), nothing else, in sequence order per
//! aggregate; every read model equals a fresh rebuild from the event store; nothing is
//! left without an answer and no idempotency key is left in progress.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::load::{Creates, Ledger};

/// The counts printed per scenario.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub acknowledged: usize,
    pub stored: usize,
    pub events: usize,
    pub published: usize,
    pub projected: usize,
}

/// How long Kafka may take to hold every stored event after a fault.
const KAFKA_DEADLINE: Duration = Duration::from_secs(240);
const TOPICS: [&str; 2] = ["colloquy.user.events", "colloquy.conversation.events"];
const PROJECTIONS: [&str; 3] = ["users", "conversations", "messages"];

/// Every acknowledged command is stored exactly once; returns how many are.
async fn stored(pool: &PgPool, acknowledged: &[Creates]) -> Result<usize, String> {
    let conversations: HashSet<String> =
        sqlx::query_scalar("SELECT aggregate_id FROM events WHERE aggregate_type = 'Conversation' AND sequence = 1")
            .fetch_all(pool)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
    let messages: HashMap<String, i64> = sqlx::query_as(
        "SELECT payload -> event_type ->> 'message_id', count(*) FROM events
         WHERE event_type = 'UserMessagePosted' GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?
    .into_iter()
    .collect();
    if let Some((id, n)) = messages.iter().find(|(_, n)| **n > 1) {
        return Err(format!("message {id} is stored {n} times"));
    }
    let mut found = 0;
    for creates in acknowledged {
        let present = match creates {
            Creates::Conversation(id) => conversations.contains(&id.to_string()),
            Creates::Message { message, .. } => messages.contains_key(&message.to_string()),
        };
        if !present {
            return Err(format!("acknowledged but not stored: {creates:?}"));
        }
        found += 1;
    }
    Ok(found)
}

/// One record as the checks need it.
struct Record {
    aggregate: String,
    id: String,
    sequence: i64,
}

/// What the suite has read of the topics so far, kept across scenarios: every check reads
/// only the records added since the last one. (Rereading from the beginning after every
/// scenario made the last checks slow enough to time out: Tansu 0.6 answers a fetch with a
/// running sum over the whole backlog behind the fetch offset.)
#[derive(Default)]
pub struct Topics {
    records: Vec<Record>,
    /// The next offset to read, per (topic, partition).
    next: HashMap<(String, i32), i64>,
}

/// A read that stops making progress for this long is given up (and tried again by the
/// caller until its deadline); a read that makes progress is never cut short.
const READ_STALL: Duration = Duration::from_secs(60);

impl Topics {
    /// Reads every record added to the topics since the last call, up to their ends as of
    /// now. Progress is kept record by record, so a read that fails half-way resumes where
    /// it stopped.
    fn read_new(&mut self, brokers: &str) -> Result<(), String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("faults-check-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(30)).map_err(|e| e.to_string())?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for topic in metadata.topics().iter().filter(|t| TOPICS.contains(&t.name())) {
            for p in topic.partitions() {
                let key = (topic.name().to_string(), p.id());
                let (_, high) = consumer
                    .fetch_watermarks(topic.name(), p.id(), Duration::from_secs(30))
                    .map_err(|e| e.to_string())?;
                let next = self.next.get(&key).copied().unwrap_or(0);
                if high > next {
                    assignment
                        .add_partition_offset(topic.name(), p.id(), Offset::Offset(next))
                        .map_err(|e| e.to_string())?;
                    ends.insert(key, high);
                }
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let mut progress = std::time::Instant::now();
        while !ends.is_empty() {
            if progress.elapsed() > READ_STALL {
                return Err(format!("reading the topics made no progress for {READ_STALL:?}: {ends:?} left"));
            }
            let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
            let message = message.map_err(|e| e.to_string())?;
            let key = (message.topic().to_string(), message.partition());
            if self.next.get(&key).is_some_and(|next| message.offset() < *next) {
                continue;
            }
            progress = std::time::Instant::now();
            let header = |name: &str| {
                message.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == name)
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).to_string())
                })
            };
            self.records.push(Record {
                aggregate: message.key().map(|k| String::from_utf8_lossy(k).to_string()).unwrap_or_default(),
                id: header("ce_id").unwrap_or_default(),
                sequence: header("sequence").and_then(|s| s.parse().ok()).unwrap_or(-1),
            });
            self.next.insert(key.clone(), message.offset() + 1);
            if ends.get(&key).is_some_and(|end| message.offset() + 1 >= *end) {
                ends.remove(&key);
            }
        }
        Ok(())
    }
}

/// Kafka holds every stored event by id, no other, in sequence order per aggregate.
async fn published(pool: &PgPool, brokers: &str, topics: &mut Topics) -> Result<(usize, usize), String> {
    // Long enough for the local broker's worst recovery seen: after a restart, Tansu 0.6's
    // SQLite engine can abort on the relay's retried idempotent batches a few times in a row
    // (its supervisor restarts it each time) before librdkafka gives the batch up and the
    // relay re-sends it from its checkpoint.
    let deadline = tokio::time::Instant::now() + KAFKA_DEADLINE;
    loop {
        let store: HashMap<String, (String, i64)> =
            sqlx::query_as::<_, (Uuid, String, i64)>("SELECT event_id, aggregate_id, sequence FROM events")
                .fetch_all(pool)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(id, aggregate, sequence)| (id.to_string(), (aggregate, sequence)))
                .collect();
        let reader = brokers.to_string();
        let mut taken = std::mem::take(topics);
        let (read, taken) =
            tokio::task::spawn_blocking(move || (taken.read_new(&reader), taken)).await.map_err(|e| e.to_string())?;
        *topics = taken;
        match read {
            Ok(()) => {}
            // The broker may still be recovering from the fault (its supervisor restarts it
            // when it aborts): not an answer yet, ask again until the deadline.
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("reading the topics failed ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(format!("could not read the topics for {KAFKA_DEADLINE:?}: {e}")),
        };
        let mut seen = HashSet::new();
        let mut last: HashMap<&str, i64> = HashMap::new();
        for r in &topics.records {
            match store.get(&r.id) {
                None => {
                    return Err(format!("Kafka holds {} (sequence {}), which the store does not", r.id, r.sequence))
                }
                Some((aggregate, sequence)) if *aggregate != r.aggregate || *sequence != r.sequence => {
                    return Err(format!(
                        "record {} says {}#{}, the store {aggregate}#{sequence}",
                        r.id, r.aggregate, r.sequence
                    ))
                }
                Some(_) => {}
            }
            if seen.insert(r.id.as_str()) {
                // First delivery of each event: in sequence order per aggregate (re-sends
                // after a relay failover repeat earlier ones, and are skipped here).
                let previous = last.insert(r.aggregate.as_str(), r.sequence).unwrap_or(0);
                if r.sequence != previous + 1 {
                    return Err(format!(
                        "aggregate {}: first delivery of sequence {} follows {previous}",
                        r.aggregate, r.sequence
                    ));
                }
            }
        }
        if seen.len() == store.len() {
            return Ok((store.len(), seen.len()));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "Kafka holds {} of the {} stored events after {KAFKA_DEADLINE:?}",
                seen.len(),
                store.len()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn dump(pool: &PgPool) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (table, order) in [
        ("rm_users", "user_id"),
        ("rm_conversations", "conversation_id"),
        ("rm_messages", "conversation_id, message_id"),
    ] {
        let sql = format!("SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {order}), '[]')::text FROM {table} t");
        out.push(sqlx::query_scalar(&sql).fetch_one(pool).await.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// How many acknowledged commands the read models show.
async fn projected(pool: &PgPool, acknowledged: &[Creates]) -> Result<usize, String> {
    let conversations: HashSet<Uuid> = sqlx::query_scalar("SELECT conversation_id FROM rm_conversations")
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let messages: HashSet<Uuid> = sqlx::query_scalar("SELECT message_id FROM rm_messages")
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    Ok(acknowledged
        .iter()
        .filter(|c| match c {
            Creates::Conversation(id) => conversations.contains(id),
            Creates::Message { message, .. } => messages.contains(message),
        })
        .count())
}

/// The read models caught up (they show every acknowledged command and stopped changing),
/// then equal a rebuild from the event store.
async fn read_models_equal_a_rebuild(
    cluster: &Cluster,
    pool: &PgPool,
    acknowledged: &[Creates],
) -> Result<usize, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut previous = None;
    let live = loop {
        let shown = projected(pool, acknowledged).await?;
        let now = dump(pool).await?;
        if shown == acknowledged.len() && previous.as_ref() == Some(&now) {
            break now;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "read models show {shown} of {} acknowledged commands after 120 s",
                acknowledged.len()
            ));
        }
        previous = Some(now);
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for projection in PROJECTIONS {
        cluster.once(&["rebuild", projection]);
    }
    let rebuilt = dump(pool).await?;
    for ((table, live), rebuilt) in ["rm_users", "rm_conversations", "rm_messages"].iter().zip(&live).zip(&rebuilt) {
        if live != rebuilt {
            return Err(format!("{table} differs from its rebuild:\nlive:    {live:.600}\nrebuilt: {rebuilt:.600}"));
        }
    }
    Ok(acknowledged.len())
}

/// Runs every check; `Err` names the first that failed.
pub async fn check(cluster: &Cluster, ledger: &Ledger, topics: &mut Topics) -> Result<Counts, String> {
    if let Some((request, status, body)) = ledger.refused.first() {
        return Err(format!("a command was refused: {} {status} {body}", request.path));
    }
    let pool = PgPool::connect(&cluster.postgres.url("colloquy")).await.map_err(|e| e.to_string())?;
    let in_progress: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE outcome IS NULL")
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
    if in_progress > 0 {
        return Err(format!("{in_progress} idempotency keys are stuck in progress"));
    }
    let stored = stored(&pool, &ledger.acknowledged).await?;
    let (events, published) = published(&pool, &cluster.broker.address(), topics).await?;
    let projected = read_models_equal_a_rebuild(cluster, &pool, &ledger.acknowledged).await?;
    pool.close().await;
    Ok(Counts { acknowledged: ledger.acknowledged.len(), stored, events, published, projected })
}
