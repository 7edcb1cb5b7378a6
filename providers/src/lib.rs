//! AI model providers behind one streaming trait: OpenAI-compatible chat completions
//! (through `async-openai`), Anthropic's Messages API, and (in `colloquy-local`) the local
//! model run with candle. The [`router`](crate) picks a provider for a model, retries,
//! falls back before the first token and keeps a circuit breaker per provider.
//!
//! Embeddings sit behind the [`Embedder`] trait: any OpenAI-compatible embeddings API here
//! ([`OpenAiEmbedder`]), the local all-MiniLM-L6-v2 in `colloquy-local`.
//!
//! Cancel is uniform: dropping a [`ChatStream`] stops the upstream work (an HTTP provider's
//! connection is closed, the local model's generation loop stops at its next token).

pub mod anthropic;
pub mod embeddings;
mod http;
pub mod openai;
pub mod router;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tokens;

pub use anthropic::Anthropic;
pub use embeddings::{Embedder, OpenAiEmbedder};
pub use openai::OpenAiCompatible;
pub use router::{http_providers, Attempt, AttemptOutcome, ModelInfo, RouteFailure, RoutedReply, Router, RouterError};

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};

/// Who said a message of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The system prompt.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

/// One message of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` saying `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// Sampling parameters of a reply; `None` leaves the provider's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
}

/// One streaming chat request to one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The provider's own name of the model (`gpt-4o-mini`, `claude-3-5-haiku-latest`).
    pub model: String,
    /// The prompt, system message first when there is one.
    pub messages: Vec<ChatMessage>,
    /// Sampling parameters.
    pub parameters: Parameters,
}

/// Tokens a call consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished its answer (or hit a stop sequence).
    Stop,
    /// `max_tokens` (or the context window) was reached.
    Length,
    /// The provider filtered the content.
    ContentFilter,
    /// Anything else the provider said, as it said it.
    Other(String),
}

/// One item of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// More text.
    Delta(String),
    /// Token counts (cumulative: a later `Usage` replaces an earlier one).
    Usage(Usage),
    /// The end of the reply. Nothing follows it.
    Finished(FinishReason),
}

/// How a provider call failed, as far as retrying and fallback care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// 429.
    RateLimited,
    /// The provider says it is overloaded (Anthropic `overloaded_error`, 529, 503).
    Overloaded,
    /// Another 5xx.
    ServerError,
    /// No connection within the connect timeout, or no first token within its timeout.
    Timeout,
    /// The connection failed or was cut (refused, reset, stream ended early).
    Connection,
    /// The provider refused the request itself (400, 413, 422).
    BadRequest,
    /// The key was refused (401, 403).
    Auth,
    /// The model or route does not exist (404).
    NotFound,
    /// The circuit breaker skipped this provider without calling it.
    CircuitOpen,
    /// The provider answered something we could not read.
    Protocol,
}

impl ErrorClass {
    /// Whether the same call may succeed if tried again (after a backoff).
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Overloaded | Self::ServerError | Self::Timeout | Self::Connection)
    }
}

/// A failed provider call.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{class:?}: {message}")]
pub struct ProviderError {
    /// What kind of failure.
    pub class: ErrorClass,
    /// What the provider (or the connection) said; never holds a key.
    pub message: String,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    /// The provider's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// A failure of `class` saying `message`.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into(), status: None, retry_after: None }
    }
}

/// A streamed reply. Dropping it cancels the upstream call.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamItem, ProviderError>> + Send>>;

/// A model provider: one configured endpoint (an OpenAI-compatible server, Anthropic, the
/// local model).
#[async_trait::async_trait]
pub trait ChatProvider: Send + Sync {
    /// The implementation (`openai`, `anthropic`, `local`), for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Starts a streamed reply. Returns once the provider accepted the request (the HTTP
    /// status is known); text arrives on the stream.
    async fn stream_chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError>;

    /// Tokens `messages` take in `model`'s prompt, counted with the model's own tokenizer,
    /// when this provider knows it (`None`: the caller estimates).
    fn count_tokens(&self, model: &str, messages: &[ChatMessage]) -> Option<usize> {
        let _ = (model, messages);
        None
    }
}

/// A provider entry that could not be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderBuildError {
    /// A configured header name or value is not a valid HTTP header (the value is not
    /// repeated: it may be a secret).
    #[error("provider `{provider}`: header `{header}` is not a valid HTTP header")]
    InvalidHeader {
        /// The provider entry.
        provider: String,
        /// The header's name.
        header: String,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("provider `{provider}`: cannot build its HTTP client: {message}")]
    Client {
        /// The provider entry.
        provider: String,
        /// What went wrong.
        message: String,
    },
}
