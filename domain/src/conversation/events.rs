use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The conversation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// A plain chat with a model.
    #[default]
    Chat,
    /// A chat whose answers are grounded in the owner's knowledge base.
    Knowledge,
}

/// A conversation was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationStarted {
    /// The conversation's id.
    pub conversation_id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// The title.
    pub title: String,
    /// The type.
    pub kind: ConversationKind,
    /// The model to answer with.
    pub model: String,
    /// The system prompt, if any.
    pub system_prompt: Option<String>,
}

/// The title changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationRenamed {
    /// The new title.
    pub title: String,
}

/// The conversation was archived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationArchived {}

/// The conversation was unarchived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationUnarchived {}

/// The conversation was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationDeleted {}

/// The owner posted a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserMessagePosted {
    /// The message's id.
    pub message_id: Uuid,
    /// The author (the owner).
    pub author_id: Uuid,
    /// The text.
    pub content: String,
}

crate::domain_events! {
    /// Everything that can happen to a Conversation.
    pub enum ConversationEvent {
        /// See [`ConversationStarted`].
        ConversationStarted(ConversationStarted) = "1.0",
        /// See [`ConversationRenamed`].
        ConversationRenamed(ConversationRenamed) = "1.0",
        /// See [`ConversationArchived`].
        ConversationArchived(ConversationArchived) = "1.0",
        /// See [`ConversationUnarchived`].
        ConversationUnarchived(ConversationUnarchived) = "1.0",
        /// See [`ConversationDeleted`].
        ConversationDeleted(ConversationDeleted) = "1.0",
        /// See [`UserMessagePosted`].
        UserMessagePosted(UserMessagePosted) = "1.0",
    }
}

impl crate::event_catalog::EventExamples for ConversationEvent {
    fn examples() -> Vec<Self> {
        let id = Uuid::from_u128(1);
        vec![
            Self::ConversationStarted(ConversationStarted {
                conversation_id: id,
                owner_id: id,
                title: "Trip".into(),
                kind: ConversationKind::Chat,
                model: "local/smollm2-135m".into(),
                system_prompt: Some("Be brief.".into()),
            }),
            Self::ConversationRenamed(ConversationRenamed { title: "Plans".into() }),
            Self::ConversationArchived(ConversationArchived {}),
            Self::ConversationUnarchived(ConversationUnarchived {}),
            Self::ConversationDeleted(ConversationDeleted {}),
            Self::UserMessagePosted(UserMessagePosted { message_id: id, author_id: id, content: "Hello".into() }),
        ]
    }
}
