use serde::Deserialize;
use uuid::Uuid;

use super::ConversationKind;

/// What can be asked of a Conversation. Every command names its actor: only the owner may
/// act on a conversation, and to anyone else it does not exist.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum ConversationCommand {
    /// Create the conversation.
    StartConversation {
        /// The new conversation's id.
        conversation_id: Uuid,
        /// The owner (the authenticated user).
        owner_id: Uuid,
        /// The title.
        title: String,
        /// The conversation type.
        kind: ConversationKind,
        /// The model to answer with.
        model: String,
        /// An optional system prompt.
        system_prompt: Option<String>,
    },
    /// Change the title.
    RenameConversation {
        /// Who asks.
        actor_id: Uuid,
        /// The new title.
        title: String,
    },
    /// Hide from the default list; rejects new messages until unarchived.
    ArchiveConversation {
        /// Who asks.
        actor_id: Uuid,
    },
    /// Undo an archive.
    UnarchiveConversation {
        /// Who asks.
        actor_id: Uuid,
    },
    /// Delete; terminal.
    DeleteConversation {
        /// Who asks.
        actor_id: Uuid,
    },
    /// Add a user message.
    PostUserMessage {
        /// Who asks.
        actor_id: Uuid,
        /// The new message's id.
        message_id: Uuid,
        /// The text.
        content: String,
    },
}
