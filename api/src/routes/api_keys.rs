//! The caller's API keys, the credentials of the OpenAI-compatible routes (`/v1/...`):
//! make one (its secret is in this answer only), list them, revoke one.

use actix_web::{web, HttpResponse};
use colloquy_commands::api_keys::{ApiKeyView, NewApiKey};
use colloquy_commands::users::UserAccepted;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::errors::{ApiError, ErrorBody};
use crate::state::AppState;

/// A new API key's name.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// A label to tell keys apart (`laptop`, `ci`), 1 to 100 characters.
    pub name: String,
}

/// The caller's live API keys.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyPage {
    /// Newest first; never the secrets (they are not kept).
    pub items: Vec<ApiKeyView>,
}

/// Makes an API key for `/v1/...` (`Authorization: Bearer ck_...`). The answer's `key` is
/// shown this once: colloquy keeps only its SHA-256. At most 20 live keys.
#[utoipa::path(post, path = "/api/v1/users/me/api-keys", tag = "users", request_body = CreateApiKeyRequest,
    responses((status = 201, body = NewApiKey), (status = 422, body = ErrorBody, description = "`invalid_api_key_name`, `too_many_api_keys`")),
    security(("bearer" = [])))]
pub async fn post_api_key(
    state: web::Data<AppState>,
    me: Authenticated,
    body: web::Json<CreateApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let created = state.commands.create_api_key(&me.caller, body.into_inner().name).await?;
    Ok(HttpResponse::Created().json(created))
}

/// Lists the caller's live API keys.
#[utoipa::path(get, path = "/api/v1/users/me/api-keys", tag = "users",
    responses((status = 200, body = ApiKeyPage)), security(("bearer" = [])))]
pub async fn get_api_keys(state: web::Data<AppState>, me: Authenticated) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(ApiKeyPage { items: state.commands.list_api_keys(me.user).await? }))
}

/// Revokes one of the caller's API keys: requests carrying it are refused from now on.
#[utoipa::path(delete, path = "/api/v1/users/me/api-keys/{key_id}", tag = "users",
    params(("key_id" = Uuid, Path, description = "The key")),
    responses((status = 200, body = UserAccepted), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_api_key(
    state: web::Data<AppState>,
    me: Authenticated,
    key_id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.commands.revoke_api_key(&me.caller, *key_id).await?))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/users/me/api-keys", "GET, POST")
            .route(web::get().to(get_api_keys))
            .route(web::post().to(post_api_key))
            .wrap(super::no_store()),
    )
    .service(
        super::resource("/users/me/api-keys/{key_id}", "DELETE")
            .route(web::delete().to(delete_api_key))
            .wrap(super::no_store()),
    );
}
