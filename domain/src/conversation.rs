//! The Conversation aggregate: title, type, archive state, model settings and messages.

mod aggregate;
mod commands;
mod errors;
mod events;
pub mod export;
mod replies;
#[cfg(test)]
mod reply_tests;
mod services;
#[cfg(test)]
mod import_tests;
#[cfg(test)]
mod share_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tree_tests;
pub mod tree;

pub use aggregate::{Conversation, ConversationStatus, SNAPSHOT_EVERY};
pub use commands::{ConversationCommand, NewMessageId};
pub use errors::ConversationError;
pub use events::{
    BranchActivated, Citation, ConversationArchived, ConversationImported, ConversationOpenedFromApi, ConversationShared, ConversationDeleted, ConversationEvent, ConversationKind, ConversationRenamed,
    ConversationStarted, ConversationUnarchived, GroundingChanged, MessageImported, ReplyAttempt, ReplyCancelled, ReplyCompleted, ReplyFailed,
    ReplyFailure, ReplyParameters, ReplyRequested, ReplyStarted, ShareRevoked, TitleGenerated, TokenUsage, UserMessagePosted,
};
pub use replies::{reply_id_for, REPLY_NAMESPACE};
pub use services::{ConversationServices, MessageLookup, MessageNode};

/// The title of a conversation started without one, until the assistant names it.
pub const UNTITLED: &str = "New conversation";

/// Most messages one import may hold.
pub const IMPORT_MAX_MESSAGES: usize = 10_000;

/// Live shares a conversation may have at once.
pub const SHARES_MAX: usize = 20;

/// Longest accepted user message, in characters.
pub const MESSAGE_MAX: usize = 32_000;
