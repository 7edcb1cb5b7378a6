//! The messages read model (`rm_messages`): every message of every live conversation, user
//! messages and assistant replies alike. A reply's row appears when it starts (`streaming`,
//! empty text) and is updated once when it ends (`completed`, `failed` or `cancelled`, with
//! its text or the partial text, the provider and model actually used, and its usage).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use colloquy_domain::conversation::tree::ParentLink;
use colloquy_domain::conversation::{reply_id_for, ConversationEvent, ReplyFailure, TokenUsage};
use colloquy_domain::Conversation;
use colloquy_infra::event_store::StoredEvent;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projection::{aggregate_uuid, conversation_owner, domain_event, ApplyError, Projection};

/// Projects Conversation events into `rm_messages`.
pub struct MessagesProjection;

/// The projection's name.
pub const NAME: &str = "messages";

/// A message's status: a user message is `completed` when posted; a reply is `streaming`
/// until it ends `completed`, `failed` or `cancelled`.
pub mod status {
    /// Posted, or generated to its end.
    pub const COMPLETED: &str = "completed";
    /// A reply being generated (its text is in the reply's stream, not here).
    pub const STREAMING: &str = "streaming";
    /// A reply that could not be produced; its partial text is kept.
    pub const FAILED: &str = "failed";
    /// A reply stopped on request; its partial text is kept.
    pub const CANCELLED: &str = "cancelled";
}

/// Tokens a reply consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageUsage {
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Generated tokens.
    pub output_tokens: i64,
}

/// Why a reply failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageError {
    /// Stable snake_case code (`provider_error`, `all_providers_failed`, `worker_lost`, ...).
    pub code: String,
    /// For people.
    pub message: String,
}

/// One message as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// The id (a reply's is its reply id).
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The conversation version that added it (orders messages; a reply's is its start's).
    pub sequence: i64,
    /// `user` or `assistant`.
    pub role: String,
    /// The text (a reply's partial text when it failed or was cancelled; empty while it
    /// streams).
    pub content: String,
    /// When posted (a reply: when it started).
    pub created_at: DateTime<Utc>,
    /// `completed`, `streaming`, `failed` or `cancelled` (see [`status`]).
    pub status: String,
    /// On a user message: the id of the reply that answers it (streamable once started).
    pub reply_id: Option<Uuid>,
    /// On a reply: the user message it answers.
    pub in_reply_to: Option<Uuid>,
    /// On a user message: the model it asked for, if any. On a reply: the model as
    /// configured while streaming, then the upstream model that produced it.
    pub model: Option<String>,
    /// On a reply: the provider tried first while streaming, then the one that produced it.
    pub provider: Option<String>,
    /// On a finished reply: the tokens it consumed.
    pub usage: Option<MessageUsage>,
    /// On a completed reply: why generation stopped (`stop`, `length`, ...).
    pub finish_reason: Option<String>,
    /// On a failed reply: why.
    pub error: Option<MessageError>,
    /// On a reply of a grounded conversation: the knowledge-base passages its prompt quoted.
    pub citations: Vec<MessageCitation>,
}

/// A passage a reply's prompt quoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageCitation {
    /// The knowledge document.
    pub document_id: Uuid,
    /// Its version.
    pub version: u32,
    /// The passage (chunk).
    pub chunk_id: Uuid,
    /// Its position in that version.
    pub position: u32,
    /// The document's title.
    pub title: String,
    /// The passage as quoted.
    pub text: String,
    /// Its retrieval score.
    pub score: f64,
}

/// A row of `rm_messages` as stored.
#[derive(sqlx::FromRow)]
struct Row {
    message_id: Uuid,
    conversation_id: Uuid,
    sequence: i64,
    role: String,
    content: String,
    created_at: DateTime<Utc>,
    status: String,
    reply_id: Option<Uuid>,
    in_reply_to: Option<Uuid>,
    model: Option<String>,
    provider: Option<String>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    finish_reason: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    citations: sqlx::types::Json<Vec<MessageCitation>>,
}

impl From<Row> for Message {
    fn from(r: Row) -> Self {
        let usage = match (r.input_tokens, r.output_tokens) {
            (Some(input_tokens), Some(output_tokens)) => Some(MessageUsage { input_tokens, output_tokens }),
            _ => None,
        };
        let error = r.error_code.map(|code| MessageError { code, message: r.error_message.unwrap_or_default() });
        Self {
            message_id: r.message_id,
            conversation_id: r.conversation_id,
            sequence: r.sequence,
            role: r.role,
            content: r.content,
            created_at: r.created_at,
            status: r.status,
            reply_id: r.reply_id,
            in_reply_to: r.in_reply_to,
            model: r.model,
            provider: r.provider,
            usage,
            finish_reason: r.finish_reason,
            error,
            citations: r.citations.0,
        }
    }
}

const ROW_COLUMNS: &str = "message_id, conversation_id, sequence, role, content, created_at, status, reply_id, \
     in_reply_to, model, provider, input_tokens, output_tokens, finish_reason, error_code, error_message, citations";

/// How a reply ended, as one UPDATE of its row.
struct ReplyEnd<'a> {
    reply_id: Uuid,
    status: &'static str,
    content: &'a str,
    provider: Option<&'a str>,
    model: Option<&'a str>,
    usage: TokenUsage,
    finish_reason: Option<&'a str>,
    error: Option<&'a ReplyFailure>,
}

async fn end_reply(
    conn: &mut PgConnection,
    table: &str,
    conversation: Uuid,
    end: ReplyEnd<'_>,
) -> Result<(), ApplyError> {
    // Provider and model stay those of the start when the end names none (a failure before
    // any provider answered, a cancel before the first token).
    sqlx::query(&format!(
        "UPDATE {table}
            SET status = $3, content = $4, provider = coalesce($5, provider), model = coalesce($6, model),
                input_tokens = $7, output_tokens = $8, finish_reason = $9, error_code = $10, error_message = $11
          WHERE conversation_id = $1 AND message_id = $2"
    ))
    .bind(conversation)
    .bind(end.reply_id)
    .bind(end.status)
    .bind(end.content)
    .bind(end.provider)
    .bind(end.model)
    .bind(i64::from(end.usage.input_tokens))
    .bind(i64::from(end.usage.output_tokens))
    .bind(end.finish_reason)
    .bind(end.error.map(|e| e.code.as_str()))
    .bind(end.error.map(|e| e.message.as_str()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Consecutive `UserMessagePosted` events (naming their parent, as every event since 1.2
/// does), gathered column by column for one `INSERT ... SELECT FROM UNNEST`: the rows
/// [`MessagesProjection::apply`] would insert one at a time.
#[derive(Default)]
struct PostedRun {
    /// Index of the run's first event in the caller's slice.
    first: usize,
    message_id: Vec<Uuid>,
    conversation_id: Vec<Uuid>,
    owner_id: Vec<Uuid>,
    sequence: Vec<i64>,
    content: Vec<String>,
    created_at: Vec<DateTime<Utc>>,
    reply_id: Vec<Uuid>,
    model: Vec<Option<String>>,
    parent_id: Vec<Option<Uuid>>,
    edit_of: Vec<Option<Uuid>>,
}

/// One row of a [`PostedRun`].
struct PostedRow {
    message_id: Uuid,
    conversation_id: Uuid,
    owner_id: Uuid,
    sequence: i64,
    content: String,
    created_at: DateTime<Utc>,
    model: Option<String>,
    parent_id: Option<Uuid>,
    edit_of: Option<Uuid>,
}

impl PostedRun {
    /// The row `e` inserts, if it is a posted message naming its parent.
    fn row_of(e: &StoredEvent) -> Result<Option<PostedRow>, ApplyError> {
        if e.event_type != "UserMessagePosted" {
            return Ok(None);
        }
        let ConversationEvent::UserMessagePosted(m) = domain_event::<ConversationEvent>(e)? else { return Ok(None) };
        let ParentLink::Explicit(parent_id) = m.parent_link(&e.event_version) else { return Ok(None) };
        Ok(Some(PostedRow {
            message_id: m.message_id,
            conversation_id: aggregate_uuid(e)?,
            owner_id: m.author_id,
            sequence: e.sequence,
            content: m.content,
            created_at: e.recorded_at,
            model: m.model,
            parent_id,
            edit_of: m.edit_of,
        }))
    }

    fn push(&mut self, index: usize, row: PostedRow) {
        if self.message_id.is_empty() {
            self.first = index;
        }
        self.message_id.push(row.message_id);
        self.conversation_id.push(row.conversation_id);
        self.owner_id.push(row.owner_id);
        self.sequence.push(row.sequence);
        self.content.push(row.content);
        self.created_at.push(row.created_at);
        self.reply_id.push(reply_id_for(row.message_id));
        self.model.push(row.model);
        self.parent_id.push(row.parent_id);
        self.edit_of.push(row.edit_of);
    }

    /// Inserts the run's rows, if any, and empties it; a failure names its first event.
    async fn insert(&mut self, conn: &mut PgConnection, table: &str) -> Result<(), (usize, ApplyError)> {
        if self.message_id.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(self);
        // In key order: every index of the table leads with the conversation, so a run's rows
        // inserted conversation by conversation visit each index page once per conversation,
        // not once per row. The rows are independent of each other, so the order changes
        // nothing else; a rebuild of 26,645 events took about a fifth less (2026-12-01).
        sqlx::query(&format!(
            "INSERT INTO {table} (message_id, conversation_id, owner_id, sequence, role, content, created_at,
                                  status, reply_id, model, parent_id, edit_of, leaf_since)
             SELECT r.message_id, r.conversation_id, r.owner_id, r.sequence, 'user', r.content, r.created_at,
                    $11, r.reply_id, r.model, r.parent_id, r.edit_of, r.sequence
               FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::timestamptz[],
                           $7::uuid[], $8::text[], $9::uuid[], $10::uuid[])
                    AS r(message_id, conversation_id, owner_id, sequence, content, created_at, reply_id, model,
                         parent_id, edit_of)
              ORDER BY r.conversation_id, r.sequence"
        ))
        .bind(&run.message_id)
        .bind(&run.conversation_id)
        .bind(&run.owner_id)
        .bind(&run.sequence)
        .bind(&run.content)
        .bind(&run.created_at)
        .bind(&run.reply_id)
        .bind(&run.model)
        .bind(&run.parent_id)
        .bind(&run.edit_of)
        .bind(status::COMPLETED)
        .execute(&mut *conn)
        .await
        .map_err(|e| (run.first, ApplyError::from(e)))?;
        Ok(())
    }
}

/// Makes `message` the conversation's active leaf as of `sequence`.
async fn set_leaf(
    conn: &mut PgConnection,
    table: &str,
    conversation: Uuid,
    message: Uuid,
    sequence: i64,
) -> Result<(), ApplyError> {
    sqlx::query(&format!("UPDATE {table} SET leaf_since = $3 WHERE conversation_id = $1 AND message_id = $2"))
        .bind(conversation)
        .bind(message)
        .bind(sequence)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl Projection for MessagesProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn table(&self) -> &'static str {
        "rm_messages"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Conversation::TYPE]
    }

    /// Runs of posted messages (the bulk of any batch) are inserted with one statement;
    /// everything else is applied one event at a time.
    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        table: &str,
        events: &[&StoredEvent],
    ) -> Result<Vec<Option<Uuid>>, (usize, ApplyError)> {
        let mut touched = Vec::with_capacity(events.len());
        let mut run = PostedRun::default();
        for (i, e) in events.iter().enumerate() {
            match PostedRun::row_of(e) {
                Ok(Some(row)) => {
                    run.push(i, row);
                    touched.push(None);
                    continue;
                }
                Ok(None) => {}
                Err(error) => return Err((i, error)),
            }
            run.insert(conn, table).await?;
            touched.push(self.apply(conn, table, e).await.map_err(|x| (i, x))?);
        }
        run.insert(conn, table).await?;
        Ok(touched)
    }

    async fn apply(&self, conn: &mut PgConnection, table: &str, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
        use ConversationEvent as E;
        let id = aggregate_uuid(e)?;
        match domain_event::<ConversationEvent>(e)? {
            E::UserMessagePosted(m) => {
                // Events before 1.2 name no parent: they follow the row recorded before them.
                let parent_id = match m.parent_link(&e.event_version) {
                    ParentLink::Explicit(parent) => parent,
                    ParentLink::Previous => {
                        sqlx::query_scalar(&format!(
                            "SELECT message_id FROM {table} WHERE conversation_id = $1 ORDER BY sequence DESC LIMIT 1"
                        ))
                        .bind(id)
                        .fetch_optional(&mut *conn)
                        .await?
                    }
                };
                sqlx::query(&format!(
                    "INSERT INTO {table} (message_id, conversation_id, owner_id, sequence, role, content, created_at,
                                          status, reply_id, model, parent_id, edit_of, leaf_since)
                     VALUES ($1, $2, $3, $4, 'user', $5, $6, $7, $8, $9, $10, $11, $4)"
                ))
                .bind(m.message_id)
                .bind(id)
                .bind(m.author_id)
                .bind(e.sequence)
                .bind(&m.content)
                .bind(e.recorded_at)
                .bind(status::COMPLETED)
                .bind(reply_id_for(m.message_id))
                .bind(&m.model)
                .bind(parent_id)
                .bind(m.edit_of)
                .execute(&mut *conn)
                .await?;
            }
            E::MessageImported(m) => {
                let usage = m.usage.unwrap_or_default();
                let is_reply = m.role == "assistant";
                let owner = conversation_owner(conn, id).await?;
                sqlx::query(&format!(
                    "INSERT INTO {table} (message_id, conversation_id, owner_id, sequence, role, content, created_at,
                                          status, in_reply_to, model, provider, input_tokens, output_tokens,
                                          citations, parent_id, leaf_since)
                     VALUES ($1, $2, $15, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $3)"
                ))
                .bind(m.message_id)
                .bind(id)
                .bind(e.sequence)
                .bind(&m.role)
                .bind(&m.content)
                .bind(m.written_at)
                .bind(&m.status)
                .bind(m.parent_id.filter(|_| is_reply))
                .bind(&m.model)
                .bind(&m.provider)
                .bind(m.usage.map(|_| i64::from(usage.input_tokens)))
                .bind(m.usage.map(|_| i64::from(usage.output_tokens)))
                .bind(sqlx::types::Json(&m.citations))
                .bind(m.parent_id)
                .bind(owner)
                .execute(&mut *conn)
                .await?;
            }
            E::ReplyRequested(r) => {
                // The active path ends at the message until the new reply starts.
                set_leaf(conn, table, id, r.in_reply_to, e.sequence).await?;
            }
            E::BranchActivated(b) => set_leaf(conn, table, id, b.leaf_id, e.sequence).await?,
            E::ReplyStarted(r) => {
                // The owner is the answered message's: the reply lives in its conversation.
                // The reply continues the active path if that path ends at its question (as
                // the aggregate decides: see `Conversation::leaf`).
                let inserted = sqlx::query(&format!(
                    "INSERT INTO {table} (message_id, conversation_id, owner_id, sequence, role, content, created_at,
                                          status, in_reply_to, model, provider, citations, parent_id, leaf_since)
                     SELECT $1, $2, q.owner_id, $3, 'assistant', '', $4, $5, $6, $7, $8, $9, $6,
                            CASE WHEN (SELECT l.message_id FROM {table} l
                                        WHERE l.conversation_id = $2 AND l.leaf_since IS NOT NULL
                                        ORDER BY l.leaf_since DESC LIMIT 1) = $6
                                 THEN $3 END
                       FROM {table} q WHERE q.conversation_id = $2 AND q.message_id = $6"
                ))
                .bind(r.reply_id)
                .bind(id)
                .bind(e.sequence)
                .bind(e.recorded_at)
                .bind(status::STREAMING)
                .bind(r.in_reply_to)
                .bind(&r.model)
                .bind(&r.provider)
                .bind(sqlx::types::Json(&r.citations))
                .execute(&mut *conn)
                .await?;
                if inserted.rows_affected() != 1 {
                    return Err(ApplyError::poison(format!(
                        "reply {} answers message {}, which the conversation does not hold",
                        r.reply_id, r.in_reply_to
                    )));
                }
            }
            E::ReplyCompleted(r) => {
                let end = ReplyEnd {
                    reply_id: r.reply_id,
                    status: status::COMPLETED,
                    content: &r.content,
                    provider: Some(&r.provider),
                    model: Some(&r.model),
                    usage: r.usage,
                    finish_reason: Some(&r.finish_reason),
                    error: None,
                };
                end_reply(conn, table, id, end).await?;
            }
            E::ReplyFailed(r) => {
                let end = ReplyEnd {
                    reply_id: r.reply_id,
                    status: status::FAILED,
                    content: &r.partial_content,
                    provider: r.provider.as_deref(),
                    model: r.model.as_deref(),
                    usage: r.usage,
                    finish_reason: None,
                    error: Some(&r.reason),
                };
                end_reply(conn, table, id, end).await?;
            }
            E::ReplyCancelled(r) => {
                let end = ReplyEnd {
                    reply_id: r.reply_id,
                    status: status::CANCELLED,
                    content: &r.partial_content,
                    provider: r.provider.as_deref(),
                    model: r.model.as_deref(),
                    usage: r.usage,
                    finish_reason: None,
                    error: None,
                };
                end_reply(conn, table, id, end).await?;
            }
            E::ConversationDeleted(_) => {
                sqlx::query(&format!("DELETE FROM {table} WHERE conversation_id = $1"))
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
            E::ConversationShared(_)
            | E::ShareRevoked(_)
            | E::ConversationImported(_)
            | E::ConversationOpenedFromApi(_)
            | E::ConversationStarted(_)
            | E::ConversationRenamed(_)
            | E::TitleGenerated(_)
            | E::ConversationArchived(_)
            | E::ConversationUnarchived(_)
            | E::GroundingChanged(_) => {}
        }
        Ok(None)
    }
}

/// A page of a conversation's messages in order, after sequence `after`.
pub async fn list(
    pool: &PgPool,
    owner: Uuid,
    conversation: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM rm_messages
          WHERE conversation_id = $1 AND owner_id = $2 AND sequence > $3
          ORDER BY sequence LIMIT $4"
    ))
    .bind(conversation)
    .bind(owner)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Message::from).collect())
}

/// A message on a path of the conversation's tree, with what a client needs to offer its
/// alternatives ("< 2/3 >"): the ids of the messages under the same parent (itself
/// included), oldest first, and its index among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PathMessage {
    /// The message.
    #[serde(flatten)]
    pub message: Message,
    /// The message it follows (a reply: the message it answers); null for a first message.
    pub parent_id: Option<Uuid>,
    /// The message it is an edit of, if it is one.
    pub edit_of: Option<Uuid>,
    /// Messages under the same parent, oldest first: its alternatives (regenerated replies,
    /// edited questions) and itself.
    pub sibling_ids: Vec<Uuid>,
    /// Its index in `sibling_ids`, from 0.
    pub sibling_index: usize,
}

/// A path through a conversation's tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// The message it ends at (none while the conversation has no message).
    pub leaf_id: Option<Uuid>,
    /// Its messages after the page's cursor, in order.
    pub messages: Vec<PathMessage>,
}

#[derive(sqlx::FromRow)]
struct PathRow {
    #[sqlx(flatten)]
    row: Row,
    parent_id: Option<Uuid>,
    edit_of: Option<Uuid>,
    sibling_ids: Vec<Uuid>,
}

/// A page of the path of `owner`'s conversation that ends at the active leaf, or at the
/// newest message of the branch through `through` (its newest child, repeatedly): the
/// messages after sequence `after`, at most `limit`. `None` when `through` is not a
/// message of the conversation; an empty path when the conversation has no message.
pub async fn path(
    pool: &PgPool,
    owner: Uuid,
    conversation: Uuid,
    through: Option<Uuid>,
    after: i64,
    limit: i64,
) -> Result<Option<Path>, sqlx::Error> {
    let leaf: Option<Uuid> = match through {
        None => {
            sqlx::query_scalar(
                "SELECT message_id FROM rm_messages
                  WHERE conversation_id = $1 AND owner_id = $2 AND leaf_since IS NOT NULL
                  ORDER BY leaf_since DESC LIMIT 1",
            )
            .bind(conversation)
            .bind(owner)
            .fetch_optional(pool)
            .await?
        }
        Some(through) => {
            let leaf = sqlx::query_scalar(
                "WITH RECURSIVE down (message_id, depth) AS (
                     SELECT message_id, 0 FROM rm_messages
                      WHERE conversation_id = $1 AND owner_id = $2 AND message_id = $3
                     UNION ALL
                     SELECT c.message_id, d.depth + 1 FROM down d
                      CROSS JOIN LATERAL (SELECT message_id FROM rm_messages
                                           WHERE conversation_id = $1 AND parent_id = d.message_id
                                           ORDER BY sequence DESC LIMIT 1) c)
                 SELECT message_id FROM down ORDER BY depth DESC LIMIT 1",
            )
            .bind(conversation)
            .bind(owner)
            .bind(through)
            .fetch_optional(pool)
            .await?;
            if leaf.is_none() {
                return Ok(None);
            }
            leaf
        }
    };
    let Some(leaf_id) = leaf else {
        return Ok(Some(Path { leaf_id: None, messages: Vec::new() }));
    };
    let rows = walk(pool, owner, conversation, leaf_id, after, limit).await?;
    let messages = rows
        .into_iter()
        .map(|r| {
            let message = Message::from(r.row);
            let sibling_index = r.sibling_ids.iter().position(|id| *id == message.message_id).unwrap_or(0);
            PathMessage {
                message,
                parent_id: r.parent_id,
                edit_of: r.edit_of,
                sibling_ids: r.sibling_ids,
                sibling_index,
            }
        })
        .collect();
    Ok(Some(Path { leaf_id: Some(leaf_id), messages }))
}

/// The whole tree of a conversation.
pub struct Tree {
    /// The active leaf.
    pub leaf_id: Option<Uuid>,
    /// Every message, oldest first, with its parent and what it edits.
    pub messages: Vec<(Message, Option<Uuid>, Option<Uuid>)>,
}

/// Every message of `owner`'s conversation (all branches), oldest first.
pub async fn tree(pool: &PgPool, owner: Uuid, conversation: Uuid) -> Result<Tree, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct TreeRow {
        #[sqlx(flatten)]
        row: Row,
        parent_id: Option<Uuid>,
        edit_of: Option<Uuid>,
        leaf_since: Option<i64>,
    }
    let rows: Vec<TreeRow> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS}, parent_id, edit_of, leaf_since FROM rm_messages
          WHERE conversation_id = $1 AND owner_id = $2 ORDER BY sequence"
    ))
    .bind(conversation)
    .bind(owner)
    .fetch_all(pool)
    .await?;
    let leaf_id = rows.iter().filter(|r| r.leaf_since.is_some()).max_by_key(|r| r.leaf_since).map(|r| r.row.message_id);
    let messages = rows.into_iter().map(|r| (Message::from(r.row), r.parent_id, r.edit_of)).collect();
    Ok(Tree { leaf_id, messages })
}

/// The messages of `owner`'s conversation on the path that ends exactly at `leaf`, as far as
/// conversation version `version` (a shared conversation), oldest first.
pub async fn path_until(
    pool: &PgPool,
    owner: Uuid,
    conversation: Uuid,
    leaf: Uuid,
    version: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    let rows = walk(pool, owner, conversation, leaf, 0, i64::MAX).await?;
    Ok(rows.into_iter().map(|r| Message::from(r.row)).filter(|m| m.sequence <= version).collect())
}

/// The path from the first message to `leaf_id`, its rows after sequence `after`, at most
/// `limit`: one recursive walk up the parent links (primary key lookups), the siblings of
/// each row by the children index.
async fn walk(
    pool: &PgPool,
    owner: Uuid,
    conversation: Uuid,
    leaf_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<PathRow>, sqlx::Error> {
    let columns = ROW_COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ");
    sqlx::query_as(&format!(
        "WITH RECURSIVE up AS (
             SELECT m.message_id, m.parent_id, m.sequence FROM rm_messages m
              WHERE m.conversation_id = $1 AND m.owner_id = $2 AND m.message_id = $3
             UNION ALL
             SELECT m.message_id, m.parent_id, m.sequence FROM up
               JOIN rm_messages m ON m.conversation_id = $1 AND m.message_id = up.parent_id)
         SELECT {columns}, m.parent_id, m.edit_of,
                CASE WHEN m.parent_id IS NULL
                     THEN ARRAY(SELECT s.message_id FROM rm_messages s
                                 WHERE s.conversation_id = $1 AND s.parent_id IS NULL ORDER BY s.sequence)
                     ELSE ARRAY(SELECT s.message_id FROM rm_messages s
                                 WHERE s.conversation_id = $1 AND s.parent_id = m.parent_id ORDER BY s.sequence)
                END AS sibling_ids
           FROM up JOIN rm_messages m ON m.conversation_id = $1 AND m.message_id = up.message_id
          WHERE up.sequence > $4
          ORDER BY up.sequence LIMIT $5"
    ))
    .bind(conversation)
    .bind(owner)
    .bind(leaf_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The reply `reply_id` of `owner`'s conversation (another owner's is `None`, like a
/// missing one), in whatever state the read model has it.
pub async fn reply(
    pool: &PgPool,
    owner: Uuid,
    conversation: Uuid,
    reply_id: Uuid,
) -> Result<Option<Message>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM rm_messages
          WHERE conversation_id = $1 AND message_id = $2 AND owner_id = $3 AND role = 'assistant'"
    ))
    .bind(conversation)
    .bind(reply_id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Message::from))
}

/// The reply to user message `message_id` of `owner`'s conversation, once it has started.
pub async fn reply_for_message(
    pool: &PgPool,
    owner: Uuid,
    conversation: Uuid,
    message_id: Uuid,
) -> Result<Option<Message>, sqlx::Error> {
    reply(pool, owner, conversation, reply_id_for(message_id)).await
}
