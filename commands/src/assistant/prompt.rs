//! The prompt of a reply: the conversation's system prompt, then as much of the
//! conversation before the user message as fits the model's context window (newest
//! exchanges kept, oldest dropped), then the user message itself. Tokens are counted with
//! the model's own tokenizer (passed in as `count`).

use std::collections::HashMap;

use colloquy_domain::conversation::reply_id_for;
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

/// A question (its id and text) and its reply, if it has one.
type Exchange = (Uuid, ChatMessage, Option<(Uuid, ChatMessage)>);

/// Builds the prompt answering `target` (a user message) from `history` (the conversation's
/// messages in any order, the target among them or not), within `budget` tokens.
///
/// Only messages posted before the target count, each user message followed by the reply
/// that answered it (replies are paired by their deterministic id, so a reply that finished
/// after a later message was posted still sits after its own question).
pub fn build(
    system_prompt: Option<&str>,
    target: &ConversationMessage,
    history: &[ConversationMessage],
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
    let replies: HashMap<Uuid, &ConversationMessage> =
        history.iter().filter(|m| m.role == MessageRole::Assistant).map(|m| (m.message_id, m)).collect();
    let mut earlier: Vec<&ConversationMessage> = history
        .iter()
        .filter(|m| m.role == MessageRole::User && m.sequence < target.sequence && m.message_id != target.message_id)
        .collect();
    earlier.sort_by_key(|m| m.sequence);
    // Newest exchange first, until the budget is spent; an exchange is kept whole or not at all.
    let mut kept: Vec<Exchange> = Vec::new();
    let mut used = fixed;
    for question in earlier.iter().rev() {
        let asked = ChatMessage::new(Role::User, question.content.clone());
        let answer = replies
            .get(&reply_id_for(question.message_id))
            .filter(|r| !r.content.is_empty())
            .map(|r| (r.message_id, ChatMessage::new(Role::Assistant, r.content.clone())));
        let needed = cost(&asked) + answer.as_ref().map_or(0, |(_, a)| cost(a));
        if used + needed > budget {
            break;
        }
        used += needed;
        kept.push((question.message_id, asked, answer));
    }
    kept.reverse();
    let mut messages = Vec::with_capacity(kept.len() * 2 + 2);
    let mut context = Vec::with_capacity(kept.len() * 2 + 1);
    messages.extend(system);
    for (id, asked, answer) in kept {
        context.push(id);
        messages.push(asked);
        if let Some((reply, said)) = answer {
            context.push(reply);
            messages.push(said);
        }
    }
    context.push(target.message_id);
    messages.push(question);
    Ok(Prompt { messages, context, tokens: used })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn exchanges_come_in_order_with_each_reply_after_its_question() {
        let (a, b) = (user(2, "first question"), user(3, "second question"));
        // The reply to `a` finished after `b` was posted: it still follows `a`.
        let history = vec![reply(&a, 5, "first answer"), b.clone(), a.clone(), reply(&b, 6, "second answer")];
        let target = user(7, "third question");
        let p = build(Some("Be brief."), &target, &history, 1000, words).unwrap();
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
    fn messages_after_the_target_are_left_out() {
        let target = user(2, "now");
        let later = user(3, "later");
        let p = build(None, &target, &[target.clone(), later], 1000, words).unwrap();
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
