//! Assistant replies as they are generated: the SSE stream of one reply (OpenAI's
//! `chat.completion.chunk` format) and cancelling a reply.

use actix_web::{web, HttpRequest, HttpResponse};
use colloquy_infra::event_store;
use colloquy_infra::reply_streams::{EntryId, StreamEntry, StreamUsage};
use colloquy_projections::messages::{self, status, Message};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::errors::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::streams::sse::{event_stream, ChunkFormatter, RelayRequest, SseRelay, Target};
use crate::streams::Active;

/// The answer to a cancel request.
#[derive(Serialize, ToSchema)]
pub struct CancelAccepted {
    /// The reply.
    pub reply_id: Uuid,
    /// Always `cancelling`: the worker generating the reply stops and records it.
    pub status: &'static str,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "Reply streams unavailable.");
    ApiError::new(ErrorCode::Unavailable, "reply streams are temporarily unavailable")
}

/// 404 unless `conversation_id` is the caller's (read from the event store: no projection
/// lag, and a stranger's conversation costs the same read as a missing one).
async fn ensure_conversation_owner(state: &AppState, user: Uuid, conversation_id: Uuid) -> Result<(), ApiError> {
    match event_store::conversation_owner(&state.pool, conversation_id).await {
        Ok(Some(owner)) if owner == user => Ok(()),
        Ok(_) => Err(ApiError::not_found("conversation")),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Where the reply's stream stands for the caller: its target must be this conversation
/// and the caller; before the stream exists, the conversation must be the caller's.
async fn check_target(state: &AppState, user: Uuid, conversation_id: Uuid, reply_id: Uuid) -> Result<Target, ApiError> {
    match state.streams.target(reply_id).await.map_err(unavailable)? {
        Some(t) if t.conversation_id == conversation_id && t.owner_id == user => Ok(Target::Verified),
        Some(_) => Err(ApiError::not_found("reply")),
        None => {
            ensure_conversation_owner(state, user, conversation_id).await?;
            Ok(Target::Pending)
        }
    }
}

/// The reply as the messages read model holds it, once it ended (its stream may have
/// expired: streams live `streams.ttl_after_finish_secs` after the end).
async fn ended_reply(
    state: &AppState,
    user: Uuid,
    conversation_id: Uuid,
    reply_id: Uuid,
) -> Result<Option<Message>, ApiError> {
    let reply = messages::reply(&state.pool, user, conversation_id, reply_id).await.map_err(ApiError::internal)?;
    Ok(reply.filter(|m| m.status != status::STREAMING))
}

/// The events of an ended reply whose stream expired, from its record: the whole text in
/// one chunk (or, for a client resuming with `Last-Event-ID`, only the ending), then `[DONE]`.
fn replay_ended(reply: &Message, resuming: bool) -> String {
    let usage = reply.usage.map_or(StreamUsage { input_tokens: 0, output_tokens: 0 }, |u| StreamUsage {
        input_tokens: u32::try_from(u.input_tokens).unwrap_or(u32::MAX),
        output_tokens: u32::try_from(u.output_tokens).unwrap_or(u32::MAX),
    });
    let ending = match reply.status.as_str() {
        status::FAILED => {
            let (code, message) = reply.error.as_ref().map_or_else(
                || ("reply_failed".to_string(), "the reply failed".to_string()),
                |e| (e.code.clone(), e.message.clone()),
            );
            StreamEntry::Failed { code, message }
        }
        status::CANCELLED => StreamEntry::Cancelled { usage },
        _ => StreamEntry::Completed {
            finish_reason: reply.finish_reason.clone().unwrap_or_else(|| "stop".into()),
            usage,
        },
    };
    let started =
        StreamEntry::Started { model: reply.model.clone().unwrap_or_default(), created: reply.created_at.timestamp() };
    let mut formatter = ChunkFormatter::new(reply.message_id);
    formatter.learn(&started);
    let mut out = String::new();
    if !resuming {
        formatter.write("0-1", &started, &mut out);
        if !reply.content.is_empty() {
            formatter.write("0-2", &StreamEntry::Delta { text: reply.content.clone() }, &mut out);
        }
    }
    formatter.write("0-3", &ending, &mut out);
    out
}

/// Streams a reply as Server-Sent Events: the text so far first, then live, each event with
/// its id; `Last-Event-ID` resumes after that event. Ends with `data: [DONE]`. A reply that
/// has not started is waited for (keepalive comments) up to `streams.wait_for_start_secs`,
/// then the stream ends with a `reply_not_found` error event.
#[utoipa::path(get, path = "/api/v1/conversations/{conversation_id}/replies/{reply_id}/stream", tag = "replies",
    params(("conversation_id" = Uuid, Path, description = "The conversation"), ("reply_id" = Uuid, Path, description = "The reply"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, content_type = "text/event-stream", description = "chat.completion.chunk events, then [DONE]"),
        (status = 404, body = crate::errors::ErrorBody, description = "no such conversation or reply for this user")),
    security(("bearer" = [])))]
pub async fn get_reply_stream(
    state: web::Data<AppState>,
    me: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, reply_id) = path.into_inner();
    let after = match req.headers().get("last-event-id") {
        None => None,
        Some(raw) => Some(raw.to_str().ok().and_then(|v| EntryId::parse(v.trim())).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidLastEventId, "Last-Event-ID must be an event id this stream sent")
        })?),
    };
    // Subscribed first: whatever is appended from now on arrives live, what came before is
    // read from the stream.
    let sub = state.hub.subscribe_reply(reply_id);
    let target = check_target(&state, me.user, conversation_id, reply_id).await?;
    if target == Target::Pending {
        if let Some(reply) = ended_reply(&state, me.user, conversation_id, reply_id).await? {
            return Ok(event_stream().body(replay_ended(&reply, after.is_some())));
        }
    }
    let request = RelayRequest {
        reply_id,
        conversation_id,
        owner: me.user,
        target,
        after,
        usage_chunk: true,
        cancel_on_disconnect: false,
    };
    let active = Active::new(&state.scrape.metrics.sse_streams_active);
    let relay = SseRelay::new(state.streams.clone(), sub, request, active);
    Ok(event_stream().streaming(relay.into_stream()))
}

/// Asks for a reply to be cancelled: the worker generating it stops and records the partial
/// text. 409 `reply_finished` once the reply ended.
#[utoipa::path(post, path = "/api/v1/conversations/{conversation_id}/replies/{reply_id}/cancel", tag = "replies",
    params(("conversation_id" = Uuid, Path, description = "The conversation"), ("reply_id" = Uuid, Path, description = "The reply")),
    responses((status = 202, body = CancelAccepted),
        (status = 404, body = crate::errors::ErrorBody, description = "no such conversation or reply for this user"),
        (status = 409, body = crate::errors::ErrorBody, description = "`reply_finished`: the reply has already ended")),
    security(("bearer" = [])))]
pub async fn post_cancel(
    state: web::Data<AppState>,
    me: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, reply_id) = path.into_inner();
    ensure_conversation_owner(&state, me.user, conversation_id).await?;
    let target = state.streams.target(reply_id).await.map_err(unavailable)?;
    if target.is_some_and(|t| t.conversation_id != conversation_id || t.owner_id != me.user) {
        return Err(ApiError::not_found("reply"));
    }
    let last = state.streams.last(reply_id).await.map_err(unavailable)?;
    let ended = match &last {
        Some((_, entry)) => entry.is_terminal(),
        // No stream: not started yet, or ended and expired.
        None => ended_reply(&state, me.user, conversation_id, reply_id).await?.is_some(),
    };
    if ended {
        return Err(ApiError::new(ErrorCode::ReplyFinished, "the reply has already ended"));
    }
    state.streams.request_cancel(reply_id).await.map_err(unavailable)?;
    Ok(HttpResponse::Accepted().json(CancelAccepted { reply_id, status: "cancelling" }))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/conversations/{conversation_id}/replies/{reply_id}/stream", "GET")
            .route(web::get().to(get_reply_stream)),
    )
    .service(
        super::resource("/conversations/{conversation_id}/replies/{reply_id}/cancel", "POST")
            .route(web::post().to(post_cancel)),
    );
}
