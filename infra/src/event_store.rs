//! The event store's SQL: every statement on `events` that is not postgres-es's own lives
//! here. Ordered reads shared by the relay, projections (gap filling and rebuilds) and the
//! audit tooling; the lookups decisions need (message and reply ids, whether an aggregate
//! exists); the conversation history the assistant builds prompts from; and the integrity
//! checks `colloquy verify` runs.
//!
//! Reads in commit order sit behind a fence: only rows written by transactions older than
//! the oldest one still running (`pg_snapshot_xmin`) are returned, ordered by
//! `(tx_id, position)`. A transaction that commits late therefore holds later events back
//! instead of being skipped.

use std::collections::HashMap;

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use colloquy_domain::conversation::tree::{self, ParentLink, TreeNode};
use colloquy_domain::conversation::{
    ConversationEvent, ConversationStarted, MessageLookup, MessageNode, ReplyStarted, UserMessagePosted,
};
use colloquy_domain::decision::PortError;
use colloquy_domain::file::FileEvent;
use colloquy_domain::knowledge::{DocumentSource, KnowledgeDocumentEvent};
use colloquy_domain::{Conversation, File, KnowledgeDocument};
use cqrs_es::Aggregate;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

/// One event as stored, with its payload unwrapped from the enum tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Stable identity (CloudEvents `id`).
    pub event_id: Uuid,
    /// Global insertion position.
    pub position: i64,
    /// `User`, `Conversation`, ...
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The aggregate's version after this event (1-based).
    pub sequence: i64,
    /// The event type (the enum variant's name).
    pub event_type: String,
    /// The payload version.
    pub event_version: String,
    /// The payload without its enum tag (the CloudEvents `data`).
    pub data: Value,
    /// Actor, correlation and causation ids.
    pub metadata: HashMap<String, String>,
    /// Commit time.
    pub recorded_at: DateTime<Utc>,
}

/// Reading failed.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// The database failed.
    #[error("event store query failed")]
    Database(#[from] sqlx::Error),
    /// A row could not be decoded.
    #[error("malformed event {aggregate_type}/{aggregate_id}#{sequence}: {problem}")]
    Malformed {
        /// Aggregate type.
        aggregate_type: String,
        /// Aggregate id.
        aggregate_id: String,
        /// Sequence.
        sequence: i64,
        /// What is wrong with it.
        problem: &'static str,
        /// The decoding error underneath, if any.
        #[source]
        source: Option<serde_json::Error>,
    },
}

impl StoredEvent {
    /// The domain event (`UserEvent`, `ConversationEvent`, ...) this record holds.
    pub fn to_domain<E: DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        serde_json::from_value(self.tagged())
    }

    /// The payload with its enum tag (`{"<EventType>": data}`), as serde reads the domain enum.
    pub fn tagged(&self) -> Value {
        let mut tagged = serde_json::Map::with_capacity(1);
        tagged.insert(self.event_type.clone(), self.data.clone());
        Value::Object(tagged)
    }

    /// A metadata value, if present.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// What in this event (as a Kafka record carried it) differs from `stored`, the event
    /// the store holds under the same aggregate and sequence; `None` when they agree.
    /// Metadata is compared only where a record carries it (actor, correlation, causation).
    pub fn mismatch(&self, stored: &StoredEvent) -> Option<&'static str> {
        use colloquy_domain::metadata::{ACTOR, CAUSATION_ID, CORRELATION_ID};
        if self.event_id != stored.event_id {
            Some("event id")
        } else if self.aggregate_type != stored.aggregate_type
            || self.aggregate_id != stored.aggregate_id
            || self.sequence != stored.sequence
        {
            Some("aggregate or sequence")
        } else if self.event_type != stored.event_type || self.event_version != stored.event_version {
            Some("event type")
        } else if self.data != stored.data {
            Some("data")
        } else if self.position != stored.position || self.recorded_at != stored.recorded_at {
            Some("position or time")
        } else if [ACTOR, CORRELATION_ID, CAUSATION_ID].iter().any(|k| self.meta(k) != stored.meta(k)) {
            Some("metadata")
        } else {
            None
        }
    }
}

/// Identifies one event: its aggregate and sequence (the event store's primary key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EventKey {
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Sequence.
    pub sequence: i64,
}

impl EventKey {
    /// The key of `event`.
    pub fn of(event: &StoredEvent) -> Self {
        Self {
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
        }
    }
}

fn unzip_keys(keys: &[EventKey]) -> (Vec<&str>, Vec<&str>, Vec<i64>) {
    let mut out = (Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()));
    for k in keys {
        out.0.push(k.aggregate_type.as_str());
        out.1.push(k.aggregate_id.as_str());
        out.2.push(k.sequence);
    }
    out
}

/// Where a commit-order reader stands: the last `(tx_id, position)` it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogCursor {
    /// The writing transaction (xid8 as a number).
    pub tx_id: i64,
    /// The position.
    pub position: i64,
}

const COLUMNS: &str = "event_id, position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
     payload, metadata, recorded_at, tx_id::text::bigint AS tx";

fn decode(row: &sqlx::postgres::PgRow) -> Result<(StoredEvent, LogCursor), EventStoreError> {
    let aggregate_type: String = row.try_get("aggregate_type")?;
    let aggregate_id: String = row.try_get("aggregate_id")?;
    let sequence: i64 = row.try_get("sequence")?;
    let event_type: String = row.try_get("event_type")?;
    let malformed = |problem: &'static str, source: Option<serde_json::Error>| EventStoreError::Malformed {
        aggregate_type: aggregate_type.clone(),
        aggregate_id: aggregate_id.clone(),
        sequence,
        problem,
        source,
    };
    let payload: Value = row.try_get("payload")?;
    let data = match payload {
        Value::Object(mut map) if map.len() == 1 => {
            map.remove(&event_type).ok_or_else(|| malformed("payload tag differs from event_type", None))?
        }
        // A unit variant serialises as a bare string.
        Value::String(tag) if tag == event_type => Value::Object(Default::default()),
        _ => return Err(malformed("payload is not a tagged event", None)),
    };
    let metadata: Value = row.try_get("metadata")?;
    let metadata: HashMap<String, String> =
        serde_json::from_value(metadata).map_err(|e| malformed("metadata is not a string map", Some(e)))?;
    let position: i64 = row.try_get("position")?;
    let tx_id: i64 = row.try_get("tx")?;
    let event = StoredEvent {
        event_id: row.try_get("event_id")?,
        position,
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        event_version: row.try_get("event_version")?,
        data,
        metadata,
        recorded_at: row.try_get("recorded_at")?,
    };
    Ok((event, LogCursor { tx_id, position }))
}

/// Up to `limit` events after `after` in commit order, behind the fence, optionally only of
/// the given aggregate types.
pub async fn read_committed<'e>(
    db: impl PgExecutor<'e>,
    after: LogCursor,
    aggregate_types: Option<&[String]>,
    limit: i64,
) -> Result<Vec<(StoredEvent, LogCursor)>, EventStoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events
          WHERE (tx_id, position) > ($1::text::xid8, $2)
            AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
            AND ($3::text[] IS NULL OR aggregate_type = ANY($3))
          ORDER BY tx_id, position
          LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(after.tx_id.to_string())
        .bind(after.position)
        .bind(aggregate_types)
        .bind(limit)
        .fetch_all(db)
        .await?;
    rows.iter().map(decode).collect()
}

/// The highest `position` in the store (0 when it is empty): one step down the
/// `events_position` index, whatever the size of the store. Lag measured as the distance
/// between two positions costs the same; counting the rows between them would cost a scan
/// of every one, at every scrape.
pub async fn last_position<'e>(db: impl PgExecutor<'e>) -> Result<i64, EventStoreError> {
    let last: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events").fetch_one(db).await?;
    Ok(last.unwrap_or(0))
}

/// Events of one aggregate with `from < sequence <= to` (`to = None`: to the end).
pub async fn read_aggregate<'e>(
    db: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: &str,
    from_exclusive: i64,
    to_inclusive: Option<i64>,
) -> Result<Vec<StoredEvent>, EventStoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 AND ($4::bigint IS NULL OR sequence <= $4)
          ORDER BY sequence"
    );
    let rows = sqlx::query(&sql)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(from_exclusive)
        .bind(to_inclusive)
        .fetch_all(db)
        .await?;
    rows.iter().map(|r| decode(r).map(|(e, _)| e)).collect()
}

/// Up to `limit` events of one aggregate with `sequence > after`, in order: one page of an
/// aggregate's history, however long it is.
pub async fn read_aggregate_page<'e>(
    db: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, EventStoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
          ORDER BY sequence
          LIMIT $4"
    );
    let rows = sqlx::query(&sql).bind(aggregate_type).bind(aggregate_id).bind(after).bind(limit).fetch_all(db).await?;
    rows.iter().map(|r| decode(r).map(|(e, _)| e)).collect()
}

/// The conversation-owner lookup's statement: the first event of a conversation, by primary
/// key. The aggregate type is spelled into the SQL, as for [`message_exists`].
static CONVERSATION_START: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_type = '{}' AND aggregate_id = $1 AND sequence = 1",
        Conversation::TYPE
    )
});

/// How the conversation `conversation_id` was started, read from its first event (one
/// primary-key lookup); `None` when it has no events.
pub async fn conversation_started<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
) -> Result<Option<ConversationStarted>, EventStoreError> {
    let Some(row) =
        sqlx::query(CONVERSATION_START.as_str()).bind(conversation_id.to_string()).fetch_optional(db).await?
    else {
        return Ok(None);
    };
    let (event, _) = decode(&row)?;
    match domain_event(&event)? {
        ConversationEvent::ConversationStarted(started) => Ok(Some(started)),
        _ => Err(malformed(event, "a conversation's first event is not ConversationStarted", None)),
    }
}

/// Who started the conversation `conversation_id` (see [`conversation_started`]).
/// Ownership never changes, so this holds for deleted conversations too, and as soon as the
/// start is committed (before any read model has it).
pub async fn conversation_owner<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
) -> Result<Option<Uuid>, EventStoreError> {
    Ok(conversation_started(db, conversation_id).await?.map(|started| started.owner_id))
}

/// The event that posted `message_id` in the conversation, with its sequence (served by
/// the `events_message_id` index): what a use case compares a repeated post with.
pub async fn posted_message<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
    message_id: Uuid,
) -> Result<Option<(i64, UserMessagePosted)>, EventStoreError> {
    Ok(posted_message_event(db, conversation_id, message_id).await?.map(|(event, posted)| (event.sequence, posted)))
}

/// [`posted_message`] with the whole stored event.
async fn posted_message_event<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
    message_id: Uuid,
) -> Result<Option<(StoredEvent, UserMessagePosted)>, EventStoreError> {
    Ok(match message_event(db, conversation_id, message_id).await? {
        Some((event, ConversationEvent::UserMessagePosted(posted))) => Some((event, posted)),
        _ => None,
    })
}

/// The event that added user message (or imported message) `message_id`, decoded.
async fn message_event<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
    message_id: Uuid,
) -> Result<Option<(StoredEvent, ConversationEvent)>, EventStoreError> {
    let Some(row) = sqlx::query(MESSAGE_EVENT.as_str())
        .bind(conversation_id.to_string())
        .bind(message_id.to_string())
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    let (event, _) = decode(&row)?;
    let decoded = domain_event(&event)?;
    Ok(Some((event, decoded)))
}

/// The text and requested model of user message `message_id` (posted or imported), with the
/// sequence that recorded it: what a regenerated reply answers.
pub async fn user_message_text(
    pool: &sqlx::PgPool,
    conversation_id: Uuid,
    message_id: Uuid,
) -> Result<Option<(i64, String, Option<String>)>, EventStoreError> {
    Ok(match message_event(pool, conversation_id, message_id).await? {
        Some((event, ConversationEvent::UserMessagePosted(m))) => Some((event.sequence, m.content, m.model)),
        Some((event, ConversationEvent::MessageImported(m))) if m.role == "user" => {
            Some((event.sequence, m.content, m.model))
        }
        _ => None,
    })
}

static DOCUMENT_SOURCES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_type = '{}' AND aggregate_id = $1
            AND event_type IN ('DocumentCreated', 'DocumentRevised') ORDER BY sequence",
        KnowledgeDocument::TYPE
    )
});

/// Where the text of `version` of the knowledge document `document_id` comes from, read
/// from its events: the creation's source for version 1, the revision's text for later
/// versions; `None` when the document has no such version.
pub async fn document_source<'e>(
    db: impl PgExecutor<'e>,
    document_id: Uuid,
    version: u32,
) -> Result<Option<DocumentSource>, EventStoreError> {
    let rows = sqlx::query(DOCUMENT_SOURCES.as_str()).bind(document_id.to_string()).fetch_all(db).await?;
    for row in &rows {
        let (event, _) = decode(row)?;
        match event.to_domain::<KnowledgeDocumentEvent>() {
            Ok(KnowledgeDocumentEvent::DocumentCreated(c)) if c.version == version => return Ok(Some(c.source)),
            Ok(KnowledgeDocumentEvent::DocumentRevised(r)) if r.version == version => {
                return Ok(Some(DocumentSource::Text { text: r.text }));
            }
            Ok(_) => {}
            Err(e) => return Err(malformed(event, "unreadable knowledge document event", Some(e))),
        }
    }
    Ok(None)
}

static FILE_UPLOAD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_type = '{}' AND aggregate_id = $1 AND sequence = 1",
        File::TYPE
    )
});

/// The media type the file `file_id` was stored with (its upload event); `None` when it has
/// no events.
pub async fn file_media_type<'e>(db: impl PgExecutor<'e>, file_id: Uuid) -> Result<Option<String>, EventStoreError> {
    let Some(row) = sqlx::query(FILE_UPLOAD.as_str()).bind(file_id.to_string()).fetch_optional(db).await? else {
        return Ok(None);
    };
    let (event, _) = decode(&row)?;
    match event.to_domain::<FileEvent>() {
        Ok(FileEvent::FileUploaded(uploaded)) => Ok(Some(uploaded.media_type)),
        Ok(_) => Err(malformed(event, "a file's first event is not FileUploaded", None)),
        Err(e) => Err(malformed(event, "unreadable file event", Some(e))),
    }
}

/// Who uploaded the file `file_id`, from its first event (one primary-key lookup); `None`
/// when it has no events. Known as soon as the upload is committed, before any read model.
pub async fn file_owner<'e>(db: impl PgExecutor<'e>, file_id: Uuid) -> Result<Option<Uuid>, EventStoreError> {
    let Some(row) = sqlx::query(FILE_UPLOAD.as_str()).bind(file_id.to_string()).fetch_optional(db).await? else {
        return Ok(None);
    };
    let (event, _) = decode(&row)?;
    match event.to_domain::<FileEvent>() {
        Ok(FileEvent::FileUploaded(uploaded)) => Ok(Some(uploaded.owner_id)),
        Ok(_) => Err(malformed(event, "a file's first event is not FileUploaded", None)),
        Err(e) => Err(malformed(event, "unreadable file event", Some(e))),
    }
}

static DOCUMENT_CREATION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_type = '{}' AND aggregate_id = $1 AND sequence = 1",
        KnowledgeDocument::TYPE
    )
});

/// Who created the knowledge document `document_id`, from its first event; `None` when it
/// has no events.
pub async fn document_owner<'e>(db: impl PgExecutor<'e>, document_id: Uuid) -> Result<Option<Uuid>, EventStoreError> {
    let Some(row) = sqlx::query(DOCUMENT_CREATION.as_str()).bind(document_id.to_string()).fetch_optional(db).await?
    else {
        return Ok(None);
    };
    let (event, _) = decode(&row)?;
    match event.to_domain::<KnowledgeDocumentEvent>() {
        Ok(KnowledgeDocumentEvent::DocumentCreated(created)) => Ok(Some(created.owner_id)),
        Ok(_) => Err(malformed(event, "a document's first event is not DocumentCreated", None)),
        Err(e) => Err(malformed(event, "unreadable knowledge document event", Some(e))),
    }
}

fn domain_event(event: &StoredEvent) -> Result<ConversationEvent, EventStoreError> {
    event
        .to_domain::<ConversationEvent>()
        .map_err(|e| malformed(event.clone(), "unreadable conversation event", Some(e)))
}

fn malformed(event: StoredEvent, problem: &'static str, source: Option<serde_json::Error>) -> EventStoreError {
    EventStoreError::Malformed {
        aggregate_type: event.aggregate_type,
        aggregate_id: event.aggregate_id,
        sequence: event.sequence,
        problem,
        source,
    }
}

/// The stored events under `keys`, in one statement (a key the store does not hold is
/// simply absent from the answer), each decoded on its own: one unreadable row does not
/// hide the others. Projectors check each Kafka record against it.
#[allow(clippy::type_complexity)]
pub async fn find_events<'e>(
    db: impl PgExecutor<'e>,
    keys: &[EventKey],
) -> Result<Vec<(EventKey, Result<StoredEvent, EventStoreError>)>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (types, ids, sequences) = unzip_keys(keys);
    let sql = format!(
        "SELECT {COLUMNS} FROM events
          WHERE (aggregate_type, aggregate_id, sequence) IN
                (SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]))"
    );
    let rows = sqlx::query(&sql).bind(&types).bind(&ids).bind(&sequences).fetch_all(db).await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let key = EventKey {
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
        };
        found.push((key, decode(row).map(|(e, _)| e)));
    }
    Ok(found)
}

/// The aggregate's current version (0 when it has no events).
pub async fn aggregate_version<'e>(
    db: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<i64, EventStoreError> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT max(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2")
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_one(db)
            .await?;
    Ok(v.unwrap_or(0))
}

/// The event type that starts a reply: the only event whose `reply_id` claims an id (the
/// partial index `events_reply_id` names it too).
const REPLY_STARTED: &str = "ReplyStarted";

/// The message-id lookup's statement. The aggregate type is spelled into the SQL (not
/// bound) so the planner can use the partial index `events_message_id`, whose predicate
/// names it.
static MESSAGE_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events
          WHERE aggregate_type = '{}' AND aggregate_id = $1 AND (payload -> event_type ->> 'message_id') = $2
          ORDER BY sequence LIMIT 1",
        Conversation::TYPE
    )
});

/// The reply-id lookup's statement: the `ReplyStarted` of a reply, through the partial
/// index `events_reply_id` (aggregate and event type spelled in, as its predicate).
static REPLY_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events
          WHERE aggregate_type = '{}' AND event_type = '{REPLY_STARTED}' AND aggregate_id = $1
            AND (payload -> event_type ->> 'reply_id') = $2
          ORDER BY sequence LIMIT 1",
        Conversation::TYPE
    )
});

/// Whether an id is taken by a user message (`message_id`, index `events_message_id`) or
/// by a reply (`reply_id` of a `ReplyStarted`, index `events_reply_id`).
static MESSAGE_EXISTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT EXISTS (SELECT 1 FROM events
                         WHERE aggregate_type = '{0}' AND aggregate_id = $1
                           AND (payload -> event_type ->> 'message_id') = $2)
             OR EXISTS (SELECT 1 FROM events
                         WHERE aggregate_type = '{0}' AND event_type = '{REPLY_STARTED}' AND aggregate_id = $1
                           AND (payload -> event_type ->> 'reply_id') = $2)",
        Conversation::TYPE
    )
});

static REPLY_EXISTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT EXISTS (SELECT 1 FROM events
                         WHERE aggregate_type = '{}' AND event_type = '{REPLY_STARTED}' AND aggregate_id = $1
                           AND (payload -> event_type ->> 'reply_id') = $2)",
        Conversation::TYPE
    )
});

/// Whether `message_id` names a message of the conversation: a user message, or a reply
/// (user messages and replies share one id space; served by the `events_message_id` and
/// `events_reply_id` indexes).
pub async fn message_exists<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
    message_id: Uuid,
) -> Result<bool, EventStoreError> {
    exists(db, MESSAGE_EXISTS.as_str(), conversation_id, message_id).await
}

/// Whether the reply `reply_id` was started in the conversation (finished or not; served
/// by the `events_reply_id` index).
pub async fn reply_exists<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
    reply_id: Uuid,
) -> Result<bool, EventStoreError> {
    exists(db, REPLY_EXISTS.as_str(), conversation_id, reply_id).await
}

/// Runs an `EXISTS` lookup of `id` in the conversation's events.
async fn exists<'e>(
    db: impl PgExecutor<'e>,
    sql: &str,
    conversation_id: Uuid,
    id: Uuid,
) -> Result<bool, EventStoreError> {
    let found: bool =
        sqlx::query_scalar(sql).bind(conversation_id.to_string()).bind(id.to_string()).fetch_one(db).await?;
    Ok(found)
}

/// How the reply `reply_id` was started, with the sequence of its `ReplyStarted` (served by
/// the `events_reply_id` index): what a worker taking over an abandoned reply needs.
pub async fn reply_started<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
    reply_id: Uuid,
) -> Result<Option<(i64, ReplyStarted)>, EventStoreError> {
    let Some(row) = sqlx::query(REPLY_EVENT.as_str())
        .bind(conversation_id.to_string())
        .bind(reply_id.to_string())
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    let (event, _) = decode(&row)?;
    match domain_event(&event)? {
        ConversationEvent::ReplyStarted(started) => Ok(Some((event.sequence, started))),
        _ => Err(malformed(event, "a ReplyStarted row holds another event", None)),
    }
}

/// Who wrote a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    /// The owner (`UserMessagePosted`).
    User,
    /// The assistant (a reply's end).
    Assistant,
}

impl MessageRole {
    /// `user` or `assistant`, as chat APIs name the roles.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One message of a conversation's history, as the assistant puts it into a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationMessage {
    /// The conversation version that recorded it (a reply's is that of its end).
    pub sequence: i64,
    /// The message id; for an assistant message, the reply id.
    pub message_id: Uuid,
    /// Who wrote it.
    pub role: MessageRole,
    /// The text (a failed or cancelled reply's partial text).
    pub content: String,
}

/// Message events (user messages and reply starts) of a conversation before a sequence,
/// newest first: ids, parents and user text, one backward walk of the primary key.
static PATH_WINDOW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT sequence, event_version, event_type,
                coalesce(payload -> event_type ->> 'message_id', payload -> event_type ->> 'reply_id') AS id,
                coalesce(payload -> event_type ->> 'parent_id', payload -> event_type ->> 'in_reply_to') AS parent,
                payload -> event_type ->> 'content' AS content, payload -> event_type ->> 'role' AS role
           FROM events
          WHERE aggregate_type = '{}' AND aggregate_id = $1 AND sequence < $2
            AND event_type IN ('UserMessagePosted', 'ReplyStarted', 'MessageImported')
          ORDER BY sequence DESC
          LIMIT $3",
        Conversation::TYPE
    )
});

/// How replies ended, by reply id (served by `events_reply_end_id`).
static REPLY_ENDS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events
          WHERE aggregate_type = '{}' AND aggregate_id = $1
            AND event_type IN ('ReplyCompleted', 'ReplyFailed', 'ReplyCancelled')
            AND (payload -> event_type ->> 'reply_id') = ANY($2)",
        Conversation::TYPE
    )
});

/// A message event as the path walk reads it.
struct PathRow {
    sequence: i64,
    id: Option<Uuid>,
    link: ParentLink,
    /// Who wrote it.
    role: MessageRole,
    /// Its text when the event carries it (a user message, an imported message); a reply's
    /// is in the event that ended it.
    text: Option<String>,
}

fn path_row(row: &sqlx::postgres::PgRow) -> Result<PathRow, EventStoreError> {
    let parse = |text: Option<String>| text.and_then(|t| t.parse::<Uuid>().ok());
    let event_type: String = row.try_get("event_type")?;
    let version: String = row.try_get("event_version")?;
    let explicit = ParentLink::Explicit(parse(row.try_get("parent")?));
    let content: Option<String> = row.try_get("content")?;
    let (link, role, text) = match (event_type.as_str(), version.as_str()) {
        ("UserMessagePosted", "1.0" | "1.1") => (ParentLink::Previous, MessageRole::User, content),
        ("UserMessagePosted", _) => (explicit, MessageRole::User, content),
        ("MessageImported", _) => {
            let role = match row.try_get::<Option<String>, _>("role")?.as_deref() {
                Some("assistant") => MessageRole::Assistant,
                _ => MessageRole::User,
            };
            (explicit, role, content)
        }
        _ => (explicit, MessageRole::Assistant, None),
    };
    Ok(PathRow { sequence: row.try_get("sequence")?, id: parse(row.try_get("id")?), link, role, text })
}

/// The messages on the path that leads to user message `to` (its ancestors in the tree,
/// oldest first, `to` itself excluded), at most the `limit` nearest: user messages, and
/// replies with the text they ended with (completed; failed or cancelled with some text).
/// What a reply's prompt is built from: another branch's messages are never in it.
///
/// Backward walks of the primary key from `to`, a window at a time, following parent links
/// until the first message or `limit`; then one indexed read of the path's reply endings. In
/// a conversation without branches one window holds the whole path: the cost follows
/// `limit`, not the conversation's length.
pub async fn path_messages(
    pool: &sqlx::PgPool,
    conversation_id: Uuid,
    to: Uuid,
    to_sequence: i64,
    limit: usize,
) -> Result<Vec<ConversationMessage>, EventStoreError> {
    let window = (limit as i64 * 2).clamp(32, 1_000);
    let mut rows: HashMap<Uuid, PathRow> = HashMap::new();
    // Rows are read newest first in contiguous windows: everything from `oldest_read` up to
    // `to` is loaded, and `exhausted` says nothing older exists.
    let mut oldest_read = to_sequence.saturating_add(1);
    let mut exhausted = false;
    let mut path: Vec<Uuid> = Vec::new();
    let mut at = Some(to);
    while let Some(id) = at {
        if path.len() >= limit {
            break;
        }
        let parent = match rows.get(&id) {
            Some(row) => match row.link {
                ParentLink::Explicit(parent) => Some(parent),
                ParentLink::Previous => match previous_in(&rows, row.sequence) {
                    Some(previous) => Some(Some(previous)),
                    None if exhausted => Some(None),
                    None => None,
                },
            },
            // A parent the conversation does not hold: the path ends (never for events the
            // domain wrote).
            None if exhausted => break,
            None => None,
        };
        match parent {
            Some(parent) => {
                if id != to {
                    path.push(id);
                }
                at = parent;
            }
            None => {
                // Read the next window back.
                let window_rows = sqlx::query(PATH_WINDOW.as_str())
                    .bind(conversation_id.to_string())
                    .bind(oldest_read)
                    .bind(window)
                    .fetch_all(pool)
                    .await?;
                exhausted = (window_rows.len() as i64) < window;
                for row in &window_rows {
                    let row = path_row(row)?;
                    oldest_read = oldest_read.min(row.sequence);
                    if let Some(id) = row.id {
                        rows.insert(id, row);
                    }
                }
            }
        }
    }
    path.reverse();
    let replies: Vec<String> =
        path.iter().filter(|id| rows.get(id).is_some_and(|r| r.text.is_none())).map(Uuid::to_string).collect();
    let ends =
        sqlx::query(REPLY_ENDS.as_str()).bind(conversation_id.to_string()).bind(&replies).fetch_all(pool).await?;
    let mut reply_texts: HashMap<Uuid, (i64, String)> = HashMap::new();
    for row in &ends {
        let (event, _) = decode(row)?;
        let (reply_id, content) = match domain_event(&event)? {
            ConversationEvent::ReplyCompleted(r) => (r.reply_id, r.content),
            ConversationEvent::ReplyFailed(r) => (r.reply_id, r.partial_content),
            ConversationEvent::ReplyCancelled(r) => (r.reply_id, r.partial_content),
            _ => return Err(malformed(event, "not a reply's end", None)),
        };
        reply_texts.insert(reply_id, (event.sequence, content));
    }
    Ok(path
        .into_iter()
        .filter_map(|id| {
            let row = rows.get(&id)?;
            match &row.text {
                Some(text) if !(text.is_empty() && row.role == MessageRole::Assistant) => Some(ConversationMessage {
                    sequence: row.sequence,
                    message_id: id,
                    role: row.role,
                    content: text.clone(),
                }),
                Some(_) => None,
                None => reply_texts.get(&id).filter(|(_, text)| !text.is_empty()).map(|(sequence, text)| {
                    ConversationMessage {
                        sequence: *sequence,
                        message_id: id,
                        role: MessageRole::Assistant,
                        content: text.clone(),
                    }
                }),
            }
        })
        .collect())
}

/// The id of the message read with the highest sequence below `sequence`.
fn previous_in(rows: &HashMap<Uuid, PathRow>, sequence: i64) -> Option<Uuid> {
    rows.values().filter(|r| r.sequence < sequence).max_by_key(|r| r.sequence).and_then(|r| r.id)
}

static REQUESTED_REPLY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT (payload -> event_type ->> 'in_reply_to') FROM events
          WHERE aggregate_type = '{}' AND aggregate_id = $1 AND event_type = 'ReplyRequested'
            AND (payload -> event_type ->> 'reply_id') = $2",
        Conversation::TYPE
    )
});

/// The messages (user messages and started replies) of a conversation, in order, with how
/// each names its parent: only the ids, never the text.
static TREE_NODES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT sequence, event_version, event_type,
                coalesce(payload -> event_type ->> 'message_id', payload -> event_type ->> 'reply_id') AS id,
                coalesce(payload -> event_type ->> 'parent_id', payload -> event_type ->> 'in_reply_to') AS parent,
                NULL::text AS content, NULL::text AS role
           FROM events
          WHERE aggregate_type = '{}' AND aggregate_id = $1
            AND event_type IN ('UserMessagePosted', 'ReplyStarted', 'MessageImported')
          ORDER BY sequence",
        Conversation::TYPE
    )
});

/// The conversation's message tree: every user message and started reply with its parent
/// (see [`tree`](colloquy_domain::conversation::tree)). One read of the conversation's
/// message events (ids only); used where a whole branch matters (switching branches).
pub async fn message_tree<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
) -> Result<Vec<TreeNode>, EventStoreError> {
    let rows = sqlx::query(TREE_NODES.as_str()).bind(conversation_id.to_string()).fetch_all(db).await?;
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        let row = path_row(row)?;
        if let Some(id) = row.id {
            records.push((id, row.link, row.sequence));
        }
    }
    Ok(tree::link(records))
}

/// Where message or reply `id` sits in the conversation's tree (served by the
/// `events_message_id` and `events_reply_id` indexes; a user message older than event
/// version 1.2 follows the message recorded before it, one backward step of the primary key).
pub async fn message_node(
    pool: &sqlx::PgPool,
    conversation_id: Uuid,
    id: Uuid,
) -> Result<Option<MessageNode>, EventStoreError> {
    match message_event(pool, conversation_id, id).await? {
        Some((_, ConversationEvent::MessageImported(m))) => {
            return Ok(Some(MessageNode { parent_id: m.parent_id, is_reply: m.role == "assistant" }));
        }
        Some((event, ConversationEvent::UserMessagePosted(posted))) => {
            let parent_id = match posted.parent_link(&event.event_version) {
                ParentLink::Explicit(parent) => parent,
                ParentLink::Previous => previous_message(pool, conversation_id, event.sequence).await?,
            };
            return Ok(Some(MessageNode { parent_id, is_reply: false }));
        }
        _ => {}
    }
    Ok(reply_started(pool, conversation_id, id)
        .await?
        .map(|(_, started)| MessageNode { parent_id: Some(started.in_reply_to), is_reply: true }))
}

/// The message or reply recorded last before `sequence`.
async fn previous_message(
    pool: &sqlx::PgPool,
    conversation_id: Uuid,
    sequence: i64,
) -> Result<Option<Uuid>, EventStoreError> {
    let sql = format!(
        "SELECT coalesce(payload -> event_type ->> 'message_id', payload -> event_type ->> 'reply_id') FROM events
          WHERE aggregate_type = '{}' AND aggregate_id = $1 AND sequence < $2
            AND event_type IN ('UserMessagePosted', 'ReplyStarted', 'MessageImported')
          ORDER BY sequence DESC LIMIT 1",
        Conversation::TYPE
    );
    let id: Option<Option<String>> =
        sqlx::query_scalar(&sql).bind(conversation_id.to_string()).bind(sequence).fetch_optional(pool).await?;
    Ok(id.flatten().and_then(|t| t.parse().ok()))
}

/// The user message the requested (regenerated) reply `reply_id` is to answer (served by the
/// `events_requested_reply_id` index).
pub async fn requested_reply<'e>(
    db: impl PgExecutor<'e>,
    conversation_id: Uuid,
    reply_id: Uuid,
) -> Result<Option<Uuid>, EventStoreError> {
    let found: Option<Option<String>> = sqlx::query_scalar(REQUESTED_REPLY.as_str())
        .bind(conversation_id.to_string())
        .bind(reply_id.to_string())
        .fetch_optional(db)
        .await?;
    Ok(found.flatten().and_then(|t| t.parse().ok()))
}

/// [`MessageLookup`] over the event store.
#[derive(Clone)]
pub struct EventStoreMessages {
    pool: sqlx::PgPool,
}

impl EventStoreMessages {
    /// A lookup on `pool`.
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl MessageLookup for EventStoreMessages {
    async fn message_exists(&self, conversation_id: Uuid, message_id: Uuid) -> Result<bool, PortError> {
        message_exists(&self.pool, conversation_id, message_id).await.map_err(|e| PortError::new("message lookup", e))
    }

    async fn reply_exists(&self, conversation_id: Uuid, reply_id: Uuid) -> Result<bool, PortError> {
        reply_exists(&self.pool, conversation_id, reply_id).await.map_err(|e| PortError::new("message lookup", e))
    }

    async fn node(&self, conversation_id: Uuid, id: Uuid) -> Result<Option<MessageNode>, PortError> {
        message_node(&self.pool, conversation_id, id).await.map_err(|e| PortError::new("message lookup", e))
    }

    async fn latest_leaf(&self, conversation_id: Uuid, from: Uuid) -> Result<Option<Uuid>, PortError> {
        let nodes = message_tree(&self.pool, conversation_id).await.map_err(|e| PortError::new("message tree", e))?;
        Ok(tree::latest_leaf(&nodes, from))
    }

    async fn requested_reply(&self, conversation_id: Uuid, reply_id: Uuid) -> Result<Option<Uuid>, PortError> {
        requested_reply(&self.pool, conversation_id, reply_id).await.map_err(|e| PortError::new("message lookup", e))
    }
}

/// An aggregate whose stored sequences are not exactly 1..n.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SequenceGap {
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Number of events.
    pub events: i64,
    /// Lowest sequence.
    pub first: i64,
    /// Highest sequence.
    pub last: i64,
}

/// Every aggregate whose sequences have a hole or do not start at 1 (a damaged log).
pub async fn sequence_gaps<'e>(db: impl PgExecutor<'e>) -> Result<Vec<SequenceGap>, EventStoreError> {
    Ok(sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, count(*) AS events, min(sequence) AS first, max(sequence) AS last
           FROM events GROUP BY aggregate_type, aggregate_id
         HAVING min(sequence) <> 1 OR max(sequence) <> count(*)
          ORDER BY aggregate_type, aggregate_id",
    )
    .fetch_all(db)
    .await?)
}

/// How many aggregates of `aggregate_types` have events beyond what the projection
/// `projection` recorded in `projection_state` (lag, not damage).
pub async fn aggregates_ahead_of_projection<'e>(
    db: impl PgExecutor<'e>,
    projection: &str,
    aggregate_types: &[&str],
) -> Result<i64, EventStoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM (
            SELECT e.aggregate_id FROM events e
              LEFT JOIN projection_state s ON s.projection = $1 AND s.aggregate_id = e.aggregate_id
             WHERE e.aggregate_type = ANY($2)
             GROUP BY e.aggregate_id
            HAVING max(e.sequence) > coalesce(max(s.last_sequence), 0)) AS behind",
    )
    .bind(projection)
    .bind(aggregate_types)
    .fetch_one(db)
    .await?)
}

/// The set of events seen on Kafka while `colloquy verify` reads the topics, kept in a
/// temporary table of one connection so the comparison needs bounded memory whatever the
/// size of the log. Each statement commits on its own: a long transaction would hold the
/// relay's fence back for the whole cluster.
pub struct SeenOnKafka;

impl SeenOnKafka {
    /// Creates the (session-local, so per-run) table on `conn`. The caller closes `conn`
    /// afterwards or calls [`SeenOnKafka::drop_table`].
    pub async fn create(conn: &mut sqlx::PgConnection) -> Result<Self, EventStoreError> {
        sqlx::query(
            "CREATE TEMPORARY TABLE IF NOT EXISTS kafka_seen
             (aggregate_type text NOT NULL, aggregate_id text NOT NULL, sequence bigint NOT NULL,
              PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("TRUNCATE kafka_seen").execute(&mut *conn).await?;
        Ok(Self)
    }

    /// Records `keys` as seen; returns how many were new (the rest are duplicates).
    pub async fn record(&self, conn: &mut sqlx::PgConnection, keys: &[EventKey]) -> Result<u64, EventStoreError> {
        let (types, ids, sequences) = unzip_keys(keys);
        let done = sqlx::query(
            "INSERT INTO kafka_seen SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&sequences)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }

    /// Events of `aggregate_types` at or before `published` (the relay's checkpoint) that
    /// were not seen: how many, and the first `limit` of them in commit order.
    pub async fn missing(
        &self,
        conn: &mut sqlx::PgConnection,
        aggregate_types: &[String],
        published: LogCursor,
        limit: i64,
    ) -> Result<(i64, Vec<(EventKey, Uuid)>), EventStoreError> {
        const MISSING: &str = "FROM events e
              WHERE e.aggregate_type = ANY($1) AND (e.tx_id, e.position) <= ($2::text::xid8, $3)
                AND NOT EXISTS (SELECT 1 FROM kafka_seen k WHERE k.aggregate_type = e.aggregate_type
                                   AND k.aggregate_id = e.aggregate_id AND k.sequence = e.sequence)";
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) {MISSING}"))
            .bind(aggregate_types)
            .bind(published.tx_id.to_string())
            .bind(published.position)
            .fetch_one(&mut *conn)
            .await?;
        let rows: Vec<(String, String, i64, Uuid)> = sqlx::query_as(&format!(
            "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_id {MISSING} ORDER BY e.tx_id, e.position LIMIT $4"
        ))
        .bind(aggregate_types)
        .bind(published.tx_id.to_string())
        .bind(published.position)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        let listed = rows
            .into_iter()
            .map(|(aggregate_type, aggregate_id, sequence, id)| {
                (EventKey { aggregate_type, aggregate_id, sequence }, id)
            })
            .collect();
        Ok((count, listed))
    }

    /// Drops the table (when the connection goes back to a pool).
    pub async fn drop_table(self, conn: &mut sqlx::PgConnection) -> Result<(), EventStoreError> {
        sqlx::query("DROP TABLE IF EXISTS kafka_seen").execute(conn).await?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "event_store_tests.rs"]
mod tests;
