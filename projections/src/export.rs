//! A conversation exported: the whole message tree as JSON (colloquy's own format, what
//! `POST /conversations/import` reads back), or the active path as Markdown. Read from the
//! read models, like every query.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::conversations::{self, ConversationSummary};
use crate::messages::{Message, MessageCitation, MessageUsage};

/// The `format` of colloquy's export document.
pub const FORMAT: &str = "colloquy.conversation";
/// Its version; an importer reads this version.
pub const FORMAT_VERSION: u32 = 1;

/// A conversation as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    pub usage: Option<MessageUsage>,
    /// The message it is an edit of.
    pub edit_of: Option<Uuid>,
    /// The passages a grounded reply's prompt quoted.
    #[serde(default)]
    pub citations: Vec<MessageCitation>,
}

/// `owner`'s conversation `id` exported, or `None` when it is not theirs (or deleted).
pub async fn export(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Option<Export>, sqlx::Error> {
    let Some(c) = conversations::find(pool, owner, id).await? else { return Ok(None) };
    let tree = crate::messages::tree(pool, owner, id).await?;
    Ok(Some(Export {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        exported_at: Utc::now(),
        conversation: settings(&c),
        active_leaf_id: tree.leaf_id,
        messages: tree.messages.into_iter().map(|(m, parent_id, edit_of)| exported(m, parent_id, edit_of)).collect(),
    }))
}

fn settings(c: &ConversationSummary) -> ExportedConversation {
    ExportedConversation {
        id: c.conversation_id,
        title: c.title.clone(),
        kind: c.kind.clone(),
        model: c.model.clone(),
        system_prompt: c.system_prompt.clone(),
        grounded: c.grounded,
        created_at: c.created_at,
    }
}

fn exported(m: Message, parent_id: Option<Uuid>, edit_of: Option<Uuid>) -> ExportedMessage {
    ExportedMessage {
        id: m.message_id,
        parent_id,
        role: m.role,
        content: m.content,
        created_at: m.created_at,
        status: m.status,
        model: m.model,
        provider: m.provider,
        usage: m.usage,
        edit_of,
        citations: m.citations,
    }
}

/// The active path of `export` as Markdown: the title, then each message under a heading
/// naming who wrote it (and a reply's model), a reply's citations as a list after it.
pub fn markdown(export: &Export) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", export.conversation.title);
    if let Some(prompt) = &export.conversation.system_prompt {
        let _ = writeln!(out, "> System prompt: {}\n", prompt.replace('\n', "\n> "));
    }
    for m in active_path(export) {
        match m.role.as_str() {
            "user" => {
                let _ = writeln!(out, "## You\n");
            }
            _ => {
                let model = m.model.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
                let status = match m.status.as_str() {
                    "completed" => String::new(),
                    other => format!(" [{other}]"),
                };
                let _ = writeln!(out, "## Assistant{model}{status}\n");
            }
        }
        let _ = writeln!(out, "{}\n", m.content);
        if !m.citations.is_empty() {
            let _ = writeln!(out, "Sources:\n");
            for c in &m.citations {
                let _ = writeln!(out, "- {} (version {}, passage {})", c.title, c.version, c.position + 1);
            }
            let _ = writeln!(out);
        }
    }
    out
}

/// The messages from the first one to the active leaf.
fn active_path(export: &Export) -> Vec<&ExportedMessage> {
    let mut path = Vec::new();
    let mut at = export.active_leaf_id;
    while let Some(id) = at {
        let Some(m) = export.messages.iter().find(|m| m.id == id) else { break };
        if path.len() > export.messages.len() {
            break;
        }
        path.push(m);
        at = m.parent_id;
    }
    path.reverse();
    path
}
