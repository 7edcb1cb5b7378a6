//! The prompt of a reply: the conversation's system prompt, then as much of the path that
//! leads to the user message as fits the model's context window (the nearest exchanges
//! kept, the oldest dropped), then the user message itself. Only that path: other branches
//! of the conversation (regenerated replies, edited questions) are never in it. Tokens are
//! counted with the model's own tokenizer (passed in as `count`).

use colloquy_infra::event_store::{ConversationMessage, MessageRole};
use colloquy_providers::{ChatMessage, Role};
use uuid::Uuid;

/// Tokens a chat template adds around each message (role markers, separators), on top of
/// the message's own text; a safe over-estimate for ChatML, OpenAI's and Anthropic's formats.
pub const PER_MESSAGE_OVERHEAD: usize = 8;

/// The prompt of one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// What the model is sent, system message first.
    pub messages: Vec<ChatMessage>,
    /// The ids of the conversation's messages included, oldest first (the user message last).
    pub context: Vec<Uuid>,
    /// Tokens counted for the prompt.
    pub tokens: usize,
}

/// Even the system prompt and the user message alone do not fit the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the message and the system prompt need {needed} tokens; the model takes {budget}")]
pub struct PromptTooLong {
    /// Tokens they need.
    pub needed: usize,
    /// Tokens the model's window leaves for the prompt.
    pub budget: usize,
}

/// Builds the prompt answering `target` (a user message) from `path` (the messages that
/// lead to it, oldest first, as `event_store::path_messages` reads them), within `budget`
/// tokens.
///
/// The path is cut into exchanges (a user message and the replies that follow it on the
/// path); the nearest exchanges that fit are kept whole, older ones are dropped.
pub fn build(
    system_prompt: Option<&str>,
    target: &ConversationMessage,
    path: &[ConversationMessage],
    budget: usize,
    count: impl Fn(&ChatMessage) -> usize,
) -> Result<Prompt, PromptTooLong> {
    let cost = |m: &ChatMessage| count(m) + PER_MESSAGE_OVERHEAD;
    let system = system_prompt.filter(|s| !s.trim().is_empty()).map(|s| ChatMessage::new(Role::System, s));
    let question = ChatMessage::new(Role::User, target.content.clone());
    let fixed = system.as_ref().map_or(0, cost) + cost(&question);
    if fixed > budget {
        return Err(PromptTooLong { needed: fixed, budget });
    }
    // Exchanges, each starting at a user message (a path may also start with a reply).
    let mut exchanges: Vec<Vec<&ConversationMessage>> = Vec::new();
    for message in path.iter().filter(|m| m.message_id != target.message_id) {
        match exchanges.last_mut() {
            Some(exchange) if message.role == MessageRole::Assistant => exchange.push(message),
            _ => exchanges.push(vec![message]),
        }
    }
    let chat = |m: &ConversationMessage| {
        let role = match m.role {
            MessageRole::User => Role::User,
            MessageRole::Assistant => Role::Assistant,
        };
        ChatMessage::new(role, m.content.clone())
    };
    // Nearest exchange first, until the budget is spent; an exchange is kept whole or not at all.
    let mut kept: Vec<&Vec<&ConversationMessage>> = Vec::new();
    let mut used = fixed;
    for exchange in exchanges.iter().rev() {
        let needed: usize = exchange.iter().map(|m| cost(&chat(m))).sum();
        if used + needed > budget {
            break;
        }
        used += needed;
        kept.push(exchange);
    }
    kept.reverse();
    let mut messages: Vec<ChatMessage> = Vec::with_capacity(path.len() + 2);
    let mut context: Vec<Uuid> = Vec::with_capacity(path.len() + 1);
    messages.extend(system);
    for message in kept.into_iter().flatten() {
        context.push(message.message_id);
        messages.push(chat(message));
    }
    context.push(target.message_id);
    messages.push(question);
    Ok(Prompt { messages, context, tokens: used })
}

#[cfg(test)]
mod tests {
    use super::*;
    use colloquy_domain::conversation::reply_id_for;

    fn user(sequence: i64, text: &str) -> ConversationMessage {
        ConversationMessage {
            sequence,
            message_id: Uuid::from_u128(sequence as u128),
            role: MessageRole::User,
            content: text.into(),
        }
    }

    fn reply(to: &ConversationMessage, sequence: i64, text: &str) -> ConversationMessage {
        ConversationMessage {
            sequence,
            message_id: reply_id_for(to.message_id),
            role: MessageRole::Assistant,
            content: text.into(),
        }
    }

    /// One token per word.
    fn words(m: &ChatMessage) -> usize {
        m.content.split_whitespace().count()
    }

    fn texts(p: &Prompt) -> Vec<(Role, &str)> {
        p.messages.iter().map(|m| (m.role, m.content.as_str())).collect()
    }

    #[test]
    fn the_path_comes_in_order_with_each_reply_after_its_question() {
        let (a, b) = (user(2, "first question"), user(3, "second question"));
        let path = vec![a.clone(), reply(&a, 5, "first answer"), b.clone(), reply(&b, 6, "second answer")];
        let target = user(7, "third question");
        let p = build(Some("Be brief."), &target, &path, 1000, words).unwrap();
        assert_eq!(
            texts(&p),
            vec![
                (Role::System, "Be brief."),
                (Role::User, "first question"),
                (Role::Assistant, "first answer"),
                (Role::User, "second question"),
                (Role::Assistant, "second answer"),
                (Role::User, "third question"),
            ]
        );
        assert_eq!(
            p.context,
            vec![a.message_id, reply_id_for(a.message_id), b.message_id, reply_id_for(b.message_id), target.message_id]
        );
    }

    #[test]
    fn the_target_is_never_repeated() {
        let target = user(2, "now");
        let p = build(None, &target, std::slice::from_ref(&target), 1000, words).unwrap();
        assert_eq!(texts(&p), vec![(Role::User, "now")]);
    }

    #[test]
    fn the_oldest_exchanges_go_first_when_the_window_is_full() {
        let old = user(2, "one two three four five six seven eight nine ten");
        let recent = user(4, "recent");
        let history =
            vec![old.clone(), reply(&old, 3, "long answer here too"), recent.clone(), reply(&recent, 5, "ok")];
        let target = user(6, "question");
        // target 1+8, recent exchange (1+8)+(1+8): 27 fits; the old one would need 32 more.
        let p = build(None, &target, &history, 40, words).unwrap();
        assert_eq!(texts(&p), vec![(Role::User, "recent"), (Role::Assistant, "ok"), (Role::User, "question")]);
        assert!(p.tokens <= 40);
    }

    #[test]
    fn a_message_that_cannot_fit_is_refused() {
        let target = user(2, "far too many words for this tiny window");
        assert_eq!(build(None, &target, &[], 10, words), Err(PromptTooLong { needed: 16, budget: 10 }));
    }
}
