//! The message tree: edit a message, regenerate a reply, switch the active branch. The
//! active path itself is read with `GET /conversations/{id}/messages` (see `conversations`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use colloquy_commands::branches::{EditMessage, Regenerate, ReplyRequestAccepted};
use colloquy_commands::conversations::{ConversationAccepted, MessageAccepted};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::body::{optional, parse};
use crate::errors::{ApiError, ErrorBody};
use crate::requests::answer;
use crate::state::AppState;

/// A new text for a user message.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    /// Client-chosen id of the new message (optional).
    pub id: Option<Uuid>,
    /// The new text.
    #[schema(min_length = 1, max_length = 32000)]
    pub content: String,
    /// The model to answer with.
    #[schema(min_length = 1, max_length = 200)]
    pub model: Option<String>,
}

/// Another reply (the body may be left out).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegenerateRequest {
    /// The model to answer with (default: the message's, then the conversation's, ...).
    #[schema(min_length = 1, max_length = 200)]
    pub model: Option<String>,
}

/// Edits a user message: the new text is posted beside it, under the same parent, becomes
/// the active path's end and gets its own reply. The original stays, one branch away.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages/{message_id}/edit", tag = "conversations",
    request_body = EditRequest,
    responses((status = 201, body = MessageAccepted), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_edit(
    state: web::Data<AppState>,
    me: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, message) = path.into_inner();
    let r: EditRequest = parse(body.into_inner())?;
    let input = EditMessage { id: r.id, content: r.content, model: r.model };
    let accepted = state.commands.edit_message(&me.caller, conversation, message, input).await?;
    Ok(answer(StatusCode::CREATED, accepted))
}

/// Asks for another reply to a user message (named by the message or by one of its
/// replies). The earlier replies stay, as its siblings.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages/{message_id}/regenerate", tag = "conversations",
    request_body(content = Option<RegenerateRequest>),
    responses((status = 202, body = ReplyRequestAccepted), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_regenerate(
    state: web::Data<AppState>,
    me: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (conversation, message) = path.into_inner();
    let r: RegenerateRequest = optional(&body)?;
    let accepted =
        state.commands.regenerate_reply(&me.caller, conversation, message, Regenerate { model: r.model }).await?;
    Ok(answer(StatusCode::ACCEPTED, accepted))
}

/// Switches the conversation to the branch through a message: the active path ends at that
/// branch's newest message (replies and posts continue from there).
#[utoipa::path(post, path = "/api/v1/conversations/{id}/branches/{message_id}/activate", tag = "conversations",
    responses((status = 200, body = ConversationAccepted), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_activate(
    state: web::Data<AppState>,
    me: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, message) = path.into_inner();
    let accepted = state.commands.activate_branch(&me.caller, conversation, message).await?;
    Ok(answer(StatusCode::OK, accepted))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/conversations/{id}/messages/{message_id}/edit", "POST").route(web::post().to(post_edit)),
    )
    .service(
        super::resource("/conversations/{id}/messages/{message_id}/regenerate", "POST")
            .route(web::post().to(post_regenerate)),
    )
    .service(
        super::resource("/conversations/{id}/branches/{message_id}/activate", "POST")
            .route(web::post().to(post_activate)),
    );
}
