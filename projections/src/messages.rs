//! The messages read model (`rm_messages`): every message of every live conversation.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use colloquy_domain::conversation::ConversationEvent;
use colloquy_domain::Conversation;
use colloquy_infra::event_store::StoredEvent;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projection::{domain_event, ApplyError, Projection};

/// Projects Conversation events into `rm_messages`.
pub struct MessagesProjection;

/// The projection's name.
pub const NAME: &str = "messages";

/// One message as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Message {
    /// The id.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The conversation version that added it (orders messages).
    pub sequence: i64,
    /// `user` (assistant replies come with the assistant worker).
    pub role: String,
    /// The text.
    pub content: String,
    /// When posted.
    pub created_at: DateTime<Utc>,
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

    async fn apply(&self, conn: &mut PgConnection, table: &str, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
        let id: Uuid =
            e.aggregate_id.parse().map_err(|_| ApplyError::poison(format!("conversation id {}", e.aggregate_id)))?;
        match domain_event::<ConversationEvent>(e)? {
            ConversationEvent::UserMessagePosted(m) => {
                sqlx::query(&format!(
                    "INSERT INTO {table} (message_id, conversation_id, owner_id, sequence, role, content, created_at)
                     VALUES ($1, $2, $3, $4, 'user', $5, $6)"
                ))
                .bind(m.message_id)
                .bind(id)
                .bind(m.author_id)
                .bind(e.sequence)
                .bind(&m.content)
                .bind(e.recorded_at)
                .execute(&mut *conn)
                .await?;
            }
            ConversationEvent::ConversationDeleted(_) => {
                sqlx::query(&format!("DELETE FROM {table} WHERE conversation_id = $1"))
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
            _ => {}
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
    sqlx::query_as(
        "SELECT message_id, conversation_id, sequence, role, content, created_at FROM rm_messages
          WHERE conversation_id = $1 AND owner_id = $2 AND sequence > $3
          ORDER BY sequence LIMIT $4",
    )
    .bind(conversation)
    .bind(owner)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
