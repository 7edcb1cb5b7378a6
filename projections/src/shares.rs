//! Shared conversations (`rm_shares`): one row per read-only link, found by its token's
//! hash. A revoke, or the conversation's deletion, ends the link.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use colloquy_domain::conversation::ConversationEvent;
use colloquy_domain::Conversation;
use colloquy_infra::event_store::StoredEvent;
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::messages::{self, Message};
use crate::projection::{aggregate_uuid, conversation_owner, domain_event, ApplyError, Projection};

/// The projection's name.
pub const NAME: &str = "shares";

/// Projects shares and their revocations into `rm_shares`.
pub struct SharesProjection;

#[async_trait]
impl Projection for SharesProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn table(&self) -> &'static str {
        "rm_shares"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Conversation::TYPE]
    }

    async fn apply(&self, conn: &mut PgConnection, table: &str, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
        use ConversationEvent as E;
        let id = aggregate_uuid(e)?;
        match domain_event::<ConversationEvent>(e)? {
            E::ConversationShared(s) => {
                let owner = conversation_owner(conn, id).await?;
                sqlx::query(&format!(
                    "INSERT INTO {table} (share_id, conversation_id, owner_id, token_sha256, title, version, leaf_id, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                ))
                .bind(s.share_id)
                .bind(id)
                .bind(owner)
                .bind(&s.token_sha256)
                .bind(&s.title)
                // As of the version before the share itself.
                .bind(e.sequence - 1)
                .bind(s.leaf_id)
                .bind(e.recorded_at)
                .execute(&mut *conn)
                .await?;
            }
            E::ShareRevoked(r) => {
                sqlx::query(&format!("UPDATE {table} SET revoked_at = $2 WHERE share_id = $1 AND revoked_at IS NULL"))
                    .bind(r.share_id)
                    .bind(e.recorded_at)
                    .execute(&mut *conn)
                    .await?;
            }
            E::ConversationDeleted(_) => {
                sqlx::query(&format!(
                    "UPDATE {table} SET revoked_at = $2 WHERE conversation_id = $1 AND revoked_at IS NULL"
                ))
                .bind(id)
                .bind(e.recorded_at)
                .execute(&mut *conn)
                .await?;
            }
            _ => {}
        }
        Ok(None)
    }
}

/// A share as its owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ShareSummary {
    /// The share.
    pub share_id: Uuid,
    /// The conversation version it shows.
    pub version: i64,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked (or its conversation deleted); null while it works.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The shares of `owner`'s conversation, oldest first.
pub async fn list(pool: &PgPool, owner: Uuid, conversation: Uuid) -> Result<Vec<ShareSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT share_id, version, created_at, revoked_at FROM rm_shares
          WHERE conversation_id = $1 AND owner_id = $2 ORDER BY created_at, share_id",
    )
    .bind(conversation)
    .bind(owner)
    .fetch_all(pool)
    .await
}

/// What a link shows: the title and the messages as they were shared, nothing about the
/// owner.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SharedConversation {
    /// The title when shared.
    pub title: String,
    /// The conversation version shown.
    pub version: i64,
    /// When it was shared.
    pub shared_at: DateTime<Utc>,
    /// The path that was active, oldest first.
    pub messages: Vec<SharedMessage>,
}

/// A message of a shared conversation.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SharedMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// A reply's status (`completed`, `failed`, `cancelled`, `streaming`).
    pub status: String,
    /// A reply's model.
    pub model: Option<String>,
}

impl From<Message> for SharedMessage {
    fn from(m: Message) -> Self {
        let model = if m.role == "assistant" { m.model } else { None };
        Self { role: m.role, content: m.content, created_at: m.created_at, status: m.status, model }
    }
}

#[derive(sqlx::FromRow)]
struct Live {
    conversation_id: Uuid,
    owner_id: Uuid,
    title: String,
    version: i64,
    leaf_id: Option<Uuid>,
    created_at: DateTime<Utc>,
}

/// The conversation a link's `token_sha256` shows, unless the share is unknown or revoked
/// (or its conversation deleted).
pub async fn shared(pool: &PgPool, token_sha256: &str) -> Result<Option<SharedConversation>, sqlx::Error> {
    let live: Option<Live> = sqlx::query_as(
        "SELECT conversation_id, owner_id, title, version, leaf_id, created_at FROM rm_shares
          WHERE token_sha256 = $1 AND revoked_at IS NULL",
    )
    .bind(token_sha256)
    .fetch_optional(pool)
    .await?;
    let Some(live) = live else { return Ok(None) };
    let messages = match live.leaf_id {
        Some(leaf) => messages::path_until(pool, live.owner_id, live.conversation_id, leaf, live.version).await?,
        None => Vec::new(),
    };
    Ok(Some(SharedConversation {
        title: live.title,
        version: live.version,
        shared_at: live.created_at,
        messages: messages.into_iter().map(SharedMessage::from).collect(),
    }))
}
