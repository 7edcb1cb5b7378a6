//! `GET /api/v1/ws`: a WebSocket carrying every reply entry of all of the user's
//! conversations (see [`crate::streams::ws`] for the messages).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::auth::{bearer_token, Authenticated};
use crate::errors::{ApiError, ErrorCode};
use crate::state::AppState;

/// How a browser, which cannot set headers on a WebSocket request, authenticates.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct WsQuery {
    /// The access token, when no `Authorization: Bearer` header is sent.
    pub access_token: Option<String>,
}

/// Opens the WebSocket: `reply.started`, `reply.delta`, `reply.completed`, `reply.failed`
/// and `reply.cancelled` messages of every reply in the user's conversations. Authenticated
/// by the `Authorization: Bearer` header or `?access_token=`.
#[utoipa::path(get, path = "/api/v1/ws", tag = "replies", params(WsQuery),
    responses((status = 101, description = "switching to the WebSocket protocol")), security(("bearer" = [])))]
pub async fn get_ws(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<WsQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = bearer_token(&req).or_else(|| query.into_inner().access_token);
    let me = Authenticated::authenticate(&req, token).await?;
    let (response, session, messages) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::new(ErrorCode::WebsocketRequired, format!("a WebSocket upgrade is required: {e}")))?;
    // Subscribed before the upgrade is answered: the client misses nothing appended after.
    let sub = state.hub.subscribe(me.user);
    let streams = state.streams.clone();
    let metrics = state.scrape.metrics.clone();
    actix_web::rt::spawn(crate::streams::ws::run(session, messages, sub, streams, metrics));
    Ok(response)
}

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/ws", "GET").route(web::get().to(get_ws)));
}
