//! What the Conversation tests share: the owner, a stranger, the conversation, its start,
//! a posted message, and a port double.

use async_trait::async_trait;
use uuid::Uuid;

use super::{ConversationEvent, ConversationKind, ConversationStarted, MessageLookup, MessageNode, UserMessagePosted};
use crate::decision::PortError;

/// The owner.
pub(super) const OWNER: Uuid = Uuid::from_u128(1);
/// Somebody else.
pub(super) const STRANGER: Uuid = Uuid::from_u128(2);
/// The conversation.
pub(super) const CONV: Uuid = Uuid::from_u128(9);

/// The owner started `CONV` (title "t", model "m").
pub(super) fn started() -> ConversationEvent {
    ConversationEvent::ConversationStarted(ConversationStarted {
        conversation_id: CONV,
        owner_id: OWNER,
        title: "t".into(),
        kind: ConversationKind::Chat,
        model: "m".into(),
        system_prompt: None,
        title_pending: false,
    })
}

/// The owner posted message `id` after `parent` (an edit of `edit_of`, if any).
pub(super) fn posted(id: Uuid, parent: Option<Uuid>, edit_of: Option<Uuid>) -> ConversationEvent {
    ConversationEvent::UserMessagePosted(UserMessagePosted {
        message_id: id,
        author_id: OWNER,
        content: format!("message {}", id.as_u128()),
        model: None,
        parent_id: parent,
        edit_of,
    })
}

/// A lookup whose event store cannot be reached: every question fails.
pub(super) struct Unreachable;

#[async_trait]
impl MessageLookup for Unreachable {
    async fn message_exists(&self, _: Uuid, _: Uuid) -> Result<bool, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }

    async fn reply_exists(&self, _: Uuid, _: Uuid) -> Result<bool, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }

    async fn node(&self, _: Uuid, _: Uuid) -> Result<Option<MessageNode>, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }

    async fn latest_leaf(&self, _: Uuid, _: Uuid) -> Result<Option<Uuid>, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }

    async fn requested_reply(&self, _: Uuid, _: Uuid) -> Result<Option<Uuid>, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }
}

