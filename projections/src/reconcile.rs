//! Reconciliation: the safety net under the projectors. Kafka may lose records (a broker
//! without durable storage, a deleted topic, expired retention) and a projection fills a
//! gap only when a later event of the same aggregate arrives, so an aggregate whose last
//! events were lost would stay behind for good. Periodically, each projection compares
//! the event store with its progress (`projection_state`): every event committed more than
//! a grace period ago must be applied; an aggregate that is behind is brought up to date
//! from the store, through the same exactly-once routine the projector uses (counted as
//! `projection_events_total{outcome="healed"}`).
//!
//! The comparison walks the store in commit order from a checkpoint of its own
//! (`projection_reconcile_checkpoint`), a page at a time, so each event is checked once
//! and a pass costs what was written since the last one. Quarantined aggregates are left
//! alone until cleared ([`catch_up`] then applies them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use colloquy_infra::event_store::{self, EventStoreError, LogCursor, StoredEvent};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::redis_store::RedisStore;
use sqlx::{PgExecutor, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache;
use crate::projection::{apply_batch, Applied, Projection};

/// Events compared (and, for one aggregate, re-applied) per statement.
const PAGE: i64 = 1_000;

/// Reconciliation failures (all retryable: the next pass starts where this one stopped).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The database failed.
    #[error("reconciliation database statement failed")]
    Database(#[from] sqlx::Error),
    /// Reading the event store failed.
    #[error(transparent)]
    EventStore(#[from] EventStoreError),
}

/// What one pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Events compared with the projection's progress.
    pub checked: u64,
    /// Events that were missing from the read model and were applied from the store.
    pub healed: u64,
    /// Aggregates healing found poison (now quarantined).
    pub quarantined: u64,
    /// Users whose cached views the healed events made stale.
    pub touched: Vec<Uuid>,
}

impl Reconciled {
    fn add(&mut self, outcomes: &[Applied]) {
        for outcome in outcomes {
            match outcome {
                Applied::Applied { filled, touched } => {
                    self.healed += 1 + *filled as u64;
                    self.touched.extend(touched);
                }
                Applied::Poisoned { .. } => self.quarantined += 1,
                Applied::Duplicate | Applied::Quarantined => {}
            }
        }
    }
}

/// One reconciliation pass for `projection`: compares every event committed at least
/// `grace` ago (and not compared before) with the projection's progress, and applies from
/// the store whatever the read model lacks.
pub async fn reconcile_once(
    pool: &PgPool,
    projection: &dyn Projection,
    grace: Duration,
) -> Result<Reconciled, ReconcileError> {
    let name = projection.name();
    let types: Vec<String> = projection.aggregate_types().iter().map(|t| t.to_string()).collect();
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let horizon = sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("SELECT now()").fetch_one(pool).await? - grace;
    let mut cursor = load_checkpoint(pool, name).await?;
    let mut done = Reconciled::default();
    loop {
        let page = event_store::read_committed(pool, cursor, Some(&types), PAGE).await?;
        // Commit order follows recording time closely enough: stop at the first event too
        // young to judge, and judge it next time.
        let ripe = page.iter().take_while(|(e, _)| e.recorded_at <= horizon).count();
        if ripe == 0 {
            break;
        }
        let last = page[ripe - 1].1;
        let events: Vec<&StoredEvent> = page[..ripe].iter().map(|(e, _)| e).collect();
        let mut newest: HashMap<(&str, &str), i64> = HashMap::new();
        for e in &events {
            let n = newest.entry((e.aggregate_type.as_str(), e.aggregate_id.as_str())).or_insert(0);
            *n = (*n).max(e.sequence);
        }
        let ids: Vec<&str> = newest.keys().map(|(_, id)| *id).collect();
        let progress = progress(pool, name, &ids).await?;
        for ((aggregate_type, aggregate_id), sequence) in newest {
            let (applied, quarantined) = progress.get(aggregate_id).copied().unwrap_or((0, false));
            if sequence > applied && !quarantined {
                tracing::warn!(
                    projection = name,
                    aggregate_type,
                    aggregate_id,
                    applied,
                    sequence,
                    "Read model behind the event store past the grace period; applying from the store."
                );
                done.add(&catch_up(pool, projection, aggregate_type, aggregate_id).await?);
            }
        }
        done.checked += events.len() as u64;
        cursor = last;
        save_checkpoint(pool, name, cursor).await?;
        if ripe < page.len() {
            break;
        }
    }
    done.touched.sort();
    done.touched.dedup();
    Ok(done)
}

/// Applies every event of one aggregate the projection has not applied yet, from the
/// event store, exactly once (safe to run beside the live projector). A poison event
/// quarantines the aggregate as it would live. Returns the outcomes, in order.
pub async fn catch_up(
    pool: &PgPool,
    projection: &dyn Projection,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Vec<Applied>, ReconcileError> {
    let name = projection.name();
    let mut outcomes = Vec::new();
    loop {
        let from = progress(pool, name, &[aggregate_id]).await?.get(aggregate_id).map_or(0, |(s, _)| *s);
        let events = event_store::read_aggregate(pool, aggregate_type, aggregate_id, from, Some(from + PAGE)).await?;
        if events.is_empty() {
            return Ok(outcomes);
        }
        let mut tx = pool.begin().await?;
        let page = apply_batch(&mut tx, projection, name, projection.table(), &events).await?;
        tx.commit().await?;
        let stop = page.iter().any(|o| matches!(o, Applied::Poisoned { .. } | Applied::Quarantined));
        outcomes.extend(page);
        if stop || (events.len() as i64) < PAGE {
            return Ok(outcomes);
        }
    }
}

/// Last applied sequence and quarantine flag of each of `ids` (unlocked: a hint; the apply
/// routine decides under its lock).
async fn progress<'e>(
    db: impl PgExecutor<'e>,
    projection: &str,
    ids: &[&str],
) -> Result<HashMap<String, (i64, bool)>, sqlx::Error> {
    let rows: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT t.id, coalesce(s.last_sequence, 0),
                EXISTS (SELECT 1 FROM projection_quarantine q WHERE q.projection = $1 AND q.aggregate_id = t.id)
           FROM UNNEST($2::text[]) AS t(id)
           LEFT JOIN projection_state s ON s.projection = $1 AND s.aggregate_id = t.id",
    )
    .bind(projection)
    .bind(ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id, seq, q)| (id, (seq, q))).collect())
}

async fn load_checkpoint<'e>(db: impl PgExecutor<'e>, projection: &str) -> Result<LogCursor, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT last_tx_id::text::bigint, last_position FROM projection_reconcile_checkpoint WHERE projection = $1",
    )
    .bind(projection)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(tx_id, position)| LogCursor { tx_id, position }).unwrap_or_default())
}

async fn save_checkpoint<'e>(db: impl PgExecutor<'e>, projection: &str, at: LogCursor) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_reconcile_checkpoint (projection, last_tx_id, last_position, updated_at)
         VALUES ($1, $2::text::xid8, $3, now())
         ON CONFLICT (projection) DO UPDATE
            SET last_tx_id = EXCLUDED.last_tx_id, last_position = EXCLUDED.last_position, updated_at = now()",
    )
    .bind(projection)
    .bind(at.tx_id.to_string())
    .bind(at.position)
    .execute(db)
    .await?;
    Ok(())
}

/// Runs [`reconcile_once`] for one projection every `interval`, in the projector process.
pub struct Reconciler {
    projection: Arc<dyn Projection>,
    pool: PgPool,
    redis: Option<RedisStore>,
    metrics: Metrics,
    interval: Duration,
    grace: Duration,
}

impl Reconciler {
    /// A reconciler for `projection`, checking every `interval` the events older than `grace`.
    pub fn new(
        projection: Arc<dyn Projection>,
        pool: PgPool,
        redis: Option<RedisStore>,
        metrics: Metrics,
        interval: Duration,
        grace: Duration,
    ) -> Self {
        for outcome in ["healed", "quarantined", "poison", "refused"] {
            metrics.projection_applied.with_label_values(&[projection.name(), outcome]).inc_by(0);
        }
        Self { projection, pool, redis, metrics, interval, grace }
    }

    /// Reconciles every `interval` until `shutdown`.
    #[tracing::instrument(skip_all, fields(projection = self.projection.name()))]
    pub async fn run(&self, shutdown: CancellationToken) {
        let name = self.projection.name();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
            let pass = tokio::select! {
                pass = reconcile_once(&self.pool, self.projection.as_ref(), self.grace) => pass,
                // Whatever a pass committed stays; the next one starts from its checkpoint.
                _ = shutdown.cancelled() => return,
            };
            match pass {
                Ok(done) => {
                    let counter = |outcome: &str| self.metrics.projection_applied.with_label_values(&[name, outcome]);
                    counter("healed").inc_by(done.healed);
                    counter("poison").inc_by(done.quarantined);
                    if done.healed > 0 || done.quarantined > 0 {
                        tracing::warn!(
                            projection = name,
                            healed = done.healed,
                            quarantined = done.quarantined,
                            "Reconciliation applied events the read model lacked."
                        );
                    }
                    if let Some(redis) = &self.redis {
                        for user in done.touched {
                            if let Err(e) = cache::invalidate(redis, user).await {
                                tracing::warn!(projection = name, %user, error = %e, "Cache invalidation failed; entries expire on their own.");
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(projection = name, error = ?e, "Reconciliation failed; retrying next time."),
            }
        }
    }
}
