//! What can go wrong loading or running the local model.

use std::path::PathBuf;

use colloquy_providers::{ErrorClass, ProviderError};

/// A failure of the local model.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The model file is not in the models directory.
    #[error("the local model {} is missing: run scripts/models.sh to fetch it", path.display())]
    ModelMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The model file could not be read.
    #[error("could not read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The GGUF metadata lacks something the model needs, or holds it in an unexpected form.
    #[error("GGUF metadata: {0}")]
    Metadata(String),
    /// candle failed (reading tensors, requantising, running the model, sampling).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tokenizer could not be built, or could not encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template: {0}")]
    Template(#[from] minijinja::Error),
    /// The prompt alone fills the context window: there is no room for an answer.
    #[error("the prompt is {prompt_tokens} tokens; the context window is {context_window}")]
    PromptTooLong {
        /// Tokens of the rendered prompt.
        prompt_tokens: usize,
        /// The model's context window.
        context_window: usize,
    },
    /// The blocking generation task panicked or was cancelled by the runtime.
    #[error("the generation task failed: {0}")]
    Task(String),
}

impl From<LocalError> for ProviderError {
    fn from(error: LocalError) -> Self {
        let class = match &error {
            LocalError::PromptTooLong { .. } => ErrorClass::BadRequest,
            LocalError::ModelMissing { .. } | LocalError::Io { .. } => ErrorClass::NotFound,
            LocalError::Metadata(_)
            | LocalError::Candle(_)
            | LocalError::Tokenizer(_)
            | LocalError::Template(_)
            | LocalError::Task(_) => ErrorClass::ServerError,
        };
        ProviderError::new(class, error.to_string())
    }
}
