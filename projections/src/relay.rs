//! The relay: publishes committed events to Kafka in commit order, gap-safe and
//! checkpointed, with exactly one active instance.
//!
//! * One active relay: a session-level advisory lock held on a dedicated connection.
//!   Standbys wait for it; the checkpoint is written on that same connection, so a relay
//!   that lost its lock (its connection died) cannot move the checkpoint.
//! * Gap-safe: events are read behind the `pg_snapshot_xmin` fence (see `event_store`).
//! * At-least-once: the checkpoint advances only after Kafka acknowledged every record of
//!   the batch; after any failure the batch is re-sent from the checkpoint.

use std::time::Duration;

use colloquy_domain::event_catalog::cloud_event_type;
use colloquy_infra::cloudevents::{self, headers};
use colloquy_infra::event_store::{self, LogCursor, StoredEvent};
use colloquy_infra::kafka::{producer_config, Topics};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::settings::{KafkaSettings, RelaySettings};
use futures::future::try_join_all;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;

/// Batches produced and awaiting their acknowledgements at once: one. The next batch is
/// read when the broker has acknowledged the last, and takes in everything written
/// meanwhile (up to `batch_size`), so a slower broker means larger batches, not a backlog.
///
/// Handing the producer more while a batch is in flight costs CPU and gains nothing:
/// librdkafka's idempotent producer (2.12) sends no request to a partition while five or
/// more of its *messages* are in flight, and while such messages wait, with their linger
/// elapsed, its broker thread polls without sleeping until the acknowledgement arrives.
/// With four batches in flight that thread kept a quarter of a core busy under load
/// (`rd_kafka_toppar_producer_serve` and `clock_gettime` in a profile), two thirds of the
/// relay's CPU, and sent no faster.
const MAX_IN_FLIGHT: usize = 1;

/// The advisory lock key that elects the active relay (per checkpoint name).
fn lock_key(name: &str) -> i64 {
    // A stable 63-bit hash of the name: FNV-1a.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in format!("colloquy.relay.{name}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h >> 1) as i64
}

/// Where the relay called `name` stands (the beginning when it never ran).
pub async fn checkpoint<'e>(db: impl sqlx::PgExecutor<'e>, name: &str) -> Result<LogCursor, RelayError> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT last_tx_id::text::bigint, last_position FROM relay_checkpoint WHERE name = $1")
            .bind(name)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(tx_id, position)| LogCursor { tx_id, position }).unwrap_or_default())
}

/// Events in the store that the relay called `name` has not published yet, measured from
/// positions: the store's last position minus the checkpoint's. Two index lookups, never a
/// count of rows, so a scrape costs the same however far behind the relay is. Positions
/// that an aborted insert used up count as events (identity values are not reused), so this
/// can exceed the exact number by the inserts rolled back meanwhile; it is 0 when the relay
/// published everything.
pub async fn lag(pool: &PgPool, name: &str) -> Result<i64, RelayError> {
    let after = checkpoint(pool, name).await?;
    lag_after(pool, after).await
}

async fn lag_after(pool: &PgPool, after: LogCursor) -> Result<i64, RelayError> {
    let last = event_store::last_position(pool).await?;
    Ok((last - after.position).max(0))
}

/// Refreshes the relay-lag gauge at every scrape, from Postgres, so every process reports
/// it truthfully whichever process runs the relay (see [`lag`]: no rows are counted).
pub struct LagProbe {
    pool: PgPool,
    name: String,
}

impl LagProbe {
    /// The lag of the relay called `name`.
    pub fn new(pool: PgPool, name: String) -> Self {
        Self { pool, name }
    }
}

#[async_trait::async_trait]
impl colloquy_infra::ops::Probe for LagProbe {
    async fn refresh(&self, metrics: &Metrics) {
        match lag(&self.pool, &self.name).await {
            Ok(lag) => metrics.relay_lag_events.set(lag),
            Err(e) => tracing::warn!(error = ?e, "Could not measure relay lag."),
        }
    }
}

/// Relay failures that end a run (the caller decides whether to restart).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres failed.
    #[error("relay database query failed")]
    Database(#[from] sqlx::Error),
    /// Reading events failed.
    #[error(transparent)]
    EventStore(#[from] event_store::EventStoreError),
    /// Kafka failed.
    #[error("kafka failed")]
    Kafka(#[from] KafkaError),
    /// An event could not be encoded.
    #[error("an event could not be encoded")]
    Encode(#[from] serde_json::Error),
}

/// The relay process.
pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    topics: Topics,
    settings: RelaySettings,
    metrics: Metrics,
}

impl Relay {
    /// Creates the producer; does not connect to anything yet.
    pub fn new(
        pool: PgPool,
        kafka: &KafkaSettings,
        settings: RelaySettings,
        metrics: Metrics,
    ) -> Result<Self, KafkaError> {
        let producer: FutureProducer = producer_config(kafka).create()?;
        Ok(Self { pool, producer, topics: Topics::new(kafka), settings, metrics })
    }

    /// Runs until `shutdown`: waits to become the active relay, then publishes. Any error
    /// drops leadership, waits a moment and starts over from the checkpoint.
    #[tracing::instrument(skip_all, fields(relay = %self.settings.name))]
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = ?e, "Relay failed; starting over from the checkpoint.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            // Unflushed records were never checkpointed: the next relay sends them again.
            tracing::warn!(error = %e, "Producer flush at shutdown incomplete.");
        }
        tracing::info!("Relay stopped.");
    }

    async fn lead(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let mut conn = self.pool.acquire().await?;
        let key = lock_key(&self.settings.name);
        let mut waiting_logged = false;
        loop {
            self.metrics.relay_lock_attempts.inc();
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await?;
            if got {
                break;
            }
            if !waiting_logged {
                tracing::info!(name = %self.settings.name, "Another relay is active; standing by.");
                waiting_logged = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
        tracing::info!(name = %self.settings.name, "Relay is active.");
        self.metrics.relay_active.set(1);
        let result = self.publish_loop(&mut conn, shutdown).await;
        self.metrics.relay_active.set(0);
        // Give leadership back explicitly; if the connection is broken the server drops it.
        if sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut *conn).await.is_err() {
            conn.close_on_drop();
        }
        result
    }

    async fn publish_loop(
        &self,
        conn: &mut PoolConnection<Postgres>,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        // Up to `MAX_IN_FLIGHT` batches are produced and awaiting their acknowledgements,
        // and the checkpoint follows the oldest one acknowledged, in order.
        let mut checkpoint = self.load_checkpoint(conn).await?;
        // Where the last batch handed to the producer ended.
        let mut sent = checkpoint;
        let mut in_flight = FuturesOrdered::new();
        let mut last_lag_check = std::time::Instant::now() - Duration::from_secs(60);
        while !shutdown.is_cancelled() {
            if last_lag_check.elapsed() > Duration::from_secs(1) {
                let lag = lag_after(&self.pool, checkpoint).await?;
                self.metrics.relay_lag_events.set(lag);
                last_lag_check = std::time::Instant::now();
            }
            // Checkpoint whatever the broker has acknowledged meanwhile.
            while let Some(Some(acked)) = in_flight.next().now_or_never() {
                checkpoint = acked?;
                self.save_checkpoint(conn, checkpoint).await?;
            }
            if in_flight.len() < MAX_IN_FLIGHT {
                let batch = event_store::read_committed(&self.pool, sent, None, self.settings.batch_size).await?;
                if let Some((_, last)) = batch.last() {
                    sent = *last;
                    let acks = self.produce(&batch).await?;
                    in_flight.push_back(async move { acks.await.map(|()| sent) });
                    continue;
                }
            }
            if in_flight.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(self.settings.idle_poll_ms)) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            // Full, or nothing new to read: wait for the oldest batch, or for new events.
            tokio::select! {
                acked = in_flight.next() => {
                    if let Some(acked) = acked {
                        checkpoint = acked?;
                        self.save_checkpoint(conn, checkpoint).await?;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(self.settings.idle_poll_ms)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        // Stopping: checkpoint what the broker acknowledges within a moment, so the next
        // relay does not send it again. What is not acknowledged by then (a broker that is
        // down) is simply sent again by the next relay; shutdown does not wait for it.
        let drain = async {
            while let Some(acked) = in_flight.next().await {
                checkpoint = acked?;
                self.save_checkpoint(conn, checkpoint).await?;
            }
            Ok::<(), RelayError>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), drain).await {
            Ok(drained) => drained,
            Err(_) => {
                tracing::warn!("Batches still unacknowledged at shutdown; the next relay sends them again.");
                Ok(())
            }
        }
    }

    async fn load_checkpoint(&self, conn: &mut PoolConnection<Postgres>) -> Result<LogCursor, RelayError> {
        checkpoint(&mut **conn, &self.settings.name).await
    }

    /// Written on the lock's own connection: a relay whose connection died (and with it
    /// the lock) fails here instead of moving the checkpoint.
    async fn save_checkpoint(&self, conn: &mut PoolConnection<Postgres>, at: LogCursor) -> Result<(), RelayError> {
        sqlx::query(
            "INSERT INTO relay_checkpoint (name, last_tx_id, last_position, updated_at)
             VALUES ($1, $2::text::xid8, $3, now())
             ON CONFLICT (name) DO UPDATE
                SET last_tx_id = EXCLUDED.last_tx_id, last_position = EXCLUDED.last_position, updated_at = now()",
        )
        .bind(&self.settings.name)
        .bind(at.tx_id.to_string())
        .bind(at.position)
        .execute(&mut **conn)
        .await?;
        Ok(())
    }

    /// Hands every event of `batch` to the producer, in order; answers a future of all
    /// their acknowledgements.
    async fn produce(
        &self,
        batch: &[(StoredEvent, LogCursor)],
    ) -> Result<impl std::future::Future<Output = Result<(), RelayError>> + use<'_>, RelayError> {
        let mut deliveries = Vec::with_capacity(batch.len());
        for (event, _) in batch {
            let topic = self.topics.events(&event.aggregate_type);
            let payload = cloudevents::encode(event)?;
            let id = event.event_id.to_string();
            let ty = cloud_event_type(&event.aggregate_type, &event.event_type, &event.event_version);
            let seq = event.sequence.to_string();
            let hdrs = OwnedHeaders::new()
                .insert(Header { key: headers::ID, value: Some(id.as_bytes()) })
                .insert(Header { key: headers::TYPE, value: Some(ty.as_bytes()) })
                .insert(Header { key: headers::SEQUENCE, value: Some(seq.as_bytes()) })
                .insert(Header { key: headers::CONTENT_TYPE, value: Some(headers::STRUCTURED.as_bytes()) });
            let mut record = FutureRecord::to(&topic).key(&event.aggregate_id).payload(&payload).headers(hdrs);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(async move {
                            match delivery.await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err((e, _))) => Err(e),
                                Err(_) => Err(KafkaError::Canceled),
                            }
                        });
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: let deliveries drain, never drop.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        let topics: Vec<String> = batch.iter().map(|(e, _)| self.topics.events(&e.aggregate_type)).collect();
        Ok(async move {
            try_join_all(deliveries).await?;
            for topic in topics {
                self.metrics.relay_published.with_label_values(&[&topic]).inc();
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::lock_key;

    /// Relays of two releases must elect one leader during a rolling deploy: the key of a
    /// name is pinned, not just computed alike twice.
    #[test]
    fn lock_key_is_pinned_and_positive() {
        assert_eq!(lock_key("kafka"), 7_528_718_521_687_638_145);
        assert_ne!(lock_key("kafka"), lock_key("other"));
        assert!(["kafka", "other", "", "a much longer relay name"].iter().all(|n| lock_key(n) >= 0));
    }
}
