//! What a projection is, and the one routine that applies an event to it exactly once and
//! in per-aggregate order, used alike by live projectors, reconciliation and rebuilds.
//!
//! Exactly once holds under concurrency too: a batch first locks the read-model table
//! (`ROW EXCLUSIVE`, so a rebuild's switch-over, which takes it `ACCESS EXCLUSIVE`, is
//! ordered before or after the whole batch), then locks the progress rows of its
//! aggregates (`SELECT ... FOR UPDATE` on `projection_state`, in id order). Two projector
//! instances applying the same batch during a rebalance, or reconciliation racing the live
//! projector, therefore apply each event once: the second waits and then sees it applied.
//!
//! A poison event quarantines its aggregate for that projection ([`apply_batch`]): later
//! events of the aggregate are skipped until an operator clears it (see
//! [`crate::quarantine`]).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use colloquy_infra::event_store::{self, StoredEvent};
use sqlx::{Acquire, PgConnection};
use uuid::Uuid;

use crate::quarantine;

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event can never be applied (malformed, unknown type, data the table refuses):
    /// it goes to the dead-letter topic.
    #[error("poison event")]
    Poison(#[source] Poison),
    /// The database failed; retrying may succeed.
    #[error("read model database failed")]
    Database(#[source] sqlx::Error),
}

/// What makes an event poison, and the error underneath, if any.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Poison {
    /// What is wrong, for people.
    pub reason: String,
    /// The error that showed it.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// The sequence of the event that failed (a delivered event, or a predecessor read
    /// from the store to fill a gap), when known.
    pub sequence: Option<i64>,
    /// That event's id, when the store has it.
    pub event_id: Option<Uuid>,
}

impl Poison {
    /// The reason followed by every cause underneath (what the DLQ's `dlq_error` says).
    pub fn describe(&self) -> String {
        let mut text = self.reason.clone();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

impl ApplyError {
    /// A poison event, for `reason`.
    pub fn poison(reason: impl Into<String>) -> Self {
        Self::Poison(Poison { reason: reason.into(), source: None, sequence: None, event_id: None })
    }

    /// A poison event, for `reason`, shown by `source`.
    pub fn poison_because(
        reason: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Poison(Poison { reason: reason.into(), source: Some(source.into()), sequence: None, event_id: None })
    }

    /// Names `event` as the one that failed, unless a more precise one is already named.
    fn at(self, event: &StoredEvent) -> Self {
        match self {
            Self::Poison(mut p) if p.sequence.is_none() => {
                p.sequence = Some(event.sequence);
                p.event_id = Some(event.event_id);
                Self::Poison(p)
            }
            other => other,
        }
    }
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        // Data exceptions (22xxx) and integrity violations (23xxx) will fail again.
        let poison = matches!(&e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")));
        if poison {
            Self::poison_because("the read model refuses the data", e)
        } else {
            Self::Database(e)
        }
    }
}

impl From<event_store::EventStoreError> for ApplyError {
    fn from(e: event_store::EventStoreError) -> Self {
        match e {
            event_store::EventStoreError::Database(e) => Self::from(e),
            other => Self::poison_because("an event read from the store is unreadable", other),
        }
    }
}

/// A read model built from events of some aggregate types.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name (consumer group, `projection_state` key, `colloquy rebuild <name>`).
    fn name(&self) -> &'static str;
    /// The live table.
    fn table(&self) -> &'static str;
    /// The aggregate types whose events it reads.
    fn aggregate_types(&self) -> &'static [&'static str];
    /// Applies one event to `table` (the live table or a rebuild's fresh one). Returns the
    /// user whose cached views the change makes stale, if any. Must be deterministic:
    /// timestamps come from the event, never from the clock.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        table: &str,
        event: &StoredEvent,
    ) -> Result<Option<Uuid>, ApplyError>;

    /// Applies `events` to `table` in order, each exactly as [`apply`](Self::apply) would
    /// (they are new: the caller has checked their order and skipped duplicates). Answers,
    /// per event, the user whose cached views it made stale. On failure, the index of the
    /// event that failed, or of the first event of a set-based statement that failed, and
    /// why; the caller rolls back whatever was done.
    ///
    /// This default applies them one at a time. A projection may write runs of events in one
    /// set-based statement instead. A batch of the live projector or a rebuild page holds
    /// hundreds, and one round trip per event was the projectors' main cost.
    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        table: &str,
        events: &[&StoredEvent],
    ) -> Result<Vec<Option<Uuid>>, (usize, ApplyError)> {
        let mut touched = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            touched.push(self.apply(conn, table, event).await.map_err(|e| (i, e))?);
        }
        Ok(touched)
    }
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Already applied before (a redelivery): nothing changed.
    Duplicate,
    /// Applied, after `filled` missing earlier events were read from the event store.
    Applied {
        /// Missing predecessors applied first.
        filled: usize,
        /// Users whose caches are stale.
        touched: Vec<Uuid>,
    },
    /// Not applied: the aggregate is quarantined for this projection.
    Quarantined,
    /// Not applied: this event, or a predecessor it needed, is poison; the aggregate has
    /// just been quarantined ([`apply_batch`] only).
    Poisoned {
        /// The sequence that failed.
        sequence: i64,
        /// Why, with every cause.
        reason: String,
    },
}

/// Applies `event` to `projection` if it is new, filling any gap before it from the event
/// store, and records the aggregate's new sequence under `state` — all on `conn`, which
/// the caller wraps in a transaction.
pub async fn apply_in_order(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    state: &str,
    table: &str,
    event: &StoredEvent,
) -> Result<Applied, ApplyError> {
    apply_one(conn, projection, &mut Progress::Stored(state), table, event).await
}

/// [`apply_in_order`] with its progress kept in `progress`.
async fn apply_one(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    progress: &mut Progress<'_>,
    table: &str,
    event: &StoredEvent,
) -> Result<Applied, ApplyError> {
    let mut outcomes = apply_all(conn, projection, progress, table, std::slice::from_ref(event))
        .await
        .map_err(|failed| failed.error)?;
    Ok(outcomes.pop().unwrap_or(Applied::Duplicate))
}

/// Where a batch reads and records how far each aggregate has been applied, and which
/// aggregates are quarantined.
pub enum Progress<'a> {
    /// `projection_state` rows under this name, locked by each batch's transaction: projector
    /// instances, reconciliation and a rebuild's switch-over may apply concurrently.
    Stored(&'a str),
    /// In memory, for a rebuild's pages: one builder applies them, in commit order, to a
    /// table nobody else writes, so nothing needs locking, and [`HeldProgress::store`] writes
    /// it all once, before the switch-over.
    Held(&'a mut HeldProgress),
}

impl Progress<'_> {
    /// The progress name (`projection_state.projection`, `projection_quarantine.projection`).
    fn state(&self) -> &str {
        match self {
            Self::Stored(state) => state,
            Self::Held(held) => &held.state,
        }
    }
}

/// A rebuild's progress, in memory (see [`Progress::Held`]).
#[derive(Debug)]
pub struct HeldProgress {
    state: String,
    last: HashMap<String, i64>,
    /// Quarantined here, and recorded in `projection_quarantine` under `state` too.
    quarantined: HashSet<String>,
}

impl HeldProgress {
    /// Progress rows written per statement by [`store`](Self::store).
    const STORE_CHUNK: usize = 10_000;

    /// Nothing applied yet, under the progress name `state`.
    pub fn new(state: impl Into<String>) -> Self {
        Self { state: state.into(), last: HashMap::new(), quarantined: HashSet::new() }
    }

    /// Writes every aggregate's last applied sequence to `projection_state` under this
    /// progress's name, which must hold none yet (a rebuild deletes them when it starts).
    pub async fn store(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows: Vec<(&String, &i64)> = self.last.iter().collect();
        for chunk in rows.chunks(Self::STORE_CHUNK) {
            let (ids, sequences): (Vec<&str>, Vec<i64>) = chunk.iter().map(|(id, seq)| (id.as_str(), **seq)).unzip();
            sqlx::query(
                "INSERT INTO projection_state (projection, aggregate_id, last_sequence)
                 SELECT $1, t.id, t.seq FROM UNNEST($2::text[], $3::bigint[]) AS t(id, seq)",
            )
            .bind(&self.state)
            .bind(&ids)
            .bind(&sequences)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// An event of a batch that could not be applied.
#[derive(Debug)]
pub struct BatchFailure {
    /// Its index in the batch.
    pub index: usize,
    /// Why.
    pub error: ApplyError,
}

/// Applies `events` in order, each exactly once per aggregate sequence, filling gaps from
/// the event store, on `conn` (the caller's transaction). Progress is read (and locked)
/// once for the whole batch and written back once, so a batch costs about one statement
/// per event. Events of quarantined aggregates are skipped ([`Applied::Quarantined`]).
pub async fn apply_all_in_order(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    state: &str,
    table: &str,
    events: &[StoredEvent],
) -> Result<Vec<Applied>, BatchFailure> {
    apply_all(conn, projection, &mut Progress::Stored(state), table, events).await
}

/// [`apply_all_in_order`] with its progress kept in `progress`. Held progress changes only
/// when the whole batch applied, like stored progress, which the caller's rollback undoes.
async fn apply_all(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    progress: &mut Progress<'_>,
    table: &str,
    events: &[StoredEvent],
) -> Result<Vec<Applied>, BatchFailure> {
    let fail = |index: usize| move |error: ApplyError| BatchFailure { index, error };
    let mut ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let loaded = match progress {
        Progress::Stored(state) => lock_progress(conn, state, table, &ids).await.map_err(|e| fail(0)(e.into()))?,
        Progress::Held(held) => ids
            .iter()
            .map(|id| {
                let seen = held.last.get(*id).copied().unwrap_or(0);
                (id.to_string(), (seen, held.quarantined.contains(*id)))
            })
            .collect(),
    };
    let mut last: HashMap<String, i64> = loaded.iter().map(|(id, (seq, _))| (id.clone(), *seq)).collect();
    // First decide what each event needs (reading missing predecessors from the store), then
    // apply everything new in one call, so the projection can write runs set-based.
    let mut outcomes = Vec::with_capacity(events.len());
    // Per event to apply: its index in `events` and the predecessors it needs first.
    let mut pending: Vec<(usize, Vec<StoredEvent>)> = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let seen = last.get(&event.aggregate_id).copied().unwrap_or(0);
        if event.sequence <= seen {
            outcomes.push(Applied::Duplicate);
            continue;
        }
        if loaded.get(&event.aggregate_id).is_some_and(|(_, quarantined)| *quarantined) {
            outcomes.push(Applied::Quarantined);
            continue;
        }
        let mut missing = Vec::new();
        if event.sequence > seen + 1 {
            missing = event_store::read_aggregate(
                &mut *conn,
                &event.aggregate_type,
                &event.aggregate_id,
                seen,
                Some(event.sequence - 1),
            )
            .await
            .map_err(|e| fail(index)(e.into()))?;
            if missing.len() as i64 != event.sequence - 1 - seen {
                let mut poison = ApplyError::poison(format!(
                    "{} #{}: events {}..{} are missing from the event store",
                    event.aggregate_id,
                    event.sequence,
                    seen + 1,
                    event.sequence - 1
                ));
                if let ApplyError::Poison(p) = &mut poison {
                    p.sequence = Some(seen + 1);
                }
                return Err(fail(index)(poison));
            }
        }
        last.insert(event.aggregate_id.clone(), event.sequence);
        outcomes.push(Applied::Applied { filled: missing.len(), touched: Vec::new() });
        pending.push((index, missing));
    }
    // In order: each event's missing predecessors, then the event; with its index in `events`.
    let plan: Vec<(usize, &StoredEvent)> = pending
        .iter()
        .flat_map(|(index, missing)| missing.iter().chain([&events[*index]]).map(move |e| (*index, e)))
        .collect();
    let refs: Vec<&StoredEvent> = plan.iter().map(|(_, e)| *e).collect();
    let touched = projection.apply_many(conn, table, &refs).await.map_err(|(at, error)| match plan.get(at) {
        Some((index, event)) => fail(*index)(error.at(event)),
        None => fail(0)(error),
    })?;
    for ((index, _), user) in plan.iter().zip(touched) {
        if let (Some(user), Applied::Applied { touched, .. }) = (user, &mut outcomes[*index]) {
            touched.push(user);
        }
    }
    for outcome in &mut outcomes {
        if let Applied::Applied { touched, .. } = outcome {
            touched.sort();
            touched.dedup();
        }
    }
    // Only aggregates this batch advanced need their progress written.
    let advanced = last.into_iter().filter(|(id, seq)| loaded.get(id).map(|(s, _)| s) != Some(seq));
    let state = match progress {
        Progress::Stored(state) => *state,
        Progress::Held(held) => {
            held.last.extend(advanced);
            return Ok(outcomes);
        }
    };
    let (ids, sequences): (Vec<String>, Vec<i64>) = advanced.unzip();
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE projection_state s SET last_sequence = t.seq
               FROM UNNEST($2::text[], $3::bigint[]) AS t(id, seq)
              WHERE s.projection = $1 AND s.aggregate_id = t.id AND s.last_sequence < t.seq",
        )
        .bind(state)
        .bind(&ids)
        .bind(&sequences)
        .execute(&mut *conn)
        .await
        .map_err(|e| fail(events.len().saturating_sub(1))(e.into()))?;
    }
    Ok(outcomes)
}

/// Locks `table` against a rebuild's switch-over, then the progress rows of `ids` under
/// `state` (creating missing ones at 0), in id order so concurrent batches cannot
/// deadlock. Returns each aggregate's last applied sequence and whether it is quarantined.
async fn lock_progress(
    conn: &mut PgConnection,
    state: &str,
    table: &str,
    ids: &[&str],
) -> Result<HashMap<String, (i64, bool)>, sqlx::Error> {
    // Table first, progress rows second: the order a switch-over takes them in too.
    sqlx::query(&format!("LOCK TABLE {table} IN ROW EXCLUSIVE MODE")).execute(&mut *conn).await?;
    // A row must exist to be locked; a concurrent insert of the same row waits for ours.
    sqlx::query(
        "INSERT INTO projection_state (projection, aggregate_id, last_sequence)
         SELECT $1, id, 0 FROM UNNEST($2::text[]) AS t(id) ORDER BY id
         ON CONFLICT (projection, aggregate_id) DO NOTHING",
    )
    .bind(state)
    .bind(ids)
    .execute(&mut *conn)
    .await?;
    let rows: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT s.aggregate_id, s.last_sequence,
                EXISTS (SELECT 1 FROM projection_quarantine q
                         WHERE q.projection = s.projection AND q.aggregate_id = s.aggregate_id)
           FROM projection_state s
          WHERE s.projection = $1 AND s.aggregate_id = ANY($2)
          ORDER BY s.aggregate_id
            FOR UPDATE OF s",
    )
    .bind(state)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(id, seq, q)| (id, (seq, q))).collect())
}

/// Applies `events` exactly once like [`apply_all_in_order`], but a poison event does not
/// fail the batch: it is set aside with its cause, its aggregate is quarantined under
/// `state` (in the caller's transaction on `conn`), and every other event still applies.
/// Only a database failure is an error (retrying may succeed; nothing is half-applied).
///
/// The whole batch is tried at once inside a savepoint; only when something in it is
/// poison is it tried again with a savepoint per event.
pub async fn apply_batch(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    state: &str,
    table: &str,
    events: &[StoredEvent],
) -> Result<Vec<Applied>, sqlx::Error> {
    apply_batch_to(conn, projection, &mut Progress::Stored(state), table, events).await
}

/// [`apply_batch`] with its progress kept in `progress`.
pub async fn apply_batch_to(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    progress: &mut Progress<'_>,
    table: &str,
    events: &[StoredEvent],
) -> Result<Vec<Applied>, sqlx::Error> {
    {
        let mut all = conn.begin().await?;
        match apply_all(&mut all, projection, progress, table, events).await {
            Ok(outcomes) => {
                all.commit().await?;
                return Ok(outcomes);
            }
            Err(BatchFailure { error: ApplyError::Database(e), .. }) => return Err(e),
            Err(BatchFailure { error: ApplyError::Poison(_), .. }) => all.rollback().await?,
        }
    }
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        let mut one = conn.begin().await?;
        match apply_one(&mut one, projection, progress, table, event).await {
            Ok(outcome) => {
                one.commit().await?;
                outcomes.push(outcome);
            }
            Err(ApplyError::Poison(bad)) => {
                one.rollback().await?;
                let reason = bad.describe();
                let sequence = bad.sequence.unwrap_or(event.sequence);
                tracing::warn!(
                    projection = progress.state(), aggregate_id = %event.aggregate_id, sequence, %reason,
                    "Poison event: aggregate quarantined."
                );
                quarantine::add(&mut *conn, progress.state(), event, sequence, bad.event_id, &reason).await?;
                if let Progress::Held(held) = progress {
                    held.quarantined.insert(event.aggregate_id.clone());
                }
                outcomes.push(Applied::Poisoned { sequence, reason });
            }
            Err(ApplyError::Database(e)) => return Err(e),
        }
    }
    Ok(outcomes)
}

/// Decodes the domain event of a stored event, or a poison error.
/// The event's aggregate id as a UUID (every aggregate's is one); anything else is poison.
pub fn aggregate_uuid(event: &StoredEvent) -> Result<Uuid, ApplyError> {
    event
        .aggregate_id
        .parse()
        .map_err(|_| ApplyError::poison(format!("{} id {} is not a UUID", event.aggregate_type, event.aggregate_id)))
}

/// The owner of conversation `id`, from the event store (its `ConversationStarted`, by
/// primary key): projections do not read each other's tables, which may lag behind theirs.
pub async fn conversation_owner(conn: &mut PgConnection, id: Uuid) -> Result<Uuid, ApplyError> {
    event_store::conversation_owner(&mut *conn, id)
        .await?
        .ok_or_else(|| ApplyError::poison(format!("conversation {id} has no ConversationStarted")))
}

pub fn domain_event<E: serde::de::DeserializeOwned>(event: &StoredEvent) -> Result<E, ApplyError> {
    event.to_domain().map_err(|e| {
        ApplyError::poison_because(format!("{} is not a valid {}", event.event_type, event.aggregate_type), e)
    })
}
