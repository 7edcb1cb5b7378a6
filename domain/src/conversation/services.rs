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

    /// Where message (or reply) `id` sits in the conversation's tree; `None` when the
    /// conversation has no such message.
    async fn node(&self, conversation_id: Uuid, id: Uuid) -> Result<Option<MessageNode>, PortError>;

    /// The newest message at the end of the branch under `from` (see
    /// [`tree::latest_leaf`](super::tree::latest_leaf)); `None` when there is no `from`.
    async fn latest_leaf(&self, conversation_id: Uuid, from: Uuid) -> Result<Option<Uuid>, PortError>;

    /// The user message a requested (regenerated) reply `reply_id` is to answer, if such a
    /// reply was requested (`ReplyRequested`).
    async fn requested_reply(&self, conversation_id: Uuid, reply_id: Uuid) -> Result<Option<Uuid>, PortError>;
}

/// A message's place in its conversation's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageNode {
    /// The message it follows (a reply: the user message it answers); `None` for a first
    /// message.
    pub parent_id: Option<Uuid>,
    /// Whether it is an assistant reply (else a user message).
    pub is_reply: bool,
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
