//! Conversations and their messages: commands, list and detail queries, and the audit trail.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use colloquy_commands::conversations::{
    ConversationAccepted, ConversationChanges, Lifecycle, MessageAccepted, PostMessage, StartConversation,
};
use colloquy_domain::conversation::ConversationKind;
use colloquy_projections::queries::{ConversationPage, ListConversations};
use colloquy_projections::{conversations, messages};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Freshness;
use crate::auth::Authenticated;
use crate::body::parse;
use crate::errors::{ApiError, ErrorBody};
use crate::requests::answer;
use crate::state::AppState;

/// Start a conversation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Client-chosen id (optional; makes retries safe without an Idempotency-Key).
    pub id: Option<Uuid>,
    /// The title; without one the conversation is "New conversation" until the assistant
    /// names it after the first exchange (a rename always wins).
    #[schema(min_length = 1, max_length = 200)]
    pub title: Option<String>,
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

/// Change a conversation: its title, whether its replies are grounded in the owner's
/// knowledge base, or both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The new title.
    #[schema(min_length = 1, max_length = 200)]
    pub title: Option<String>,
    /// Quote passages of the knowledge base into replies (`knowledge` conversations start
    /// grounded, `chat` ones not).
    pub grounded: Option<bool>,
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
    /// The model to answer with (one of `GET /api/v1/models`); default: the conversation's.
    #[schema(min_length = 1, max_length = 200)]
    pub model: Option<String>,
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

/// Which path of the message tree, and paging along it.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct MessagesQuery {
    /// Another path than the active one: the branch through this message, to its newest
    /// message.
    pub leaf: Option<Uuid>,
    /// Only messages after this sequence.
    #[serde(default)]
    pub after: i64,
    /// Page size (1..=100, default 20).
    pub limit: Option<i64>,
    /// Wait until the messages reflect this conversation version.
    pub min_version: Option<i64>,
}

/// Starts a conversation.
#[utoipa::path(post, path = "/api/v1/conversations", tag = "conversations", request_body = StartRequest,
    responses((status = 201, body = ConversationAccepted), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn post_conversation(
    state: web::Data<AppState>,
    me: Authenticated,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let r: StartRequest = parse(body.into_inner())?;
    let input =
        StartConversation { id: r.id, title: r.title, kind: r.kind, model: r.model, system_prompt: r.system_prompt };
    let accepted = state.commands.start_conversation(&me.caller, input).await?;
    Ok(answer(StatusCode::CREATED, accepted))
}

/// Renames a conversation, or turns grounding on or off.
#[utoipa::path(patch, path = "/api/v1/conversations/{id}", tag = "conversations", request_body = UpdateRequest,
    responses((status = 200, body = ConversationAccepted)), security(("bearer" = [])))]
pub async fn patch_conversation(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let r: UpdateRequest = parse(body.into_inner())?;
    let changes = ConversationChanges { title: r.title, grounded: r.grounded };
    let accepted = state.commands.update_conversation(&me.caller, *id, changes).await?;
    Ok(answer(StatusCode::OK, accepted))
}

async fn change_lifecycle(
    state: web::Data<AppState>,
    me: Authenticated,
    id: Uuid,
    change: Lifecycle,
) -> Result<HttpResponse, ApiError> {
    let accepted = state.commands.change_lifecycle(&me.caller, id, change).await?;
    Ok(answer(StatusCode::OK, accepted))
}

/// Archives a conversation.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/archive", tag = "conversations",
    responses((status = 200, body = ConversationAccepted)), security(("bearer" = [])))]
pub async fn post_archive(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    change_lifecycle(state, me, *id, Lifecycle::Archive).await
}

/// Unarchives a conversation.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/unarchive", tag = "conversations",
    responses((status = 200, body = ConversationAccepted)), security(("bearer" = [])))]
pub async fn post_unarchive(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    change_lifecycle(state, me, *id, Lifecycle::Unarchive).await
}

/// Deletes a conversation.
#[utoipa::path(delete, path = "/api/v1/conversations/{id}", tag = "conversations",
    responses((status = 200, body = ConversationAccepted)), security(("bearer" = [])))]
pub async fn delete_conversation(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    change_lifecycle(state, me, *id, Lifecycle::Delete).await
}

/// Posts a user message.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", tag = "conversations", request_body = PostMessageRequest,
    responses((status = 201, body = MessageAccepted)), security(("bearer" = [])))]
pub async fn post_message(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let r: PostMessageRequest = parse(body.into_inner())?;
    let accepted = state
        .commands
        .post_message(&me.caller, *id, PostMessage { id: r.id, content: r.content, model: r.model })
        .await?;
    Ok(answer(StatusCode::CREATED, accepted))
}

/// Lists the user's conversations, newest activity first.
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations", params(ListQuery),
    responses((status = 200, body = ConversationPage)), security(("bearer" = [])))]
pub async fn get_conversations(
    state: web::Data<AppState>,
    me: Authenticated,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let list = ListConversations {
        archived: q.archived,
        limit: q.limit,
        cursor: q.cursor,
        min_version: q.min_version,
        conversation_id: q.conversation_id,
    };
    let body = state.queries.conversations(me.user, list).await?;
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

/// One conversation.
#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "conversations", params(Freshness),
    responses((status = 200, body = conversations::ConversationSummary)), security(("bearer" = [])))]
pub async fn get_conversation(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    q: web::Query<Freshness>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.queries.conversation(me.user, *id, q.min_version).await?))
}

/// A path through a conversation's messages, in order: the active path (where the
/// conversation continues), or with `leaf` the branch through that message. Each message
/// names its siblings (alternative replies and edits under the same parent) and its index
/// among them.
#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages", tag = "conversations", params(MessagesQuery),
    responses((status = 200, body = MessagePage)), security(("bearer" = [])))]
pub async fn get_messages(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    q: web::Query<MessagesQuery>,
) -> Result<HttpResponse, ApiError> {
    let path = state.queries.messages(me.user, *id, q.leaf, q.after, q.limit, q.min_version).await?;
    Ok(HttpResponse::Ok().json(MessagePage { leaf_id: path.leaf_id, items: path.messages }))
}

/// A page of a path through the messages.
#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    /// Where the path ends (null while the conversation has no message).
    pub leaf_id: Option<Uuid>,
    /// Its messages after the cursor, in order.
    pub items: Vec<messages::PathMessage>,
}

/// The export's format.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct ExportQuery {
    /// `json` (default: the whole tree, colloquy's import format) or `markdown` (the
    /// active path, for people).
    pub format: Option<String>,
    /// Wait until the read models reflect this conversation version.
    pub min_version: Option<i64>,
}

/// Exports a conversation: as JSON, the whole message tree with models, usage and citations
/// (what `POST /conversations/import` reads); as Markdown, the active path.
#[utoipa::path(get, path = "/api/v1/conversations/{id}/export", tag = "conversations", params(ExportQuery),
    responses((status = 200, body = Object, description = "colloquy's export document (JSON) or the active path (Markdown)"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_export(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    q: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let markdown = match q.format.as_deref() {
        None | Some("json") => false,
        Some("markdown") => true,
        Some(other) => {
            return Err(ApiError::new(
                crate::errors::ErrorCode::InvalidQuery,
                format!("format must be json or markdown, not {other}"),
            ))
        }
    };
    let export = state.queries.export(me.user, *id, q.min_version).await?;
    let name = format!("conversation-{id}");
    Ok(match markdown {
        true => HttpResponse::Ok()
            .content_type("text/markdown; charset=utf-8")
            .insert_header(("Content-Disposition", format!("attachment; filename=\"{name}.md\"")))
            .body(colloquy_projections::export::markdown(&export)),
        false => HttpResponse::Ok()
            .insert_header(("Content-Disposition", format!("attachment; filename=\"{name}.json\"")))
            .json(export),
    })
}

/// Largest export `POST /conversations/import` reads.
pub const IMPORT_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// Creates a conversation from colloquy's own export (`GET .../export`): the tree, the
/// active branch and the settings, with new ids; its events say it was imported, and no
/// model is asked for anything.
#[utoipa::path(post, path = "/api/v1/conversations/import", tag = "conversations",
    request_body(content = Object, description = "colloquy's export document"),
    responses((status = 201, body = ConversationAccepted), (status = 422, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_import(
    state: web::Data<AppState>,
    me: Authenticated,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let export = parse(body.into_inner())?;
    let accepted = state.commands.import_conversation(&me.caller, export).await?;
    Ok(answer(StatusCode::CREATED, accepted))
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

impl<'a> AuditEvent<'a> {
    fn of(e: &'a colloquy_infra::event_store::StoredEvent) -> Self {
        Self {
            event_id: e.event_id,
            sequence: e.sequence,
            event_type: &e.event_type,
            event_version: &e.event_version,
            recorded_at: e.recorded_at,
            actor: e.meta(colloquy_domain::metadata::ACTOR),
            correlation_id: e.meta(colloquy_domain::metadata::CORRELATION_ID),
            data: &e.data,
        }
    }
}

/// A page of the audit trail.
#[derive(Serialize, ToSchema)]
pub struct AuditTrail<'a> {
    /// The events of this page, in sequence order.
    pub items: Vec<AuditEvent<'a>>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// Audit-trail paging.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Only events after this sequence (the previous page's `next_after`; default 0).
    #[serde(default)]
    pub after: i64,
    /// Page size (1..=1000, default 100).
    pub limit: Option<i64>,
}

/// The conversation's audit trail, straight from the event store (deleted ones included),
/// one page at a time.
#[utoipa::path(get, path = "/api/v1/conversations/{id}/events", tag = "conversations", params(EventsQuery),
    responses((status = 200, body = AuditTrail)), security(("bearer" = [])))]
pub async fn get_events(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state.queries.conversation_events(me.user, *id, q.after, q.limit).await?;
    let items = page.items.iter().map(AuditEvent::of).collect();
    Ok(HttpResponse::Ok().json(AuditTrail { items, next_after: page.next_after }))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/conversations", "GET, POST")
            .route(web::post().to(post_conversation))
            .route(web::get().to(get_conversations)),
    )
    // Before `/conversations/{id}`, which would take `import` for an id.
    .service(
        super::resource("/conversations/import", "POST")
            .app_data(crate::body::json_config(IMPORT_LIMIT_BYTES))
            .route(web::post().to(post_import)),
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
    .service(super::resource("/conversations/{id}/events", "GET").route(web::get().to(get_events)))
    .service(super::resource("/conversations/{id}/export", "GET").route(web::get().to(get_export)));
}
