//! `POST /v1/chat/completions`, OpenAI's chat completions over colloquy: the request is
//! recorded as a new conversation (`origin: api`) whose last user message the assistant
//! answers through the model's routes, fallbacks, quotas and usage ledger; the answer is
//! that reply, streamed (`stream: true`, `chat.completion.chunk` events, then
//! `data: [DONE]`) or whole (`chat.completion`).
//!
//! Supported: text messages (`system`, `developer`, `user`, `assistant`; content as a string
//! or as text parts), `n` = 1, `max_tokens` / `max_completion_tokens`, `temperature`,
//! `top_p`, `stream`, `stream_options.include_usage`. Refused with 400 and the field named:
//! tools and tool or function messages, non-text parts, `n` > 1, a last message that is not
//! the user's. Other fields OpenAI defines (`user`, `seed`, `stop`, penalties, ...) are
//! accepted and not used. A client that goes away before its reply ended cancels it.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use colloquy_commands::api_chats::{ApiChat, Turn, TurnRole};
use colloquy_domain::conversation::ReplyParameters;
use colloquy_infra::reply_streams::StreamEntry;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::OpenAiError;
use crate::auth::ApiCaller;
use crate::errors::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::streams::collect::{collect, CollectError};
use crate::streams::sse::{event_stream, CancelOnDrop, RelayRequest, SseRelay, Target};
use crate::streams::Active;

/// Largest request body: a whole conversation travels in every request.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The request (the fields colloquy reads; others are ignored).
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<RequestMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    functions: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RequestMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    /// The text: a string, or text parts joined (OpenAI concatenates them too).
    fn text(self) -> Result<String, OpenAiError> {
        match self {
            Self::Text(text) => Ok(text),
            Self::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(OpenAiError::invalid(
                                "messages",
                                format!("content parts of type `{kind}` are not supported; send text"),
                            ))
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

/// What the request asks for, checked.
struct Parsed {
    chat: ApiChat,
    stream: bool,
    include_usage: bool,
}

fn parse(body: &[u8], api_key_id: Option<uuid::Uuid>) -> Result<Parsed, OpenAiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| OpenAiError::invalid("body", format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(OpenAiError::invalid("body", "the body must be a JSON object"));
    }
    let request: ChatRequest =
        serde_json::from_value(value).map_err(|e| OpenAiError::invalid("body", format!("invalid request: {e}")))?;
    if request.n.is_some_and(|n| n != 1) {
        return Err(OpenAiError::invalid("n", "only n = 1 is supported"));
    }
    if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(OpenAiError::invalid("tools", "tools are not supported"));
    }
    if request.functions.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(OpenAiError::invalid("functions", "functions are not supported"));
    }
    if request.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(OpenAiError::invalid("temperature", "temperature must be between 0 and 2"));
    }
    if request.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(OpenAiError::invalid("top_p", "top_p must be between 0 and 1"));
    }
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    if max_tokens == Some(0) {
        return Err(OpenAiError::invalid("max_tokens", "max_tokens must be at least 1"));
    }
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for message in request.messages {
        if message.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(OpenAiError::invalid("messages", "tool calls are not supported"));
        }
        let role = match message.role.as_str() {
            "system" | "developer" => None,
            "user" => Some(TurnRole::User),
            "assistant" => Some(TurnRole::Assistant),
            other => {
                return Err(OpenAiError::invalid("messages", format!("messages of role `{other}` are not supported")))
            }
        };
        let text = message.content.map(Content::text).transpose()?.unwrap_or_default();
        match role {
            None => system.push(text),
            Some(role) => turns.push(Turn { role, content: text }),
        }
    }
    let last = turns.pop().filter(|t| t.role == TurnRole::User).ok_or_else(|| {
        OpenAiError::invalid("messages", "the last message (other than system messages) must be the user's")
    })?;
    let system = system.join("\n\n");
    Ok(Parsed {
        chat: ApiChat {
            model: request.model,
            system_prompt: (!system.trim().is_empty()).then_some(system),
            turns,
            content: last.content,
            parameters: ReplyParameters { max_tokens, temperature: request.temperature, top_p: request.top_p },
            api_key_id,
        },
        stream: request.stream.unwrap_or(false),
        include_usage: request.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    })
}

/// Creates a chat completion.
pub async fn post_chat_completions(
    state: web::Data<AppState>,
    me: ApiCaller,
    payload: web::Payload,
) -> Result<HttpResponse, OpenAiError> {
    let body = super::read_body(payload, BODY_LIMIT).await?;
    let parsed = parse(&body, me.api_key_id)?;
    let model = parsed.chat.model.clone();
    let accepted = match state.commands.start_api_chat(&me.caller, parsed.chat).await {
        Ok(answer) => answer.value,
        Err(e) => return Err(refused(ApiError::from(e), &model)),
    };
    let reply_id = accepted.reply_id;
    // Subscribed before the worker can have started: nothing it appends is missed.
    let sub = state.hub.subscribe_reply(reply_id);
    if parsed.stream {
        let request = RelayRequest {
            reply_id,
            conversation_id: accepted.conversation_id,
            owner: me.user,
            // The conversation was made for this caller a moment ago.
            target: Target::Verified,
            after: None,
            usage_chunk: parsed.include_usage,
            cancel_on_disconnect: true,
        };
        let active = Active::new(&state.scrape.metrics.sse_streams_active);
        let relay = SseRelay::new(state.streams.clone(), sub, request, active);
        return Ok(event_stream()
            .insert_header(("X-Colloquy-Conversation-Id", accepted.conversation_id.to_string()))
            .streaming(relay.into_stream()));
    }
    let settings = state.streams.settings();
    let (wait, timeout) =
        (Duration::from_secs(settings.wait_for_start_secs), Duration::from_secs(settings.completion_timeout_secs));
    let mut guard = CancelOnDrop::new(state.streams.clone(), reply_id);
    let collected = collect(&state.streams, sub, reply_id, wait, timeout).await;
    if matches!(collected, Ok(_) | Err(CollectError::NotStarted)) {
        // Ended, or never started (nothing to stop; the request is answered as failed).
        guard.disarm();
    }
    let reply = match collected {
        Ok(reply) => reply,
        Err(CollectError::Redis(e)) => return Err(ApiError::internal(e).into()),
        Err(e) => {
            return Err(OpenAiError::Reply {
                status: actix_web::http::StatusCode::GATEWAY_TIMEOUT,
                kind: "server_error",
                code: "timeout".into(),
                message: format!("{e}; the reply was cancelled"),
            })
        }
    };
    let (finish_reason, usage) = match &reply.end {
        StreamEntry::Completed { finish_reason, usage } => (finish_reason.clone(), *usage),
        StreamEntry::Cancelled { usage } => ("cancelled".to_string(), *usage),
        StreamEntry::Failed { code, message } => return Err(failed(code, message)),
        StreamEntry::Started { .. } | StreamEntry::Delta { .. } => {
            return Err(ApiError::internal("a reply ended without an ending").into())
        }
    };
    Ok(HttpResponse::Ok().insert_header(("X-Colloquy-Conversation-Id", accepted.conversation_id.to_string())).json(
        json!({
            "id": format!("chatcmpl-{reply_id}"),
            "object": "chat.completion",
            "created": reply.created,
            "model": reply.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": null},
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
            },
            "system_fingerprint": null,
        }),
    ))
}

/// A refusal of the use case, about the request field it concerns.
fn refused(e: ApiError, model: &str) -> OpenAiError {
    match e.code() {
        ErrorCode::UnknownModel => OpenAiError::model_not_found(model),
        ErrorCode::InvalidModel => OpenAiError::from(e).about("model"),
        ErrorCode::InvalidMessage
        | ErrorCode::InvalidImport
        | ErrorCode::InvalidSystemPrompt
        | ErrorCode::ControlCharacter
        | ErrorCode::InvisibleCharacter => OpenAiError::from(e).about("messages"),
        _ => e.into(),
    }
}

/// The answer to a reply that failed: the token quota spent while it waited is a 429
/// (`insufficient_quota`), a prompt longer than the model's window a 400
/// (`context_length_exceeded`), anything else a 502 naming the failure.
fn failed(code: &str, message: &str) -> OpenAiError {
    use actix_web::http::StatusCode;
    let (status, kind, code) = match code {
        "token_quota_exceeded" => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", "insufficient_quota"),
        "prompt_too_long" => (StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded"),
        other => (StatusCode::BAD_GATEWAY, "server_error", other),
    };
    OpenAiError::Reply { status, kind, code: code.to_string(), message: message.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: Value) -> Result<Parsed, OpenAiError> {
        parse(body.to_string().as_bytes(), None)
    }

    fn param(e: OpenAiError) -> Option<&'static str> {
        match e {
            OpenAiError::Api { param, .. } => param,
            OpenAiError::Reply { .. } => None,
        }
    }

    #[test]
    fn a_conversation_becomes_a_system_prompt_earlier_turns_and_the_message_to_answer() {
        let p = parsed(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "!"}]},
                {"role": "developer", "content": "Answer in French."},
                {"role": "user", "content": [{"type": "text", "text": "How are you?"}]}
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 50,
            "temperature": 0.2,
            "user": "someone",
            "seed": 7
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(p.stream && p.include_usage);
        assert_eq!(p.chat.system_prompt.as_deref(), Some("Be brief.\n\nAnswer in French."));
        assert_eq!(
            p.chat.turns,
            vec![
                Turn { role: TurnRole::User, content: "Hi".into() },
                Turn { role: TurnRole::Assistant, content: "Hello!".into() }
            ]
        );
        assert_eq!(p.chat.content, "How are you?");
        assert_eq!(p.chat.parameters, ReplyParameters { max_tokens: Some(50), temperature: Some(0.2), top_p: None });
        let plain = parsed(json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 9, "max_tokens": 50}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!plain.stream && !plain.include_usage);
        assert_eq!(plain.chat.system_prompt, None);
        assert_eq!(plain.chat.parameters.max_tokens, Some(9), "max_completion_tokens wins, as with OpenAI");
    }

    #[test]
    fn what_colloquy_cannot_do_is_refused_naming_the_field() {
        let user = json!([{"role": "user", "content": "Hi"}]);
        let cases = [
            (json!({"model": "m", "messages": user, "n": 2}), "n"),
            (json!({"model": "m", "messages": user, "tools": [{"type": "function"}]}), "tools"),
            (json!({"model": "m", "messages": user, "temperature": 3.0}), "temperature"),
            (json!({"model": "m", "messages": user, "top_p": 1.5}), "top_p"),
            (json!({"model": "m", "messages": user, "max_tokens": 0}), "max_tokens"),
            (json!({"model": "m", "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}), "messages"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
                "messages",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}),
                "messages",
            ),
            (json!({"model": "m", "messages": [{"role": "system", "content": "only a system prompt"}]}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (json!({"messages": user}), "body"),
            (json!(["not", "an", "object"]), "body"),
        ];
        for (body, field) in cases {
            let refused = parsed(body.clone()).err().unwrap_or_else(|| panic!("accepted {body}"));
            assert_eq!(param(refused), Some(field), "{body}");
        }
        assert_eq!(param(parse(b"{not json", None).err().unwrap()), Some("body"));
    }

    #[test]
    fn failed_replies_answer_with_openais_statuses() {
        let status = |code| actix_web::ResponseError::status_code(&failed(code, "m")).as_u16();
        assert_eq!(status("token_quota_exceeded"), 429);
        assert_eq!(status("prompt_too_long"), 400);
        assert_eq!(status("provider_error"), 502);
    }
}
