use async_trait::async_trait;
use std::sync::Arc;
use uuid::Uuid;

use crate::decision::PortError;

/// Answers whether a message or reply id is taken in a conversation, from the event store.
///
/// The aggregate asks instead of remembering every message id itself: its state (and
/// snapshot) then stays the same size however long the conversation grows. A lookup that
/// races an append is safe: the append that wins bumps the version, the loser is retried
/// on fresh state and asks again.
///
/// User messages and assistant replies share one id space per conversation (both are rows
/// of the messages read model): [`message_exists`](Self::message_exists) sees both kinds,
/// [`reply_exists`](Self::reply_exists) only replies. A user message is therefore an id
/// that exists and is not a reply.
#[async_trait]
pub trait MessageLookup: Send + Sync {
    /// Whether `message_id` already names a message of `conversation_id`: a user message
    /// (`UserMessagePosted`) or an assistant reply (`ReplyStarted`).
    async fn message_exists(&self, conversation_id: Uuid, message_id: Uuid) -> Result<bool, PortError>;

    /// Whether a reply `reply_id` was ever started in `conversation_id` (whether or not it
    /// finished since).
    async fn reply_exists(&self, conversation_id: Uuid, reply_id: Uuid) -> Result<bool, PortError>;
}

/// What Conversation decisions reach outside the aggregate.
#[derive(Clone)]
pub struct ConversationServices {
    /// Message-id lookup.
    pub messages: Arc<dyn MessageLookup>,
}

impl ConversationServices {
    /// Services over `messages`.
    pub fn new(messages: Arc<dyn MessageLookup>) -> Self {
        Self { messages }
    }
}
