//! Naming a conversation after its first exchange: the conversation's own model is asked
//! for a short title, which is recorded as `TitleGenerated` by the assistant (a system
//! actor). Only conversations started without a title are named, and only until their
//! owner renames them: the aggregate refuses the title otherwise, so a rename that races
//! the model always wins. Naming is best effort: a failure is logged and the placeholder
//! stays; the reply it follows is already recorded.

use std::time::Duration;

use colloquy_domain::conversation::TokenUsage;
use colloquy_domain::values::TITLE_MAX;
use colloquy_providers::{ChatMessage, Parameters, Role, StreamItem};
use futures::StreamExt;

use super::reply::Question;
use super::worker::Shared;

/// What the model is told.
const INSTRUCTION: &str = "You name conversations. Reply with a short title of at most six words for the \
conversation below: no quotes, no final punctuation, nothing else.";

/// Tokens a title may take.
const TITLE_TOKENS: u32 = 24;

/// How much of the question and of the answer the model is shown, in characters.
const EXCERPT_CHARS: usize = 1_000;

/// Longest title kept, in characters (well inside the aggregate's limit).
const TITLE_CHARS: usize = 80;

/// How long naming may take before it is given up.
const NAMING_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks `model` to name the conversation of `question` after `answer`, and records it.
pub(super) async fn name(shared: &Shared, question: &Question, model: &str, answer: &str) {
    // Naming is a provider call too: not once the owner's tokens are spent.
    match shared.commands.tokens_exhausted(question.posted.author_id).await {
        Ok(None) => {}
        Ok(Some(spent)) => {
            tracing::info!(conversation_id = %question.conversation_id, %spent, "Not naming: the token quota is spent.");
            return shared.titled("failed");
        }
        Err(e) => {
            tracing::warn!(conversation_id = %question.conversation_id, error = %e, "Could not check the token quota.");
            return shared.titled("failed");
        }
    }
    let exchange = format!("User: {}\n\nAssistant: {}", excerpt(&question.posted.content), excerpt(answer));
    let messages = vec![ChatMessage::new(Role::System, INSTRUCTION), ChatMessage::new(Role::User, exchange)];
    let parameters = Parameters { max_tokens: Some(TITLE_TOKENS), temperature: None, top_p: None };
    let written = tokio::time::timeout(NAMING_TIMEOUT, async {
        let mut routed = shared.router.stream(model, messages, parameters).await.map_err(|f| f.error)?;
        let mut text = routed.first.clone();
        let mut spent = TokenUsage::default();
        while let Some(item) = routed.rest.next().await {
            match item? {
                StreamItem::Delta(delta) => text.push_str(&delta),
                StreamItem::Usage(usage) => {
                    shared.router.record_usage(&routed.provider, &routed.model, usage);
                    spent = TokenUsage { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens };
                }
                StreamItem::Finished(_) => break,
            }
        }
        Ok::<_, colloquy_providers::ProviderError>((text, routed.provider.clone(), routed.model.clone(), spent))
    })
    .await;
    let (text, provider, upstream, usage) = match written {
        Ok(Ok(written)) => written,
        Ok(Err(e)) => {
            tracing::warn!(conversation_id = %question.conversation_id, error = %e, "Naming the conversation failed.");
            return shared.titled("failed");
        }
        Err(_) => {
            tracing::warn!(conversation_id = %question.conversation_id, "Naming the conversation timed out.");
            return shared.titled("failed");
        }
    };
    let Some(title) = tidy(&text) else {
        tracing::warn!(conversation_id = %question.conversation_id, "The model wrote no usable title.");
        return shared.titled("failed");
    };
    match shared
        .commands
        .generate_title(&question.caller, question.conversation_id, title, provider, upstream, usage)
        .await
    {
        Ok(committed) if committed.events > 0 => {
            tracing::info!(conversation_id = %question.conversation_id, "Conversation named.");
            shared.titled("named");
        }
        // Renamed by its owner meanwhile (or named by another reply): the title stays.
        Ok(_) => shared.titled("kept"),
        Err(e) => {
            tracing::warn!(conversation_id = %question.conversation_id, error = %e, "Recording the title failed.");
            shared.titled("failed");
        }
    }
}

fn excerpt(text: &str) -> String {
    let mut cut: String = text.chars().take(EXCERPT_CHARS).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

/// The title in what a small model wrote: its first line with text, without a `Title:`
/// label, surrounding quotes or Markdown marks, a final full stop, control characters or
/// runs of spaces, cut at a word to [`TITLE_CHARS`]; `None` when nothing is left.
pub fn tidy(raw: &str) -> Option<String> {
    let line = raw.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = match line.split_once(':') {
        Some((label, rest)) if label.trim().eq_ignore_ascii_case("title") => rest,
        _ => line,
    };
    let marks: &[char] = &['"', '\'', '“', '”', '‘', '’', '*', '#', '`', '_'];
    let line = line.trim().trim_matches(marks).trim().trim_end_matches(['.', '!', ':', ';', ',']);
    let words: Vec<&str> =
        line.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect();
    let mut title = String::new();
    for word in words {
        let next =
            if title.is_empty() { word.chars().count() } else { title.chars().count() + 1 + word.chars().count() };
        if next > TITLE_CHARS.min(TITLE_MAX) {
            break;
        }
        if !title.is_empty() {
            title.push(' ');
        }
        title.push_str(word);
    }
    (!title.is_empty()).then_some(title)
}

#[cfg(test)]
mod tests {
    use super::tidy;

    #[test]
    fn small_models_chatter_is_cut_down_to_the_title() {
        assert_eq!(tidy("Lisbon by train").as_deref(), Some("Lisbon by train"));
        assert_eq!(tidy("\n  Title: \"Lisbon by Train.\"\nHope this helps!").as_deref(), Some("Lisbon by Train"));
        assert_eq!(tidy("**Expense   claims**").as_deref(), Some("Expense claims"));
        assert_eq!(tidy("   \n\n").as_deref(), None);
        assert_eq!(tidy("\"\"").as_deref(), None);
        let long = "word ".repeat(40);
        let cut = tidy(&long).unwrap();
        assert!(cut.chars().count() <= 80 && cut.ends_with("word") && !cut.ends_with(' '), "{cut}");
    }
}
