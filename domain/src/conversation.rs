//! The Conversation aggregate: title, type, archive state, model settings and messages.

mod aggregate;
mod commands;
mod errors;
mod events;
mod services;

pub use aggregate::{Conversation, ConversationStatus};
pub use commands::ConversationCommand;
pub use errors::ConversationError;
pub use events::{
    ConversationArchived, ConversationDeleted, ConversationEvent, ConversationKind, ConversationRenamed,
    ConversationStarted, ConversationUnarchived, UserMessagePosted,
};
pub use services::{ConversationServices, MessageLookup};

/// Longest accepted title, in characters.
pub const TITLE_MAX: usize = 200;
/// Longest accepted user message, in characters.
pub const MESSAGE_MAX: usize = 32_000;
