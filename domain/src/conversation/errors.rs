use crate::values::TextField;

/// Business rejections of Conversation commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ConversationError {
    /// `StartConversation` on an existing id.
    #[error("the conversation already exists")]
    AlreadyStarted,
    /// The conversation does not exist, or belongs to someone else.
    #[error("the conversation does not exist")]
    NotFound,
    /// The conversation was deleted.
    #[error("the conversation was deleted")]
    Deleted,
    /// The conversation is archived and takes no new messages.
    #[error("the conversation is archived; unarchive it first")]
    Archived,
    /// Archive of an archived conversation.
    #[error("the conversation is already archived")]
    AlreadyArchived,
    /// Unarchive of a conversation that is not archived.
    #[error("the conversation is not archived")]
    NotArchived,
    /// An update that names nothing to change (decided by the use case, before any command).
    #[error("the update changes nothing: give a title, grounded, or both")]
    NothingToChange,
    /// Empty or overlong title.
    #[error("the title must be between 1 and {max} characters")]
    InvalidTitle {
        /// The limit.
        max: usize,
    },
    /// Empty or overlong model name.
    #[error("the model name must be between 1 and {max} characters")]
    InvalidModel {
        /// The limit.
        max: usize,
    },
    /// A model that is not configured (see `GET /api/v1/models`). Decided by the use case,
    /// which knows the configuration; the aggregate only checks the name's form.
    #[error("this model is not available")]
    UnknownModel,
    /// Empty or overlong system prompt.
    #[error("the system prompt must be between 1 and {max} characters")]
    InvalidSystemPrompt {
        /// The limit.
        max: usize,
    },
    /// Empty or overlong message.
    #[error("the message must be between 1 and {max} characters")]
    InvalidMessage {
        /// The limit.
        max: usize,
    },
    /// A control character (NUL, ESC, ...) in text that may not hold it: message text
    /// allows only line breaks and tabs.
    #[error("the {field} contains a control character")]
    ControlCharacter {
        /// Where.
        field: TextField,
    },
    /// A bidirectional override/isolate or zero-width character in a title, model name or
    /// system prompt.
    #[error("the {field} contains a bidirectional-override or zero-width character")]
    InvisibleCharacter {
        /// Where.
        field: TextField,
    },
    /// A message with this id is already in the conversation.
    #[error("a message with this id already exists")]
    DuplicateMessage,
    /// An import whose messages do not form a tree (a parent that is not an earlier message,
    /// an id twice, an unknown role, a leaf that is not one of them) or are too many.
    #[error("the export is not a conversation colloquy can import: {reason}")]
    InvalidImport {
        /// What is wrong.
        reason: String,
    },
    /// A share that does not exist (or was revoked already).
    #[error("the share does not exist")]
    ShareNotFound,
    /// As many live shares as allowed; revoke one first.
    #[error("the conversation has {max} live shares; revoke one first")]
    TooManyShares {
        /// The limit.
        max: usize,
    },
    /// Edit of an assistant reply: only user messages can be edited.
    #[error("only user messages can be edited; regenerate a reply instead")]
    NotAUserMessage,
    /// The reply id is neither the one derived from the message it answers
    /// ([`reply_id_for`](super::reply_id_for)) nor one requested for it.
    #[error("the reply id does not belong to the message it answers")]
    ReplyIdMismatch,
    /// The message a reply answers is not a user message of this conversation, or a message
    /// to edit, regenerate or switch to is not in it.
    #[error("the message does not exist in this conversation")]
    MessageNotFound,
    /// The reply was started and has not finished yet.
    #[error("the reply is already in progress")]
    ReplyInProgress,
    /// The reply already completed, failed or was cancelled.
    #[error("the reply has already finished")]
    ReplyAlreadyFinished,
    /// Complete, fail or cancel of a reply that is not in progress (never started, or
    /// already finished).
    #[error("the reply is not in progress")]
    ReplyNotOpen,
}
