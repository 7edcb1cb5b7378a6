//! Loads an aggregate (snapshot + later events), lets it decide, appends the new events in
//! one transaction and answers the new version. A concurrent append to the same aggregate
//! fails on the primary key and is retried a bounded number of times.
//!
//! Commands to one aggregate on one instance queue behind a striped lock, and each stripe
//! keeps the aggregates it committed last, as they stood after the commit. A command to one
//! of them is decided on that copy without reading the event store: if another instance (or
//! a worker) appended meanwhile, the append fails on the primary key, nothing is written, and
//! the command is decided again on freshly loaded state. A refusal or a no-op decided on a
//! cached copy is never answered as is (no append would have caught a stale copy): it is
//! decided again on fresh state first.
//!
//! The append is our own ([`event_append`]), not cqrs-es's `commit`, so that a use case can
//! hand it a guard (a quota reservation) that commits in the same statement as the events
//! or not at all.

use std::collections::HashMap;
use std::time::Duration;

use colloquy_domain::decision::{Decided, PortError};
use colloquy_domain::metadata;
use colloquy_domain::registry::{Registered, RejectionOf};
use colloquy_infra::event_append::{self, snapshot_sequence, AppendError, AppendGuard, SnapshotWrite};
use colloquy_infra::metrics::Metrics;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore, PersistenceError, SerializedEvent};
use cqrs_es::{AggregateError, EventEnvelope, EventStore};
use hashlink::LruCache;
use rand::Rng;
use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use crate::snapshots::SnapshotTolerant;

/// Who issues a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// An authenticated user.
    User(Uuid),
    /// A process worker (the assistant, the ingest worker), named.
    System(&'static str),
    /// Nobody yet (registration).
    Anonymous,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(id) => write!(f, "user:{id}"),
            Self::System(worker) => write!(f, "system:{worker}"),
            Self::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// Who caused a command, and which request or reaction it belongs to.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    /// Who.
    pub actor: Actor,
    /// Shared by everything one request caused.
    pub correlation_id: String,
    /// The command or event that directly caused this one.
    pub causation_id: Option<String>,
}

impl CommandMeta {
    fn to_map(&self) -> HashMap<String, String> {
        let mut m = HashMap::from([
            (metadata::ACTOR.to_string(), self.actor.to_string()),
            (metadata::CORRELATION_ID.to_string(), self.correlation_id.clone()),
        ]);
        if let Some(c) = &self.causation_id {
            m.insert(metadata::CAUSATION_ID.to_string(), c.clone());
        }
        m
    }
}

/// What a successful command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The aggregate's version after the command.
    pub version: i64,
    /// How many events it appended.
    pub events: usize,
}

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<R: std::error::Error> {
    /// The aggregate said no.
    #[error("rejected: {0}")]
    Rejected(R),
    /// Concurrent writers kept winning after every retry.
    #[error("the aggregate was changed concurrently; retry")]
    Conflict,
    /// The append's guard refused it (see [`CommandService::execute_guarded`]); nothing was
    /// written. The reason is the guard's, for it to explain.
    #[error("refused by the append's guard: {0}")]
    Refused(String),
    /// A port the decision needed failed.
    #[error(transparent)]
    Port(PortError),
    /// The event store failed.
    #[error("event store failure")]
    Store(#[source] StoreError),
}

impl<R: std::error::Error> CommandError<R> {
    /// The same failure with its rejection converted.
    pub fn map_rejection<Q: std::error::Error>(self, f: impl FnOnce(R) -> Q) -> CommandError<Q> {
        match self {
            Self::Rejected(r) => CommandError::Rejected(f(r)),
            Self::Conflict => CommandError::Conflict,
            Self::Refused(reason) => CommandError::Refused(reason),
            Self::Port(e) => CommandError::Port(e),
            Self::Store(e) => CommandError::Store(e),
        }
    }
}

/// A failure of the event store underneath cqrs-es (connection, serialisation).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(#[source] Box<dyn std::error::Error + Send + Sync + 'static>);

impl From<Box<dyn std::error::Error + Send + Sync + 'static>> for StoreError {
    fn from(e: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        Self(e)
    }
}

/// Handles commands for one aggregate type.
pub struct CommandService<A: Registered> {
    /// Loads (snapshot and later events); appends go through [`event_append`].
    store: PersistedEventStore<SnapshotTolerant, A>,
    pool: PgPool,
    services: A::Services,
    metrics: Metrics,
    max_attempts: u32,
    stripes: Vec<tokio::sync::Mutex<Stripe<A>>>,
}

/// Striped in-process locks: commands to one aggregate on one instance queue up instead of
/// racing each other to the primary key (which would waste loads and exhaust retries).
/// Writers on other instances are still handled by optimistic concurrency.
const STRIPES: usize = 1024;

/// Aggregates each stripe keeps after their commit (least recently used go first): 16,384
/// per aggregate type and instance. Aggregates are small and of constant size.
const CACHED_PER_STRIPE: usize = 16;

/// One stripe's aggregates, as they stood after this instance's last commit to each.
struct Stripe<A: Registered> {
    committed: LruCache<String, EventStoreAggregateContext<A>>,
}

fn stripes<A: Registered>() -> Vec<tokio::sync::Mutex<Stripe<A>>> {
    (0..STRIPES).map(|_| tokio::sync::Mutex::new(Stripe { committed: LruCache::new(CACHED_PER_STRIPE) })).collect()
}

fn stripe_of(aggregate_id: &str) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in aggregate_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % STRIPES as u64) as usize
}

impl<A> CommandService<A>
where
    A: Registered,
    A::Command: Clone,
{
    /// A service for `A` with its registered snapshot policy: snapshots every
    /// `A::SNAPSHOT_EVERY` events (load cost stays flat), or a full replay on every load. A
    /// snapshot that no longer deserialises is replayed past and then replaced.
    pub fn new(pool: PgPool, services: A::Services, metrics: Metrics) -> Self {
        let repo = SnapshotTolerant::new(pool.clone(), A::SNAPSHOT_EVERY);
        let store = match A::SNAPSHOT_EVERY {
            Some(every) => PersistedEventStore::new_snapshot_store(repo, every),
            None => PersistedEventStore::new_event_store(repo),
        };
        Self { store, pool, services, metrics, max_attempts: 8, stripes: stripes() }
    }

    /// Without the in-process queue per aggregate: concurrent commands to one aggregate
    /// race to the primary key as they would from separate instances (for tests of the
    /// optimistic-concurrency path).
    pub fn without_local_queue(mut self) -> Self {
        self.stripes = Vec::new();
        self
    }

    /// How many times a command is decided and appended before a conflict is final
    /// (default 8).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Decides `command` against the current state and appends the resulting events.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        meta: &CommandMeta,
    ) -> Result<Committed, CommandError<RejectionOf<A>>> {
        self.execute_guarded(aggregate_id, command, meta, None).await
    }

    /// Like [`execute`](Self::execute), with `guard`'s changes (a quota reservation) made in
    /// the statement that appends the events: they commit together or not at all. A guard
    /// that refuses is [`CommandError::Refused`] with its reason, and writes nothing. A
    /// command that appends nothing (refused by the aggregate, or a no-op) never reaches
    /// the guard.
    #[instrument(skip_all, fields(aggregate = A::TYPE, %aggregate_id))]
    pub async fn execute_guarded(
        &self,
        aggregate_id: &str,
        command: A::Command,
        meta: &CommandMeta,
        guard: Option<&dyn AppendGuard>,
    ) -> Result<Committed, CommandError<RejectionOf<A>>> {
        let outcome = self.try_execute(aggregate_id, command, meta, guard).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(CommandError::Rejected(_) | CommandError::Refused(_)) => "rejected",
            Err(CommandError::Conflict) => "conflict",
            Err(CommandError::Port(_) | CommandError::Store(_)) => "error",
        };
        self.metrics.commands.with_label_values(&[A::TYPE, label]).inc();
        outcome
    }

    async fn try_execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        meta: &CommandMeta,
        guard: Option<&dyn AppendGuard>,
    ) -> Result<Committed, CommandError<RejectionOf<A>>> {
        let mut stripe = match self.stripes.get(stripe_of(aggregate_id)) {
            Some(stripe) => Some(stripe.lock().await),
            None => None,
        };
        let mut attempt = 1;
        let mut use_cache = true;
        loop {
            let cached = match (&mut stripe, use_cache) {
                (Some(stripe), true) => stripe.committed.remove(aggregate_id),
                _ => None,
            };
            let from_cache = cached.is_some();
            let context = match cached {
                Some(context) => context,
                None => self.store.load_aggregate(aggregate_id).await.map_err(store_error)?,
            };
            let version = context.current_sequence as i64;
            let sink = EventSink::default();
            // Decide on a copy. cqrs-es 0.5's `EventSink::write` applies each event to the
            // aggregate it is given, and `commit` applies the same events again to the
            // context's aggregate before snapshotting it: deciding on the context itself
            // would write snapshots with the command's events applied twice.
            let mut decided = context.aggregate.clone();
            let handled = decided.handle(command.clone(), &self.services, &sink).await;
            let events = match handled {
                Err(_) if from_cache => {
                    // A refusal on a copy no append verifies: decide again on fresh state.
                    use_cache = false;
                    continue;
                }
                Ok(()) => sink.collect().await,
                Err(refusal) => {
                    self.keep(&mut stripe, context);
                    return Err(refused(refusal));
                }
            };
            if events.is_empty() {
                if from_cache {
                    use_cache = false;
                    continue;
                }
                self.keep(&mut stripe, context);
                return Ok(Committed { version, events: 0 });
            }
            let (sequence, snapshot) = (context.current_sequence, context.current_snapshot);
            let appended = events.len();
            // Whether this append writes a snapshot (cqrs-es's rule), which a cached context
            // must follow to know its snapshot version.
            let snapshots = snapshot_sequence(A::SNAPSHOT_EVERY, sequence, appended).is_some();
            match self.append(&context, &decided, events, meta, guard).await {
                Ok(()) => {
                    let version = (sequence + appended) as i64;
                    tracing::debug!(version, attempt, from_cache, "Command committed.");
                    let after = EventStoreAggregateContext {
                        aggregate_id: aggregate_id.to_string(),
                        aggregate: decided,
                        current_sequence: version as usize,
                        current_snapshot: if snapshots { Some(snapshot.map_or(1, |s| s + 1)) } else { snapshot },
                    };
                    self.keep(&mut stripe, after);
                    return Ok(Committed { version, events: appended });
                }
                Err(AppendError::Refused(reason)) => {
                    // Nothing was written: the context is still the event store's.
                    self.keep(&mut stripe, context);
                    return Err(CommandError::Refused(reason));
                }
                Err(AppendError::Store(PersistenceError::OptimisticLockError)) => {
                    self.metrics.command_retries.with_label_values(&[A::TYPE]).inc();
                    if attempt >= self.max_attempts {
                        break;
                    }
                    attempt += 1;
                    use_cache = false;
                    // Someone appended first: back off with jitter and decide again on fresh state.
                    let jitter = rand::thread_rng().gen_range(0..=(2u64 << attempt.min(6)));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                // Whether it was written is unknown: nothing stays cached, the next command loads.
                Err(AppendError::Store(e)) => return Err(store_error::<A::Error>(AggregateError::from(e))),
            }
        }
        tracing::warn!(attempts = self.max_attempts, "Command gave up after repeated conflicts.");
        Err(CommandError::Conflict)
    }

    /// Appends `events`, decided on `context`'s aggregate (leading to `decided`), with the
    /// snapshot due under cqrs-es's rule (`snapshot_sequence`) and `guard`'s changes, in one
    /// statement. Events are serialised as cqrs-es serialises them (`SerializedEvent` from
    /// an `EventEnvelope`), so loads and consumers read them alike.
    async fn append(
        &self,
        context: &EventStoreAggregateContext<A>,
        decided: &A,
        events: Vec<A::Event>,
        meta: &CommandMeta,
        guard: Option<&dyn AppendGuard>,
    ) -> Result<(), AppendError> {
        let sequence = context.current_sequence;
        let snapshot = match snapshot_sequence(A::SNAPSHOT_EVERY, sequence, events.len()) {
            None => None,
            Some(boundary) => {
                // The state at the boundary: `decided` when the events end there (a command
                // of one event always does), otherwise the loaded state with the events up
                // to it applied.
                let state = if boundary == sequence + events.len() {
                    serde_json::to_value(decided)
                } else {
                    let mut state = context.aggregate.clone();
                    events.iter().take(boundary - sequence).for_each(|e| state.apply(e.clone()));
                    serde_json::to_value(&state)
                }
                .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
                let version = context.current_snapshot.map_or(1, |s| s + 1) as i64;
                Some(SnapshotWrite { payload: state, sequence: boundary as i64, version })
            }
        };
        let metadata = meta.to_map();
        let serialized = events
            .into_iter()
            .zip(sequence + 1..)
            .map(|(payload, sequence)| {
                let envelope = EventEnvelope::<A> {
                    aggregate_id: context.aggregate_id.clone(),
                    sequence,
                    payload,
                    metadata: metadata.clone(),
                };
                SerializedEvent::try_from(&envelope)
            })
            .collect::<Result<Vec<_>, _>>()?;
        event_append::append_guarded(&self.pool, A::TYPE, &serialized, snapshot, guard).await
    }

    /// Keeps `context` (the aggregate as the event store has it) for the next command to it.
    fn keep(
        &self,
        stripe: &mut Option<tokio::sync::MutexGuard<'_, Stripe<A>>>,
        context: EventStoreAggregateContext<A>,
    ) {
        if let Some(stripe) = stripe {
            stripe.committed.insert(context.aggregate_id.clone(), context);
        }
    }

    /// The aggregate as it stands, for decisions the application layer takes on the write
    /// model (consistent with the last commit, unlike a read model): defaults a new
    /// conversation inherits from its owner, whether an account may log in.
    pub async fn current_state(&self, aggregate_id: &str) -> Result<(A, i64), CommandError<RejectionOf<A>>> {
        let context = self.store.load_aggregate(aggregate_id).await.map_err(store_error)?;
        Ok((context.aggregate, context.current_sequence as i64))
    }
}

pub(crate) fn refused<E: Decided>(e: E) -> CommandError<E::Rejection> {
    match e.split() {
        Ok(rejection) => CommandError::Rejected(rejection),
        Err(port) => CommandError::Port(port),
    }
}

fn store_error<E: Decided>(e: AggregateError<E>) -> CommandError<E::Rejection> {
    match e {
        AggregateError::UserError(e) => refused(e),
        AggregateError::AggregateConflict => CommandError::Conflict,
        AggregateError::DatabaseConnectionError(e)
        | AggregateError::DeserializationError(e)
        | AggregateError::UnexpectedError(e) => CommandError::Store(StoreError(e)),
    }
}
