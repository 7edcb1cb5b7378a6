//! Counting prompt tokens with OpenAI's tokenizers (`tiktoken-rs`): `o200k_base` for the
//! GPT-4o, GPT-4.1, GPT-5 and o-series models, `cl100k_base` for the others (and as the
//! estimate for models whose tokenizer is unknown).

use tiktoken_rs::CoreBPE;

use crate::ChatMessage;

/// Tokens every message adds around its content (`<|start|>role ... <|end|>`), and the
/// tokens that prime the reply, as OpenAI documents them for its chat models.
const PER_MESSAGE: usize = 3;
const PER_ROLE: usize = 1;
const REPLY_PRIMING: usize = 3;

/// Whether `model` (an OpenAI model name) uses `o200k_base`.
pub fn uses_o200k(model: &str) -> bool {
    let model = model.rsplit('/').next().unwrap_or(model).to_ascii_lowercase();
    ["gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "o1", "o3", "o4"]
        .iter()
        .any(|prefix| model.starts_with(prefix))
}

fn encoder(model: &str) -> &'static CoreBPE {
    match uses_o200k(model) {
        true => tiktoken_rs::o200k_base_singleton(),
        false => tiktoken_rs::cl100k_base_singleton(),
    }
}

/// Tokens of `messages` as a chat prompt for the OpenAI model `model`, reply priming included.
pub fn count_openai(model: &str, messages: &[ChatMessage]) -> usize {
    count_with(encoder(model), messages)
}

/// An estimate of the tokens of `messages` for a model whose tokenizer is unknown
/// (`cl100k_base`, the same framing as OpenAI's).
pub fn estimate(messages: &[ChatMessage]) -> usize {
    count_with(tiktoken_rs::cl100k_base_singleton(), messages)
}

/// An estimate of the tokens of a plain text (no chat framing), with `cl100k_base`: what
/// OpenAI's embedding models count.
pub fn estimate_text(text: &str) -> usize {
    tiktoken_rs::cl100k_base_singleton().encode_ordinary(text).len()
}

fn count_with(bpe: &CoreBPE, messages: &[ChatMessage]) -> usize {
    messages.iter().map(|m| PER_MESSAGE + PER_ROLE + bpe.encode_ordinary(&m.content).len()).sum::<usize>()
        + REPLY_PRIMING
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    #[test]
    fn models_pick_their_encoding() {
        for model in ["gpt-4o-mini", "gpt-4.1", "o3-mini", "o1", "gpt-5", "azure/gpt-4o"] {
            assert!(uses_o200k(model), "{model}");
        }
        for model in ["gpt-4", "gpt-3.5-turbo", "llama3.2", "text-embedding-3-small"] {
            assert!(!uses_o200k(model), "{model}");
        }
    }

    #[test]
    fn chat_prompts_are_counted_with_the_framing() {
        let messages = [ChatMessage::new(Role::System, "You are terse."), ChatMessage::new(Role::User, "hello world")];
        // "You are terse." is 4 tokens and "hello world" 2 in both encodings.
        assert_eq!(count_openai("gpt-4o", &messages), 4 + 2 + 2 * 4 + 3);
        assert_eq!(count_openai("gpt-4", &messages), 4 + 2 + 2 * 4 + 3);
        assert_eq!(estimate(&[]), 3);
        let long = [ChatMessage::new(Role::User, "word ".repeat(100))];
        assert!(count_openai("gpt-4o", &long) > 100);
    }
}
