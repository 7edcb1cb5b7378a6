//! colloquy's export format for a conversation (`GET .../export`, read back by
//! `POST /conversations/import`): the contract between the two, so it lives with the
//! domain's other published types.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Citation, TokenUsage};

/// The `format` of colloquy's export document.
pub const FORMAT: &str = "colloquy.conversation";
/// Its version; an importer reads this version.
pub const FORMAT_VERSION: u32 = 1;

/// A conversation as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Export {
    /// Always `colloquy.conversation`.
    pub format: String,
    /// The format's version (1).
    pub format_version: u32,
    /// When exported.
    pub exported_at: DateTime<Utc>,
    /// The conversation's settings.
    pub conversation: ExportedConversation,
    /// Every message of the tree, oldest first (parents before their children).
    pub messages: Vec<ExportedMessage>,
    /// Where the active path ends (null for a conversation without messages).
    pub active_leaf_id: Option<Uuid>,
}

/// The conversation's settings as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExportedConversation {
    /// Its id in the exporting colloquy.
    pub id: Uuid,
    /// The title.
    pub title: String,
    /// `chat` or `knowledge`.
    pub kind: String,
    /// The model.
    pub model: String,
    /// The system prompt.
    pub system_prompt: Option<String>,
    /// Whether replies were grounded in the owner's knowledge base.
    pub grounded: bool,
    /// When started.
    pub created_at: DateTime<Utc>,
}

/// One message of the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExportedMessage {
    /// Its id in the exporting colloquy.
    pub id: Uuid,
    /// The message it follows (a reply: the one it answers); null for a first message.
    pub parent_id: Option<Uuid>,
    /// `user` or `assistant`.
    pub role: String,
    /// The text (a failed or cancelled reply's partial text).
    pub content: String,
    /// When written.
    pub created_at: DateTime<Utc>,
    /// `completed`, `failed`, `cancelled` (or `streaming` for a reply still running).
    pub status: String,
    /// A reply's model (a user message's: the one it asked for).
    pub model: Option<String>,
    /// A reply's provider.
    pub provider: Option<String>,
    /// A reply's tokens.
    pub usage: Option<TokenUsage>,
    /// The message it is an edit of.
    pub edit_of: Option<Uuid>,
    /// The passages a grounded reply's prompt quoted.
    #[serde(default)]
    pub citations: Vec<Citation>,
}

