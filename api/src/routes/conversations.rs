//! Conversations and their messages: commands, list and detail queries, and the audit trail.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::DateTime;
use colloquy_domain::conversation::{ConversationCommand, ConversationKind};
use colloquy_domain::Conversation;
use colloquy_infra::event_log;
use colloquy_projections::conversations::{self, PageCursor};
use colloquy_projections::{cache, messages};
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{await_version, Freshness};
use crate::auth::AuthUser;
use crate::body::parse;
use crate::errors::{ApiError, ErrorBody};
use crate::idempotency;
use crate::requests::command_meta;
use crate::state::AppState;

/// Model used when neither the request nor the user's preferences name one.
pub const DEFAULT_MODEL: &str = "offline";
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

/// Start a conversation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Client-chosen id (optional; makes retries safe without an Idempotency-Key).
    pub id: Option<Uuid>,
    /// The title.
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    /// `chat` (default) or `knowledge`.
    #[serde(default)]
    #[schema(value_type = Option<KindDoc>)]
    pub kind: Option<ConversationKind>,
    /// The model; defaults to the user's default model.
    #[schema(min_length = 1, max_length = 200)]
    pub model: Option<String>,
    /// A system prompt; defaults to the user's default system prompt.
    #[schema(min_length = 1, max_length = 20000)]
    pub system_prompt: Option<String>,
}

/// The conversation types, as the API spells them.
#[derive(ToSchema)]
#[schema(as = ConversationKind)]
#[allow(non_camel_case_types, dead_code)]
pub enum KindDoc {
    /// A plain chat with a model.
    chat,
    /// Answers grounded in the owner's knowledge base.
    knowledge,
}

/// Rename a conversation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    /// The new title.
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
}

/// Post a message.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessageRequest {
    /// Client-chosen id (optional).
    pub id: Option<Uuid>,
    /// The text.
    #[schema(min_length = 1, max_length = 32000)]
    pub content: String,
}

/// List filters and paging.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Archived conversations instead of active ones.
    #[serde(default)]
    pub archived: bool,
    /// Page size (1..=100, default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// With `conversation_id`: wait until the list reflects this version of that conversation.
    pub min_version: Option<i64>,
    /// The conversation `min_version` refers to.
    pub conversation_id: Option<Uuid>,
}

/// Message paging.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct MessagesQuery {
    /// Only messages after this sequence.
    #[serde(default)]
    pub after: i64,
    /// Page size (1..=100, default 20).
    pub limit: Option<i64>,
    /// Wait until the messages reflect this conversation version.
    pub min_version: Option<i64>,
}

fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::bad_request("invalid_limit", format!("limit must be between 1 and {MAX_PAGE}"))),
    }
}

fn encode_cursor(c: &conversations::ConversationSummary) -> String {
    format!("{}_{}", c.last_activity_at.timestamp_micros(), c.conversation_id.simple())
}

fn decode_cursor(raw: &str) -> Result<PageCursor, ApiError> {
    let invalid = || ApiError::bad_request("invalid_cursor", "the cursor is not one this API issued");
    let (micros, id) = raw.split_once('_').ok_or_else(invalid)?;
    let last_activity_at =
        DateTime::from_timestamp_micros(micros.parse().map_err(|_| invalid())?).ok_or_else(invalid)?;
    Ok(PageCursor { last_activity_at, conversation_id: id.parse().map_err(|_| invalid())? })
}

fn actor(user: AuthUser) -> String {
    format!("user:{}", user.0)
}

/// Starts a conversation.
#[utoipa::path(post, path = "/api/v1/conversations", tag = "conversations", request_body = StartRequest,
    responses((status = 201, body = ConversationAccepted), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn post_conversation(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    idempotency::once(&state, user.0, &req, &body, || async {
        let r: StartRequest = parse(body.clone())?;
        let (profile, _) = state.users.load(&user.0.to_string()).await?;
        let id = r.id.unwrap_or_else(Uuid::new_v4);
        let cmd = ConversationCommand::StartConversation {
            conversation_id: id,
            owner_id: user.0,
            title: r.title,
            kind: r.kind.unwrap_or_default(),
            model: r.model.or(profile.default_model).unwrap_or_else(|| DEFAULT_MODEL.into()),
            system_prompt: r.system_prompt.or(profile.system_prompt),
        };
        let committed = state.conversations.execute(&id.to_string(), cmd, &command_meta(&req, actor(user))).await?;
        Ok((StatusCode::CREATED, json!(ConversationAccepted { conversation_id: id, version: committed.version })))
    })
    .await
}

async fn simple_command(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    id: Uuid,
    body: Value,
    make: impl FnOnce(Value) -> Result<ConversationCommand, ApiError>,
) -> Result<HttpResponse, ApiError> {
    idempotency::once(&state, user.0, &req, &body, || async {
        let cmd = make(body.clone())?;
        let committed = state.conversations.execute(&id.to_string(), cmd, &command_meta(&req, actor(user))).await?;
        Ok((StatusCode::OK, json!(ConversationAccepted { conversation_id: id, version: committed.version })))
    })
    .await
}

/// Renames a conversation.
#[utoipa::path(patch, path = "/api/v1/conversations/{id}", tag = "conversations", request_body = RenameRequest,
    responses((status = 200, body = ConversationAccepted)), security(("bearer" = [])))]
pub async fn patch_conversation(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    id: web::Path<Uuid>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    simple_command(state, user, req, *id, body.into_inner(), |b| {
        let r: RenameRequest = parse(b)?;
        Ok(ConversationCommand::RenameConversation { actor_id: user.0, title: r.title })
    })
    .await
}

/// Archives a conversation.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/archive", tag = "conversations",
    responses((status = 200, body = ConversationAccepted)), security(("bearer" = [])))]
pub async fn post_archive(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    simple_command(state, user, req, *id, Value::Null, |_| {
        Ok(ConversationCommand::ArchiveConversation { actor_id: user.0 })
    })
    .await
}

/// Unarchives a conversation.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/unarchive", tag = "conversations",
    responses((status = 200, body = ConversationAccepted)), security(("bearer" = [])))]
pub async fn post_unarchive(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    simple_command(state, user, req, *id, Value::Null, |_| {
        Ok(ConversationCommand::UnarchiveConversation { actor_id: user.0 })
    })
    .await
}

/// Deletes a conversation.
#[utoipa::path(delete, path = "/api/v1/conversations/{id}", tag = "conversations",
    responses((status = 200, body = ConversationAccepted)), security(("bearer" = [])))]
pub async fn delete_conversation(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    simple_command(state, user, req, *id, Value::Null, |_| {
        Ok(ConversationCommand::DeleteConversation { actor_id: user.0 })
    })
    .await
}

/// Posts a user message.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", tag = "conversations", request_body = PostMessageRequest,
    responses((status = 201, body = MessageAccepted)), security(("bearer" = [])))]
pub async fn post_message(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    id: web::Path<Uuid>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = *id;
    let body = body.into_inner();
    idempotency::once(&state, user.0, &req, &body, || async {
        let r: PostMessageRequest = parse(body.clone())?;
        let message_id = r.id.unwrap_or_else(Uuid::new_v4);
        let cmd = ConversationCommand::PostUserMessage { actor_id: user.0, message_id, content: r.content };
        let committed = state.conversations.execute(&id.to_string(), cmd, &command_meta(&req, actor(user))).await?;
        Ok((
            StatusCode::CREATED,
            json!(MessageAccepted { conversation_id: id, message_id, version: committed.version }),
        ))
    })
    .await
}

/// Lists the user's conversations, newest activity first.
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations", params(ListQuery),
    responses((status = 200, body = ConversationPage)), security(("bearer" = [])))]
pub async fn get_conversations(
    state: web::Data<AppState>,
    user: AuthUser,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_size(q.limit)?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    match (q.min_version, q.conversation_id) {
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "min_version_needs_conversation_id",
                "on the list, min_version refers to the conversation named by conversation_id",
            ))
        }
        (min, Some(cid)) => await_version(&state, &[conversations::NAME], &cid.to_string(), min).await?,
        (None, None) => {}
    }
    // The hot first page comes from Redis, unless a particular version was asked for.
    let cache_name = format!("conversations:{}:{limit}", if q.archived { "archived" } else { "active" });
    let bypass = after.is_some() || q.min_version.is_some();
    let body = cache::get_or_load(&state.redis, user.0, &cache_name, bypass, || async {
        let items = conversations::list(&state.pool, user.0, q.archived, after, limit).await?;
        let next_cursor = (items.len() as i64 == limit).then(|| items.last().map(encode_cursor)).flatten();
        serde_json::to_string(&ConversationPage { items, next_cursor }).map_err(ApiError::internal)
    })
    .await?;
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

/// One conversation.
#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "conversations", params(Freshness),
    responses((status = 200, body = conversations::ConversationSummary)), security(("bearer" = [])))]
pub async fn get_conversation(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    q: web::Query<Freshness>,
) -> Result<HttpResponse, ApiError> {
    await_version(&state, &[conversations::NAME], &id.to_string(), q.min_version).await?;
    let c = conversations::find(&state.pool, user.0, *id).await?.ok_or(ApiError::NotFound("conversation"))?;
    Ok(HttpResponse::Ok().json(c))
}

/// A conversation's messages, in order.
#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages", tag = "conversations", params(MessagesQuery),
    responses((status = 200, body = MessagePage)), security(("bearer" = [])))]
pub async fn get_messages(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    q: web::Query<MessagesQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_size(q.limit)?;
    await_version(&state, &[conversations::NAME, messages::NAME], &id.to_string(), q.min_version).await?;
    // Ownership comes from the conversations read model: another user's id is a 404.
    conversations::find(&state.pool, user.0, *id).await?.ok_or(ApiError::NotFound("conversation"))?;
    let items = messages::list(&state.pool, user.0, *id, q.after, limit).await?;
    Ok(HttpResponse::Ok().json(MessagePage { items }))
}

/// A command on a conversation was accepted.
#[derive(Serialize, ToSchema)]
pub struct ConversationAccepted {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Its version after the command; pass it as `min_version` to queries.
    pub version: i64,
}

/// A message was posted.
#[derive(Serialize, ToSchema)]
pub struct MessageAccepted {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The new message.
    pub message_id: Uuid,
    /// The conversation's version after the post.
    pub version: i64,
}

/// A page of conversations.
#[derive(Serialize, ToSchema)]
pub struct ConversationPage {
    /// The conversations, newest activity first.
    pub items: Vec<conversations::ConversationSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of messages.
#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    /// The messages, in order.
    pub items: Vec<messages::Message>,
}

/// One event of the audit trail.
#[derive(Serialize, ToSchema)]
pub struct AuditEvent<'a> {
    /// The event id (the CloudEvents `id`).
    pub event_id: Uuid,
    /// The conversation version it produced.
    pub sequence: i64,
    /// Its type.
    pub event_type: &'a str,
    /// Its payload version.
    pub event_version: &'a str,
    /// When it was recorded.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// Who caused it.
    pub actor: Option<&'a str>,
    /// The request (or chain) it belongs to.
    pub correlation_id: Option<&'a str>,
    /// The payload.
    #[schema(value_type = Object)]
    pub data: &'a Value,
}

/// The audit trail.
#[derive(Serialize, ToSchema)]
pub struct AuditTrail<'a> {
    /// Every event, in order.
    pub items: Vec<AuditEvent<'a>>,
}

/// The conversation's audit trail, straight from the event store (deleted ones included).
#[utoipa::path(get, path = "/api/v1/conversations/{id}/events", tag = "conversations",
    responses((status = 200, body = AuditTrail)), security(("bearer" = [])))]
pub async fn get_events(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let events = event_log::read_aggregate(&state.pool, Conversation::TYPE, &id.to_string(), 0, None)
        .await
        .map_err(ApiError::internal)?;
    let owner = events
        .first()
        .and_then(|e| e.data.get("owner_id"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Uuid>().ok());
    if owner != Some(user.0) {
        return Err(ApiError::NotFound("conversation"));
    }
    let items: Vec<AuditEvent<'_>> = events
        .iter()
        .map(|e| AuditEvent {
            event_id: e.event_id,
            sequence: e.sequence,
            event_type: &e.event_type,
            event_version: &e.event_version,
            recorded_at: e.recorded_at,
            actor: e.meta(colloquy_domain::metadata::ACTOR),
            correlation_id: e.meta(colloquy_domain::metadata::CORRELATION_ID),
            data: &e.data,
        })
        .collect();
    Ok(HttpResponse::Ok().json(AuditTrail { items }))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/conversations", "GET, POST")
            .route(web::post().to(post_conversation))
            .route(web::get().to(get_conversations)),
    )
    .service(
        super::resource("/conversations/{id}", "GET, PATCH, DELETE")
            .route(web::get().to(get_conversation))
            .route(web::patch().to(patch_conversation))
            .route(web::delete().to(delete_conversation)),
    )
    .service(super::resource("/conversations/{id}/archive", "POST").route(web::post().to(post_archive)))
    .service(super::resource("/conversations/{id}/unarchive", "POST").route(web::post().to(post_unarchive)))
    .service(
        super::resource("/conversations/{id}/messages", "GET, POST")
            .route(web::post().to(post_message))
            .route(web::get().to(get_messages)),
    )
    .service(super::resource("/conversations/{id}/events", "GET").route(web::get().to(get_events)));
}
