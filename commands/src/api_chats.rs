//! Chat completions asked through the OpenAI-compatible API (`POST /v1/chat/completions`).
//!
//! OpenAI's API is stateless: every request carries the whole conversation. Each request
//! becomes a new conversation of the caller's, started by one command whose events say where
//! it came from (`ConversationOpenedFromApi`): the earlier turns are recorded as imported
//! messages (nobody asked a model for them here), the last user message is posted, and the
//! assistant worker answers it as it answers every message: the same model routes and
//! fallbacks, the same quotas, the same usage ledger. The HTTP layer then relays that reply.

use colloquy_domain::conversation::{
    reply_id_for, ConversationCommand, ConversationOpenedFromApi, MessageImported, ReplyParameters,
};
use serde::{Deserialize, Serialize};
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::conversations::Outcome;
use crate::quotas::{Charge, Quota};
use crate::Commands;

/// The endpoint recorded on the conversation.
pub const CHAT_COMPLETIONS: &str = "chat.completions";

/// Longest title made from a request's first message, in characters.
const TITLE_CHARS: usize = 60;

/// Title of a request whose first message leaves nothing to show.
const FALLBACK_TITLE: &str = "API chat completion";

/// Who wrote an earlier turn of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnRole {
    /// The person.
    User,
    /// The model.
    Assistant,
}

/// An earlier turn of the request's conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// Who wrote it.
    pub role: TurnRole,
    /// Its text.
    pub content: String,
}

/// A chat completion request, as the use case takes it (the HTTP layer has parsed OpenAI's
/// request shape into it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiChat {
    /// The model.
    pub model: String,
    /// The request's system and developer messages, joined; `None` when it had none (no
    /// default system prompt is added: the client said what it wants).
    pub system_prompt: Option<String>,
    /// The turns before the last user message, oldest first.
    pub turns: Vec<Turn>,
    /// The last user message: the one to answer.
    pub content: String,
    /// Sampling parameters.
    pub parameters: ReplyParameters,
    /// The API key the request carried (`None` for an access token).
    pub api_key_id: Option<Uuid>,
}

/// A chat completion was accepted: the conversation it made and the reply to relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiChatAccepted {
    /// The new conversation.
    pub conversation_id: Uuid,
    /// The posted (last) user message.
    pub message_id: Uuid,
    /// The assistant's reply to it (stream it from the reply streams).
    pub reply_id: Uuid,
    /// The conversation's version.
    pub version: i64,
}

/// A short title from a request's first message: whitespace collapsed, control and
/// invisible characters dropped, at most [`TITLE_CHARS`] characters.
pub fn title_from(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| (!c.is_control() || c.is_whitespace()) && !colloquy_domain::values::is_invisible(*c))
        .collect();
    let words = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.is_empty() {
        return FALLBACK_TITLE.to_string();
    }
    match words.char_indices().nth(TITLE_CHARS) {
        None => words,
        Some((cut, _)) => format!("{}…", words[..cut].trim_end()),
    }
}

impl Commands {
    /// Records a chat completion request as a new conversation of the caller's whose last
    /// message the assistant answers. Checked like a posted message: the model must be
    /// configured, the token quotas not spent, and the message counts against the day's
    /// messages and the stored bytes (an API conversation does not count as a started
    /// conversation: one request makes one, and the day's messages bound them already).
    /// With an Idempotency-Key, a retry answers the first request's conversation and reply.
    #[instrument(skip_all, fields(user_id = %caller.user, model = %chat.model))]
    pub async fn start_api_chat(&self, caller: &Caller, chat: ApiChat) -> Outcome<ApiChatAccepted> {
        self.models.check(&chat.model)?;
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "api_chat", &chat, || async {
                let conversation_id = Uuid::new_v4();
                let message_id = Uuid::new_v4();
                let mut history = Vec::with_capacity(chat.turns.len());
                let mut parent = None;
                for turn in &chat.turns {
                    let id = Uuid::new_v4();
                    let (role, status, model) = match turn.role {
                        TurnRole::User => ("user", "completed", None),
                        TurnRole::Assistant => ("assistant", "completed", Some(chat.model.clone())),
                    };
                    history.push(MessageImported {
                        message_id: id,
                        parent_id: parent,
                        role: role.into(),
                        content: turn.content.clone(),
                        status: status.into(),
                        model,
                        provider: None,
                        usage: None,
                        citations: vec![],
                        written_at: chrono::Utc::now(),
                    });
                    parent = Some(id);
                }
                let first = chat.turns.iter().find(|t| t.role == TurnRole::User).map_or(&chat.content, |t| &t.content);
                let bytes = chat.system_prompt.as_deref().map_or(0, str::len)
                    + chat.turns.iter().map(|t| t.content.len()).sum::<usize>()
                    + chat.content.len();
                let command = ConversationCommand::StartApiConversation {
                    conversation_id,
                    owner_id: caller.user,
                    title: title_from(first),
                    model: chat.model.clone(),
                    system_prompt: chat.system_prompt.clone(),
                    request: ConversationOpenedFromApi {
                        api_key_id: chat.api_key_id,
                        endpoint: CHAT_COMPLETIONS.into(),
                        parameters: chat.parameters.clone(),
                        earlier_messages: u32::try_from(history.len()).unwrap_or(u32::MAX),
                    },
                    history,
                    message_id,
                    content: chat.content.clone(),
                };
                let charges = [Charge::new(Quota::MessagesPerDay, 1), Charge::new(Quota::StoredBytes, bytes)];
                let committed = self.execute_spending(caller, conversation_id, command, &charges).await?;
                Ok(ApiChatAccepted {
                    conversation_id,
                    message_id,
                    reply_id: reply_id_for(message_id),
                    version: committed.version,
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_one_clean_line_of_at_most_sixty_characters() {
        assert_eq!(title_from("  What is\n\tthe capital   of France? "), "What is the capital of France?");
        assert_eq!(title_from("a\u{202E}b\u{200B}c\u{1b}d"), "abcd");
        assert_eq!(title_from(" \n "), FALLBACK_TITLE);
        let long = "word ".repeat(30);
        let title = title_from(&long);
        assert!(title.ends_with('…'));
        assert_eq!(title.chars().count(), 60, "{title}");
        assert_eq!(title_from(&"é".repeat(80)).chars().count(), TITLE_CHARS + 1);
    }
}
