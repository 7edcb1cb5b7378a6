//! Any OpenAI-compatible server (OpenAI, Azure OpenAI, Ollama, vLLM, LM Studio, OpenRouter)
//! through `async-openai`: its configuration (base URL, key, headers), its request and
//! chunk types for streamed chat completions, and its client for embeddings.
//!
//! Streamed chat completions are sent with `async-openai`'s request type and configuration
//! over our own `reqwest` client, and its `chat.completion.chunk` type is read from the SSE
//! body here, rather than through `Chat::create_stream`. In async-openai 0.35 (the last
//! release on reqwest 0.12) that method: drops the HTTP status and `Retry-After` of a failed
//! response (the router needs both); re-sends the request on its own after a transport
//! error (reqwest-eventsource reconnects), which would double an upstream call behind the
//! router's back; and reads the body in a spawned task that notices a dropped receiver
//! only when the next event arrives, so dropping the stream would not close a quiet
//! upstream connection (cancel must).

use std::time::Duration;

use async_openai::config::{Config, OpenAIConfig};
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestSystemMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, CreateChatCompletionStreamResponse, FinishReason as OpenAiFinishReason,
};
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use colloquy_infra::assistant_settings::ProviderSettings;
use eventsource_stream::Eventsource;
use futures::StreamExt;

use crate::http::{self, error_from_response, transport_error, SseError};
use crate::{
    ChatMessage, ChatProvider, ChatRequest, ChatStream, ErrorClass, FinishReason, ProviderBuildError, ProviderError,
    Role, StreamItem, Usage,
};

/// One configured OpenAI-compatible endpoint.
pub struct OpenAiCompatible {
    name: String,
    config: OpenAIConfig,
    http: reqwest::Client,
    client: async_openai::Client<OpenAIConfig>,
    /// OpenAI's own API wants `max_completion_tokens` (the o-series refuse `max_tokens`);
    /// other compatible servers know `max_tokens`.
    max_completion_tokens: bool,
}

impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("name", &self.name)
            .field("base_url", &colloquy_infra::settings::redact_url(self.config.api_base()))
            .finish_non_exhaustive()
    }
}

impl OpenAiCompatible {
    /// The endpoint of the provider entry `name`.
    pub fn new(name: &str, settings: &ProviderSettings) -> Result<Self, ProviderBuildError> {
        let base = settings.base_url.trim_end_matches('/').to_string();
        // Every field is set, so nothing comes from OPENAI_* environment variables.
        let config = OpenAIConfig::new()
            .with_api_base(base.clone())
            .with_api_key(settings.api_key.clone().unwrap_or_default())
            .with_org_id("")
            .with_project_id("");
        let mut headers = config.headers();
        if settings.api_key.is_none() {
            // Keyless servers (Ollama, vLLM); Azure sends its key as `api-key` instead.
            headers.remove(reqwest::header::AUTHORIZATION);
        }
        for value in headers.values_mut() {
            value.set_sensitive(true);
        }
        let http = http::client(name, settings, headers)?;
        // async-openai's own retries are off: retrying is the router's, which honours
        // Retry-After and falls back.
        let no_retries = backoff::ExponentialBackoffBuilder::new().with_max_elapsed_time(Some(Duration::ZERO)).build();
        let client = async_openai::Client::build(http.clone(), config.clone(), no_retries);
        let max_completion_tokens = base.contains("api.openai.com");
        Ok(Self { name: name.to_string(), config, http, client, max_completion_tokens })
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Embeddings of `inputs` by `model`, in the order of `inputs`, through async-openai's
    /// embeddings API.
    pub async fn embed(&self, model: &str, inputs: Vec<String>) -> Result<Vec<Vec<f32>>, ProviderError> {
        let count = inputs.len();
        let request = CreateEmbeddingRequest {
            model: model.to_string(),
            input: EmbeddingInput::StringArray(inputs),
            ..CreateEmbeddingRequest::default()
        };
        let response = self.client.embeddings().create(request).await.map_err(|e| map_openai_error(&e))?;
        let mut data = response.data;
        data.sort_by_key(|e| e.index);
        if data.len() != count || data.iter().enumerate().any(|(i, e)| e.index as usize != i) {
            return Err(ProviderError::new(
                ErrorClass::Protocol,
                format!("asked for {count} embeddings, got {} (indices not 0..{count})", data.len()),
            ));
        }
        Ok(data.into_iter().map(|e| e.embedding).collect())
    }

    // `max_tokens` is deprecated by OpenAI, and still what compatible servers read.
    #[allow(deprecated)]
    fn request(&self, request: &ChatRequest) -> Result<CreateChatCompletionRequest, ProviderError> {
        let messages: Vec<ChatCompletionRequestMessage> = request.messages.iter().map(message).collect();
        let mut args = CreateChatCompletionRequestArgs::default();
        args.model(request.model.clone())
            .messages(messages)
            .stream(true)
            .stream_options(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });
        if let Some(t) = request.parameters.temperature {
            args.temperature(t);
        }
        if let Some(p) = request.parameters.top_p {
            args.top_p(p);
        }
        let mut built = args.build().map_err(|e| ProviderError::new(ErrorClass::BadRequest, e.to_string()))?;
        if let Some(max) = request.parameters.max_tokens {
            match self.max_completion_tokens {
                true => built.max_completion_tokens = Some(max),
                false => built.max_tokens = Some(max),
            }
        }
        Ok(built)
    }
}

fn message(m: &ChatMessage) -> ChatCompletionRequestMessage {
    match m.role {
        Role::System => ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
            content: ChatCompletionRequestSystemMessageContent::Text(m.content.clone()),
            name: None,
        }),
        Role::User => ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
            content: ChatCompletionRequestUserMessageContent::Text(m.content.clone()),
            name: None,
        }),
        Role::Assistant => ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
            content: Some(ChatCompletionRequestAssistantMessageContent::Text(m.content.clone())),
            ..ChatCompletionRequestAssistantMessage::default()
        }),
    }
}

/// The message and class of an OpenAI error body (`{"error": {"message", "type", "code"}}`).
fn openai_error_body(body: &serde_json::Value) -> Option<(String, Option<ErrorClass>)> {
    let error = body.get("error")?;
    let message = match error {
        serde_json::Value::String(s) => s.clone(),
        _ => error.get("message")?.as_str()?.to_string(),
    };
    let class = match error.get("type").and_then(|t| t.as_str()) {
        Some("insufficient_quota") => Some(ErrorClass::Auth),
        _ => None,
    };
    Some((message, class))
}

/// An async-openai error (from the embeddings client) as a [`ProviderError`]. The 0.35
/// client keeps no status: 5xx bodies arrive as an `ApiError` without a type, others by
/// their `type`/`code`.
fn map_openai_error(error: &OpenAIError) -> ProviderError {
    match error {
        OpenAIError::Reqwest(e) => transport_error(e),
        OpenAIError::ApiError(api) => {
            let kind = api.r#type.as_deref().or(api.code.as_deref()).unwrap_or_default();
            let class = match kind {
                "" if api.param.is_none() => ErrorClass::ServerError,
                kind => class_of_error_type(kind),
            };
            ProviderError::new(class, http::truncate(&api.to_string()))
        }
        OpenAIError::JSONDeserialize(_, _) => {
            ProviderError::new(ErrorClass::Protocol, http::truncate(&error.to_string()))
        }
        other => ProviderError::new(ErrorClass::Protocol, http::truncate(&other.to_string())),
    }
}

/// The class of an OpenAI(-compatible) error `type` or `code`, for errors that come
/// without a usable status (inside a stream, or from the embeddings client).
fn class_of_error_type(kind: &str) -> ErrorClass {
    match kind {
        k if k.contains("rate_limit") || k == "requests" || k == "tokens" => ErrorClass::RateLimited,
        "insufficient_quota" | "invalid_api_key" | "authentication_error" | "permission_error" => ErrorClass::Auth,
        "model_not_found" | "not_found_error" => ErrorClass::NotFound,
        "overloaded_error" | "engine_overloaded" | "server_overloaded" => ErrorClass::Overloaded,
        "invalid_request_error" | "context_length_exceeded" => ErrorClass::BadRequest,
        _ => ErrorClass::ServerError,
    }
}

fn finish_reason(reason: OpenAiFinishReason) -> FinishReason {
    match reason {
        OpenAiFinishReason::Stop => FinishReason::Stop,
        OpenAiFinishReason::Length => FinishReason::Length,
        OpenAiFinishReason::ContentFilter => FinishReason::ContentFilter,
        OpenAiFinishReason::ToolCalls => FinishReason::Other("tool_calls".into()),
        OpenAiFinishReason::FunctionCall => FinishReason::Other("function_call".into()),
    }
}

#[async_trait::async_trait]
impl ChatProvider for OpenAiCompatible {
    fn kind(&self) -> &'static str {
        "openai"
    }

    async fn stream_chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        let body = self.request(&request)?;
        let response = self
            .http
            .post(self.config.url("/chat/completions"))
            .query(&self.config.query())
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        if !response.status().is_success() {
            return Err(error_from_response(response, openai_error_body).await);
        }
        let events = Box::pin(response.bytes_stream().eventsource());
        Ok(Box::pin(chunks(events)))
    }

    fn count_tokens(&self, model: &str, messages: &[ChatMessage]) -> Option<usize> {
        Some(crate::tokens::count_openai(model, messages))
    }
}

/// The items of an SSE body of `chat.completion.chunk`s. The finish reason is held back
/// until the stream ends, so the usage chunk that follows it (with `include_usage`) comes
/// first and `Finished` is the last item; a body that ends (or breaks) without a finish
/// reason ends in a `Connection` error.
fn chunks<S>(events: S) -> impl futures::Stream<Item = Result<StreamItem, ProviderError>> + Send
where
    S: futures::Stream<Item = Result<eventsource_stream::Event, SseError>> + Send + Unpin + 'static,
{
    struct State<S> {
        events: S,
        finish: Option<FinishReason>,
        done: bool,
        pending: std::collections::VecDeque<StreamItem>,
    }
    let state = State { events, finish: None, done: false, pending: Default::default() };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.pending.pop_front() {
                return Some((Ok(item), state));
            }
            if state.done {
                return None;
            }
            let event = match state.events.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    state.done = true;
                    return Some((Err(http::sse_error(e)), state));
                }
                None => {
                    state.done = true;
                    match state.finish.take() {
                        Some(reason) => return Some((Ok(StreamItem::Finished(reason)), state)),
                        None => {
                            let error =
                                ProviderError::new(ErrorClass::Connection, "the stream ended without a finish reason");
                            return Some((Err(error), state));
                        }
                    }
                }
            };
            let data = event.data.trim();
            if data == "[DONE]" {
                state.done = true;
                match state.finish.take() {
                    Some(reason) => return Some((Ok(StreamItem::Finished(reason)), state)),
                    None => {
                        let error = ProviderError::new(ErrorClass::Connection, "[DONE] without a finish reason");
                        return Some((Err(error), state));
                    }
                }
            }
            if data.is_empty() || event.event == "keepalive" {
                continue;
            }
            if event.event == "error" || data.starts_with("{\"error\"") {
                state.done = true;
                let value: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                let kind =
                    ["type", "code"].iter().find_map(|field| value["error"][field].as_str()).unwrap_or("server_error");
                let message = openai_error_body(&value).map_or_else(|| http::truncate(data), |(m, _)| m);
                return Some((Err(ProviderError::new(class_of_error_type(kind), message)), state));
            }
            let chunk: CreateChatCompletionStreamResponse = match serde_json::from_str(data) {
                Ok(chunk) => chunk,
                Err(e) => {
                    state.done = true;
                    let error = ProviderError::new(ErrorClass::Protocol, format!("unreadable chunk: {e}"));
                    return Some((Err(error), state));
                }
            };
            for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
                if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                    state.pending.push_back(StreamItem::Delta(text));
                }
                if let Some(reason) = choice.finish_reason {
                    state.finish = Some(finish_reason(reason));
                }
            }
            if let Some(usage) = chunk.usage {
                state.pending.push_back(StreamItem::Usage(Usage {
                    input_tokens: usage.prompt_tokens,
                    output_tokens: usage.completion_tokens,
                }));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read() {
        let body =
            serde_json::json!({"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}});
        assert_eq!(openai_error_body(&body), Some(("slow down".into(), None)));
        let quota = serde_json::json!({"error": {"message": "no money", "type": "insufficient_quota"}});
        assert_eq!(openai_error_body(&quota), Some(("no money".into(), Some(ErrorClass::Auth))));
        assert_eq!(openai_error_body(&serde_json::json!({"detail": "x"})), None);
    }
}
