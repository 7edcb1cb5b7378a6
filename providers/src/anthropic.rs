//! Anthropic's Messages API, spoken natively: `POST {base}/messages` with `stream: true`,
//! read as SSE (`message_start`, `content_block_delta`, `message_delta`, `message_stop`,
//! `ping`, `error`).

use colloquy_infra::assistant_settings::ProviderSettings;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Serialize;
use serde_json::Value;

use crate::http::{self, error_from_response, transport_error, SseError};
use crate::{
    ChatProvider, ChatRequest, ChatStream, ErrorClass, FinishReason, ProviderBuildError, ProviderError, Role,
    StreamItem, Usage,
};

/// The API version sent as `anthropic-version`.
pub const API_VERSION: &str = "2023-06-01";

/// Anthropic's API, used when an `anthropic` entry names no base URL of its own.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";

/// `max_tokens` when the caller gives none (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// One configured Anthropic endpoint.
pub struct Anthropic {
    name: String,
    url: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anthropic")
            .field("name", &self.name)
            .field("url", &colloquy_infra::settings::redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl Anthropic {
    /// The endpoint of the provider entry `name`.
    pub fn new(name: &str, settings: &ProviderSettings) -> Result<Self, ProviderBuildError> {
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        if let Some(key) = &settings.api_key {
            let mut value = HeaderValue::from_str(key).map_err(|_| ProviderBuildError::InvalidHeader {
                provider: name.to_string(),
                header: "x-api-key".into(),
            })?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
        let http = http::client(name, settings, headers)?;
        // An entry that left `base_url` alone has the default of every entry, OpenAI's.
        let base = match settings.base_url.as_str() {
            "" => DEFAULT_BASE_URL,
            base if base == ProviderSettings::default().base_url => DEFAULT_BASE_URL,
            base => base,
        };
        let url = format!("{}/messages", base.trim_end_matches('/'));
        Ok(Self { name: name.to_string(), url, http })
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Message<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

fn body(request: &ChatRequest) -> MessagesRequest<'_> {
    let system: Vec<&str> =
        request.messages.iter().filter(|m| m.role == Role::System).map(|m| m.content.as_str()).collect();
    let messages = request
        .messages
        .iter()
        .filter_map(|m| match m.role {
            Role::System => None,
            Role::User => Some(Message { role: "user", content: &m.content }),
            Role::Assistant => Some(Message { role: "assistant", content: &m.content }),
        })
        .collect();
    MessagesRequest {
        model: &request.model,
        max_tokens: request.parameters.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        stream: true,
        temperature: request.parameters.temperature,
        top_p: request.parameters.top_p,
    }
}

/// The class of an Anthropic error type.
pub fn class_of_error_type(kind: &str) -> Option<ErrorClass> {
    Some(match kind {
        "overloaded_error" => ErrorClass::Overloaded,
        "rate_limit_error" => ErrorClass::RateLimited,
        "api_error" => ErrorClass::ServerError,
        "timeout_error" => ErrorClass::Timeout,
        "invalid_request_error" | "request_too_large" => ErrorClass::BadRequest,
        "authentication_error" | "permission_error" | "billing_error" => ErrorClass::Auth,
        "not_found_error" => ErrorClass::NotFound,
        _ => return None,
    })
}

/// The message and class of an Anthropic error body
/// (`{"type": "error", "error": {"type": "overloaded_error", "message": ...}}`).
fn error_body(body: &Value) -> Option<(String, Option<ErrorClass>)> {
    let error = body.get("error")?;
    let kind = error.get("type").and_then(Value::as_str).unwrap_or_default();
    let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
    Some((format!("{kind}: {message}"), class_of_error_type(kind)))
}

fn stop_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

#[async_trait::async_trait]
impl ChatProvider for Anthropic {
    fn kind(&self) -> &'static str {
        "anthropic"
    }

    async fn stream_chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        let response = self.http.post(&self.url).json(&body(&request)).send().await.map_err(|e| transport_error(&e))?;
        if !response.status().is_success() {
            return Err(error_from_response(response, error_body).await);
        }
        Ok(Box::pin(events(Box::pin(response.bytes_stream().eventsource()))))
    }
}

/// The items of a Messages API SSE body. A body that ends (or breaks) before
/// `message_stop` ends in a `Connection` error.
fn events<S>(events: S) -> impl futures::Stream<Item = Result<StreamItem, ProviderError>> + Send
where
    S: futures::Stream<Item = Result<eventsource_stream::Event, SseError>> + Send + Unpin + 'static,
{
    struct State<S> {
        events: S,
        usage: Usage,
        finish: Option<FinishReason>,
        done: bool,
    }
    let state = State { events, usage: Usage::default(), finish: None, done: false };
    futures::stream::unfold(state, |mut state| async move {
        loop {
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
                    let error = ProviderError::new(ErrorClass::Connection, "the stream ended before message_stop");
                    return Some((Err(error), state));
                }
            };
            let data: Value = match serde_json::from_str(&event.data) {
                Ok(data) => data,
                Err(_) if event.event == "ping" => continue,
                Err(e) => {
                    state.done = true;
                    let error =
                        ProviderError::new(ErrorClass::Protocol, format!("unreadable `{}` event: {e}", event.event));
                    return Some((Err(error), state));
                }
            };
            let kind = data.get("type").and_then(Value::as_str).unwrap_or(event.event.as_str()).to_string();
            match kind.as_str() {
                "message_start" => {
                    let usage = &data["message"]["usage"];
                    state.usage.input_tokens = token_count(&usage["input_tokens"]).unwrap_or(0);
                    state.usage.output_tokens = token_count(&usage["output_tokens"]).unwrap_or(0);
                    return Some((Ok(StreamItem::Usage(state.usage)), state));
                }
                "content_block_delta" => {
                    let delta = &data["delta"];
                    if delta["type"] == "text_delta" {
                        if let Some(text) = delta["text"].as_str().filter(|t| !t.is_empty()) {
                            return Some((Ok(StreamItem::Delta(text.to_string())), state));
                        }
                    }
                }
                "message_delta" => {
                    if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                        state.finish = Some(stop_reason(reason));
                    }
                    let usage = &data["usage"];
                    if let Some(input) = token_count(&usage["input_tokens"]) {
                        state.usage.input_tokens = input;
                    }
                    if let Some(output) = token_count(&usage["output_tokens"]) {
                        state.usage.output_tokens = output;
                        return Some((Ok(StreamItem::Usage(state.usage)), state));
                    }
                }
                "message_stop" => {
                    state.done = true;
                    let reason = state.finish.take().unwrap_or(FinishReason::Stop);
                    return Some((Ok(StreamItem::Finished(reason)), state));
                }
                "error" => {
                    state.done = true;
                    let (message, class) = error_body(&data).unwrap_or_else(|| (http::truncate(&event.data), None));
                    let error = ProviderError::new(class.unwrap_or(ErrorClass::ServerError), message);
                    return Some((Err(error), state));
                }
                // ping, content_block_start, content_block_stop, and event types added later.
                _ => {}
            }
        }
    })
}

fn token_count(value: &Value) -> Option<u32> {
    value.as_u64().map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatMessage, Parameters};

    #[test]
    fn the_system_prompt_goes_into_system_and_max_tokens_is_always_sent() {
        let request = ChatRequest {
            model: "claude-3-5-haiku-latest".into(),
            messages: vec![
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage::new(Role::User, "hi"),
                ChatMessage::new(Role::Assistant, "hello"),
                ChatMessage::new(Role::User, "again"),
            ],
            parameters: Parameters::default(),
        };
        let json = serde_json::to_value(body(&request)).unwrap();
        assert_eq!(json["system"], "Be brief.");
        assert_eq!(json["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(json["stream"], true);
        assert_eq!(json["messages"].as_array().unwrap().len(), 3);
        assert_eq!(json["messages"][0], serde_json::json!({"role": "user", "content": "hi"}));
        assert!(json.get("temperature").is_none());
    }

    #[test]
    fn an_entry_without_a_base_url_talks_to_anthropic() {
        let settings = ProviderSettings {
            kind: colloquy_infra::assistant_settings::ProviderKind::Anthropic,
            ..Default::default()
        };
        assert_eq!(Anthropic::new("claude", &settings).unwrap().url, "https://api.anthropic.com/v1/messages");
        let own = ProviderSettings { base_url: "http://127.0.0.1:9/v1/".into(), ..settings };
        assert_eq!(Anthropic::new("claude", &own).unwrap().url, "http://127.0.0.1:9/v1/messages");
    }

    #[test]
    fn error_types_have_classes() {
        assert_eq!(class_of_error_type("overloaded_error"), Some(ErrorClass::Overloaded));
        assert_eq!(class_of_error_type("rate_limit_error"), Some(ErrorClass::RateLimited));
        assert_eq!(class_of_error_type("api_error"), Some(ErrorClass::ServerError));
        assert_eq!(class_of_error_type("invalid_request_error"), Some(ErrorClass::BadRequest));
        assert_eq!(class_of_error_type("something_new"), None);
    }
}
