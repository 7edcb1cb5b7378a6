//! The consumer loop: receives posted messages, runs one reply at a time per conversation
//! (many conversations at once, up to a bound), stores offsets in order, listens for
//! cancels, and ends replies whose worker stopped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy_domain::conversation::{reply_id_for, ConversationEvent, UserMessagePosted};
use colloquy_domain::Conversation;
use colloquy_infra::assistant_settings::WorkerSettings;
use colloquy_infra::cloudevents;
use colloquy_infra::event_store::{self, StoredEvent};
use colloquy_infra::kafka::{consumer_config, Topics};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::reply_streams::{ReplyStreams, ReplyTarget};
use colloquy_infra::settings::KafkaSettings;
use colloquy_providers::router::Router;
use cqrs_es::Aggregate;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::leases::Leases;
use super::offsets::OffsetTracker;
use super::reply::{self, Question, ReplyError};
use crate::caller::Caller;
use crate::Commands;

/// The actor name of the assistant's events (`system:assistant`).
pub const WORKER_NAME: &str = "assistant";

/// What the worker runs on.
pub struct AssistantDeps {
    /// The write side.
    pub commands: Arc<Commands>,
    /// Postgres (event-store reads, leases).
    pub pool: PgPool,
    /// The provider router.
    pub router: Arc<Router>,
    /// Reply streams in Redis.
    pub streams: ReplyStreams,
    /// Metrics.
    pub metrics: Metrics,
    /// Grounding in the knowledge base, for conversations that have it on (`None`: no
    /// embedder in this process; grounded conversations are answered without passages).
    pub grounding: Option<super::Grounding>,
}

/// State shared by the worker's tasks.
pub struct Shared {
    pub(super) commands: Arc<Commands>,
    pub(super) pool: PgPool,
    pub(super) router: Arc<Router>,
    pub(super) streams: ReplyStreams,
    pub(super) leases: Leases,
    pub(super) settings: WorkerSettings,
    pub(super) grounding: Option<super::Grounding>,
    metrics: Metrics,
    /// Replies streaming in this process, by reply id: cancelling the token cancels the reply.
    in_flight: Mutex<HashMap<Uuid, CancellationToken>>,
}

impl Shared {
    pub(super) fn register(&self, reply_id: Uuid) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut map) = self.in_flight.lock() {
            map.insert(reply_id, token.clone());
        }
        self.metrics.assistant_active_replies.inc();
        token
    }

    pub(super) fn unregister(&self, reply_id: Uuid) {
        if let Ok(mut map) = self.in_flight.lock() {
            map.remove(&reply_id);
        }
        self.metrics.assistant_active_replies.dec();
    }

    fn cancel(&self, reply_id: Uuid) {
        let token = self.in_flight.lock().ok().and_then(|map| map.get(&reply_id).cloned());
        if let Some(token) = token {
            tracing::info!(%reply_id, "Cancel requested; stopping the reply.");
            token.cancel();
        }
    }

    pub(super) fn finished(&self, outcome: &str) {
        self.metrics.assistant_replies.with_label_values(&[outcome]).inc();
    }

    pub(super) fn titled(&self, outcome: &str) {
        self.metrics.assistant_titles.with_label_values(&[outcome]).inc();
    }
}

/// One received posted message, waiting for its conversation's turn.
struct Job {
    topic: String,
    partition: i32,
    offset: i64,
    event: StoredEvent,
    _permit: OwnedSemaphorePermit,
}

/// A finished job's place in its partition.
struct Done {
    topic: String,
    partition: i32,
    offset: i64,
    /// `false` when the reply was not recorded (the worker stopped): the offset stays, so
    /// the message is redelivered.
    acknowledged: bool,
}

/// The assistant worker.
pub struct Assistant {
    consumer: StreamConsumer,
    topic: String,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
}

impl Assistant {
    /// Joins the assistant's consumer group on the conversation topic. `name` identifies
    /// this worker in leases and `ReplyStarted` (host and process id, say).
    pub fn new(
        kafka: &KafkaSettings,
        settings: WorkerSettings,
        name: String,
        deps: AssistantDeps,
    ) -> Result<Self, KafkaError> {
        let topics = Topics::new(kafka);
        let consumer: StreamConsumer = consumer_config(kafka, &Self::group(kafka)).create()?;
        let topic = topics.events(Conversation::TYPE);
        consumer.subscribe(&[&topic])?;
        let lease = Duration::from_millis(settings.lease_ms.max(300));
        let leases = Leases::new(deps.pool.clone(), name, lease);
        for outcome in ["completed", "failed", "cancelled"] {
            deps.metrics.assistant_replies.with_label_values(&[outcome]).inc_by(0);
        }
        let slots = Arc::new(Semaphore::new(settings.max_concurrent_replies.max(1)));
        let shared = Arc::new(Shared {
            commands: deps.commands,
            pool: deps.pool,
            router: deps.router,
            streams: deps.streams,
            leases,
            settings,
            grounding: deps.grounding,
            metrics: deps.metrics,
            in_flight: Mutex::new(HashMap::new()),
        });
        Ok(Self { consumer, topic, shared, slots })
    }

    /// The consumer group of every assistant worker.
    pub fn group(kafka: &KafkaSettings) -> String {
        Topics::new(kafka).group(WORKER_NAME)
    }

    /// Answers messages until `shutdown`; then lets running replies finish for the grace
    /// period, fails those still running (partial text kept), and commits its offsets.
    #[tracing::instrument(skip_all, fields(worker = self.shared.leases.worker()))]
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(topic = %self.topic, "Assistant worker started.");
        let abort = CancellationToken::new();
        // Every task of the worker lives in this set: when the worker's own task ends (or is
        // aborted), they end with it.
        let mut tasks = JoinSet::new();
        tasks.spawn(listen_for_cancels(self.shared.clone(), shutdown.clone()));
        tasks.spawn(sweep(self.shared.clone(), shutdown.clone()));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let queues: Arc<Mutex<HashMap<Uuid, VecDeque<Job>>>> = Arc::default();
        let mut tracker = OffsetTracker::default();
        loop {
            tokio::select! {
                // Receive only while a reply slot is free: the slots bound the replies
                // running and waiting in this process.
                received = self.consumer.recv(), if self.slots.available_permits() > 0 => {
                    let m = match received {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "Kafka receive failed.");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
                    tracker.begin(&topic, partition, offset);
                    let event = m.payload().map(cloudevents::decode);
                    match (event, self.slots.clone().try_acquire_owned()) {
                        (Some(Ok(event)), Ok(permit)) if ASKS_FOR_A_REPLY.contains(&event.event_type.as_str()) => {
                            let job = Job { topic, partition, offset, event, _permit: permit };
                            enqueue(&mut tasks, &self.shared, &queues, job, done_tx.clone(), abort.clone());
                        }
                        // Anything else needs no answer (an undecodable record is the
                        // projectors' to dead-letter).
                        _ => self.acknowledge(&mut tracker, Done { topic, partition, offset, acknowledged: true }),
                    }
                }
                Some(done) = done_rx.recv() => self.acknowledge(&mut tracker, done),
                _ = shutdown.cancelled() => break,
            }
        }
        // Stop: running replies get the grace period, then end as failed.
        let grace = Duration::from_millis(self.shared.settings.shutdown_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        while tracker.in_flight() > 0 {
            tokio::select! {
                Some(done) = done_rx.recv() => self.acknowledge(&mut tracker, done),
                _ = tokio::time::sleep_until(deadline), if !abort.is_cancelled() => abort.cancel(),
                else => break,
            }
        }
        tasks.abort_all();
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "No offsets committed at shutdown.");
        }
        tracing::info!("Assistant worker stopped.");
    }

    fn acknowledge(&self, tracker: &mut OffsetTracker, done: Done) {
        if !done.acknowledged {
            // Keep the partition where it is: the message is answered after a restart.
            return;
        }
        let Some(next) = tracker.finish(&done.topic, done.partition, done.offset) else { return };
        let mut tpl = TopicPartitionList::new();
        if tpl.add_partition_offset(&done.topic, done.partition, Offset::Offset(next)).is_ok() {
            if let Err(e) = self.consumer.store_offsets(&tpl) {
                // Revoked meanwhile: the new owner re-reads and finds the reply answered.
                tracing::debug!(error = %e, "Could not store the offset.");
            }
        }
    }
}

/// Queues `job` behind its conversation's running reply, or starts a runner for it.
fn enqueue(
    tasks: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    queues: &Arc<Mutex<HashMap<Uuid, VecDeque<Job>>>>,
    job: Job,
    done: mpsc::UnboundedSender<Done>,
    abort: CancellationToken,
) {
    let Ok(conversation) = job.event.aggregate_id.parse::<Uuid>() else {
        let _ = done.send(Done { topic: job.topic, partition: job.partition, offset: job.offset, acknowledged: true });
        return;
    };
    let start_runner = {
        let Ok(mut map) = queues.lock() else { return };
        let queue = map.entry(conversation).or_default();
        queue.push_back(job);
        queue.len() == 1
    };
    if !start_runner {
        return;
    }
    let (shared, queues) = (shared.clone(), queues.clone());
    tasks.spawn(async move {
        loop {
            let next = {
                let Ok(map) = queues.lock() else { return };
                map.get(&conversation)
                    .and_then(|q| q.front())
                    .map(|j| (j.event.clone(), j.topic.clone(), j.partition, j.offset))
            };
            let Some((event, topic, partition, offset)) = next else { return };
            let acknowledged = run_job(&shared, conversation, event, &abort).await;
            // Dequeue first (its slot frees), then report: the consumer loop may wait on a slot.
            let more = {
                let Ok(mut map) = queues.lock() else { return };
                let queue = map.entry(conversation).or_default();
                queue.pop_front();
                let more = !queue.is_empty();
                if !more {
                    map.remove(&conversation);
                }
                more
            };
            let _ = done.send(Done { topic, partition, offset, acknowledged });
            if !more {
                return;
            }
        }
    });
}

/// The events that ask for a reply: a posted (or edited) message, a regeneration.
const ASKS_FOR_A_REPLY: [&str; 2] = ["UserMessagePosted", "ReplyRequested"];

/// What `event` asks to answer: the question and the reply's id and model; `None` when it
/// asks nothing (or its message is gone with its conversation).
async fn question_of(
    shared: &Shared,
    conversation_id: Uuid,
    event: &StoredEvent,
) -> Result<Option<(i64, UserMessagePosted, Uuid, Option<String>)>, ReplyError> {
    match event.to_domain::<ConversationEvent>() {
        Ok(ConversationEvent::UserMessagePosted(posted)) => {
            let reply_id = reply_id_for(posted.message_id);
            Ok(Some((event.sequence, posted, reply_id, None)))
        }
        Ok(ConversationEvent::ReplyRequested(requested)) => {
            // The message answered again: posted here or imported.
            let message = event_store::user_message_text(&shared.pool, conversation_id, requested.in_reply_to)
                .await
                .map_err(|e| ReplyError::Infrastructure(e.to_string()))?;
            Ok(message.map(|(sequence, content, model)| {
                let posted = UserMessagePosted {
                    message_id: requested.in_reply_to,
                    author_id: requested.requested_by,
                    content,
                    model,
                    parent_id: None,
                    edit_of: None,
                };
                (sequence, posted, requested.reply_id, requested.model)
            }))
        }
        _ => Ok(None),
    }
}

/// Answers one posted message or regeneration request; `true` when its offset may be stored.
async fn run_job(shared: &Arc<Shared>, conversation_id: Uuid, event: StoredEvent, abort: &CancellationToken) -> bool {
    let mut backoff = Duration::from_millis(200);
    let (sequence, posted, reply_id, requested_model) = loop {
        match question_of(shared, conversation_id, &event).await {
            Ok(Some(question)) => break question,
            Ok(None) => return true,
            Err(e) => {
                tracing::error!(error = %e, %conversation_id, "Could not read the message to answer; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = abort.cancelled() => return false,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    let correlation = event.metadata.get(colloquy_domain::metadata::CORRELATION_ID).cloned().unwrap_or_default();
    // The posting request's id (`request:<id>`, its causation) and correlation id follow
    // the message into every log line of its reply, provider attempts included.
    let request = event.metadata.get(colloquy_domain::metadata::CAUSATION_ID).cloned().unwrap_or_default();
    let span =
        tracing::info_span!("reply", %conversation_id, %reply_id, correlation_id = %correlation, posted_by = %request);
    async move {
        let caller = Caller::system(WORKER_NAME, posted.author_id, correlation, format!("event:{}", event.event_id));
        let question = Question { conversation_id, sequence, posted, reply_id, requested_model, caller };
        let mut backoff = Duration::from_millis(200);
        loop {
            let outcome = match shared.leases.claim(reply_id, conversation_id, question.posted.author_id).await {
                // Another worker is answering it right now (a redelivery during a
                // rebalance). Wait until it released the lease (then the reply is found
                // answered) or its lease expired (then this worker takes it over): taking
                // the message as done now would lose it if that worker died before it
                // started the reply.
                Ok(false) => {
                    tokio::select! {
                        _ = tokio::time::sleep(shared.leases.ttl() / 3) => continue,
                        _ = abort.cancelled() => return false,
                    }
                }
                Ok(true) => reply::answer(shared, &question, abort).await,
                Err(e) => Err(ReplyError::Infrastructure(e.to_string())),
            };
            match outcome {
                Ok(()) => {
                    if let Err(e) = shared.leases.release(reply_id).await {
                        tracing::warn!(error = %e, "Could not release the reply's lease; it expires by itself.");
                    }
                    return true;
                }
                Err(ReplyError::Stopping) => {
                    // Not started: free it at once for the worker the message goes to next.
                    if let Err(e) = shared.leases.release(reply_id).await {
                        tracing::warn!(error = %e, "Could not release the reply's lease; it expires by itself.");
                    }
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "Could not answer; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = abort.cancelled() => return false,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Cancels this process's replies when their owners ask, wherever the request arrived.
async fn listen_for_cancels(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match shared.streams.cancel_requests().await {
            Ok(requests) => {
                backoff = Duration::from_millis(200);
                let mut requests = std::pin::pin!(requests);
                loop {
                    tokio::select! {
                        id = requests.next() => match id {
                            Some(id) => shared.cancel(id),
                            None => break,
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
                tracing::warn!("The cancel channel closed; subscribing again.");
            }
            Err(e) => tracing::warn!(error = %e, "Could not subscribe to cancel requests; retrying."),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Ends replies whose worker stopped renewing their lease.
async fn sweep(shared: Arc<Shared>, shutdown: CancellationToken) {
    let every = Duration::from_millis(shared.settings.sweep_interval_ms.max(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let abandoned = match shared.leases.claim_abandoned(16).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "Could not look for abandoned replies.");
                continue;
            }
        };
        for a in abandoned {
            let target = ReplyTarget { reply_id: a.reply_id, conversation_id: a.conversation_id, owner_id: a.owner_id };
            let caller = Caller::system(
                WORKER_NAME,
                a.owner_id,
                format!("sweep:{}", a.reply_id),
                format!("lease:{}", a.reply_id),
            );
            match reply::end_abandoned(&shared, target, &caller).await {
                Ok(()) => {
                    if let Err(e) = shared.leases.release(a.reply_id).await {
                        tracing::warn!(error = %e, "Could not release an abandoned reply's lease.");
                    }
                }
                Err(e) => {
                    tracing::warn!(reply_id = %a.reply_id, error = %e, "Could not end an abandoned reply; trying later.")
                }
            }
        }
    }
}
