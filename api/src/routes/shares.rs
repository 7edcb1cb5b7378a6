//! Sharing: the owner makes, lists and revokes read-only links to a conversation; anyone
//! holding a link reads the conversation as it was shared, without logging in.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use colloquy_commands::conversations::ConversationAccepted;
use colloquy_commands::shares::ShareCreated;
use colloquy_projections::shares::{ShareSummary, SharedConversation};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::errors::{ApiError, ErrorBody};
use crate::requests::answer;
use crate::state::AppState;

/// Makes a read-only link to the conversation as it is now: later messages are not shown.
/// The answer's `token` is shown once.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/share", tag = "sharing",
    responses((status = 201, body = ShareCreated), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_share(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let created = state.commands.share_conversation(&me.caller, *id).await?;
    Ok(answer(StatusCode::CREATED, created))
}

/// The conversation's shares.
#[derive(Serialize, ToSchema)]
pub struct SharePage {
    /// Oldest first; revoked ones say since when.
    pub items: Vec<ShareSummary>,
}

/// Lists the conversation's shares (no tokens: they are not kept).
#[utoipa::path(get, path = "/api/v1/conversations/{id}/shares", tag = "sharing",
    responses((status = 200, body = SharePage), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_shares(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(SharePage { items: state.queries.shares(me.user, *id).await? }))
}

/// Revokes a share: its link stops working.
#[utoipa::path(delete, path = "/api/v1/conversations/{id}/shares/{share_id}", tag = "sharing",
    responses((status = 200, body = ConversationAccepted), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_share(
    state: web::Data<AppState>,
    me: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, share) = path.into_inner();
    let accepted = state.commands.revoke_share(&me.caller, conversation, share).await?;
    Ok(answer(StatusCode::OK, accepted))
}

/// A shared conversation, for anyone holding its link: the title and the messages as they
/// were shared, nothing about the owner. An unknown, revoked or deleted link is 404.
#[utoipa::path(get, path = "/api/v1/shared/{token}", tag = "sharing",
    responses((status = 200, body = SharedConversation), (status = 404, body = ErrorBody)))]
pub async fn get_shared(state: web::Data<AppState>, token: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let shared = state.queries.shared(&token).await?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(shared))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/conversations/{id}/share", "POST").route(web::post().to(post_share)))
        .service(super::resource("/conversations/{id}/shares", "GET").route(web::get().to(get_shares)))
        .service(
            super::resource("/conversations/{id}/shares/{share_id}", "DELETE").route(web::delete().to(delete_share)),
        )
        .service(super::resource("/shared/{token}", "GET").route(web::get().to(get_shared)));
}
