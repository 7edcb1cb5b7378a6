//! A conversation exported: the whole message tree as JSON (colloquy's own format, what
//! `POST /conversations/import` reads back), or the active path as Markdown. Read from the
//! read models, like every query.

use std::fmt::Write;

use chrono::Utc;
use colloquy_domain::conversation::export::{Export, ExportedConversation, ExportedMessage, FORMAT, FORMAT_VERSION};
use colloquy_domain::conversation::{Citation, TokenUsage};
use sqlx::PgPool;
use uuid::Uuid;

use crate::conversations::{self, ConversationSummary};
use crate::messages::Message;

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
        usage: m.usage.map(|u| TokenUsage {
            input_tokens: u32::try_from(u.input_tokens).unwrap_or(u32::MAX),
            output_tokens: u32::try_from(u.output_tokens).unwrap_or(u32::MAX),
        }),
        edit_of,
        citations: m
            .citations
            .into_iter()
            .map(|c| Citation {
                document_id: c.document_id,
                version: c.version,
                chunk_id: c.chunk_id,
                position: c.position,
                title: c.title,
                text: c.text,
                score: c.score,
            })
            .collect(),
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
