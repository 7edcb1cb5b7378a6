//! The chat template stored in the GGUF (`tokenizer.chat_template`), rendered with minijinja
//! the way Hugging Face's `apply_chat_template` renders it.

use colloquy_providers::{ChatMessage, Role};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::error::LocalError;

const NAME: &str = "chat";

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

#[derive(Serialize)]
struct Context<'a> {
    messages: Vec<&'a ChatMessage>,
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are offered to it as transformers does.
    pub(crate) fn new(source: String, bos_token: String, eos_token: String) -> Result<Self, LocalError> {
        let mut env = Environment::new();
        // transformers renders chat templates with these two on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(NAME, source)?;
        Ok(Self { env, bos_token, eos_token })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened. System messages go
    /// first, in their order: the template inserts a default system turn unless the very first
    /// message is one, and the conversation's own system prompt must win over that default.
    pub(crate) fn render(&self, messages: &[ChatMessage]) -> Result<String, LocalError> {
        let ordered: Vec<&ChatMessage> = messages
            .iter()
            .filter(|m| m.role == Role::System)
            .chain(messages.iter().filter(|m| m.role != Role::System))
            .collect();
        let context = Context {
            messages: ordered,
            add_generation_prompt: true,
            bos_token: &self.bos_token,
            eos_token: &self.eos_token,
        };
        Ok(self.env.get_template(NAME)?.render(context)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template, as its GGUF stores it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn template() -> ChatTemplate {
        ChatTemplate::new(SMOLLM2.to_owned(), "<|im_start|>".to_owned(), "<|im_end|>".to_owned()).unwrap()
    }

    #[test]
    fn the_conversations_system_prompt_comes_first_and_replaces_the_default() {
        let prompt = template()
            .render(&[
                ChatMessage::new(Role::User, "Hi"),
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage::new(Role::Assistant, "Hello."),
                ChatMessage::new(Role::User, "Bye"),
            ])
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn without_a_system_prompt_the_templates_default_is_used() {
        let prompt = template().render(&[ChatMessage::new(Role::User, "Hi")]).unwrap();
        assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{prompt}");
        assert!(prompt.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), "{prompt}");
    }
}
