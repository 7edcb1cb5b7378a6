//! `GET /users/me`, `PATCH /users/me`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use colloquy_domain::user::UserCommand;
use colloquy_projections::{cache, users};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{await_version, Freshness};
use crate::auth::AuthUser;
use crate::body::parse;
use crate::errors::{ApiError, ErrorBody};
use crate::idempotency;
use crate::requests::command_meta;
use crate::state::AppState;

/// A profile update; absent fields stay as they are, `null` clears an optional field.
/// At least one field must be present.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    /// New display name.
    #[schema(min_length = 1, max_length = 200)]
    pub full_name: Option<String>,
    /// New default model, or null to clear.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200)]
    pub default_model: Option<Option<String>>,
    /// New default system prompt, or null to clear.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 20000)]
    pub system_prompt: Option<Option<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A command's result.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// The aggregate's version after the command; pass it as `min_version` to queries.
    pub version: i64,
}

/// The authenticated user's profile.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", params(Freshness),
    responses((status = 200, body = users::UserProfile), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_me(
    state: web::Data<AppState>,
    user: AuthUser,
    q: web::Query<Freshness>,
) -> Result<HttpResponse, ApiError> {
    let id = user.0;
    await_version(&state, &[users::NAME], &id.to_string(), q.min_version).await?;
    // The cache is only trusted when no particular version was asked for.
    let body = cache::get_or_load(&state.redis, id, "profile", q.min_version.is_some(), || async {
        let profile = users::find(&state.pool, id).await?.ok_or(ApiError::NotFound("user"))?;
        serde_json::to_string(&profile).map_err(ApiError::internal)
    })
    .await?;
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

/// Updates the authenticated user's profile.
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users", request_body = UpdateProfileRequest,
    responses((status = 200, body = Accepted)), security(("bearer" = [])))]
pub async fn patch_me(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    idempotency::once(&state, user.0, &req, &body, || async {
        let r: UpdateProfileRequest = parse(body.clone())?;
        let cmd = UserCommand::UpdateProfile {
            full_name: r.full_name,
            default_model: r.default_model,
            system_prompt: r.system_prompt,
        };
        let committed =
            state.users.execute(&user.0.to_string(), cmd, &command_meta(&req, format!("user:{}", user.0))).await?;
        Ok((StatusCode::OK, json!({"version": committed.version})))
    })
    .await
}

/// Deactivates the authenticated user's account: no more logins, and its access tokens
/// stop working at once.
#[utoipa::path(delete, path = "/api/v1/users/me", tag = "users",
    responses((status = 200, body = Accepted)), security(("bearer" = [])))]
pub async fn delete_me(state: web::Data<AppState>, user: AuthUser, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let cmd = UserCommand::DeactivateUser { reason: Some("deactivated by the user".into()) };
    let committed =
        state.users.execute(&user.0.to_string(), cmd, &command_meta(&req, format!("user:{}", user.0))).await?;
    // Tokens outlive this call by at most their lifetime; deny them for that long.
    if let Err(e) = state.limiter.deny_user(user.0, state.settings.auth.access_token_ttl_secs).await {
        // The account is deactivated regardless (no login succeeds); only tokens already
        // issued keep working until they expire.
        tracing::error!(user_id = %user.0, error = %e, "Could not revoke the user's tokens in Redis.");
    }
    tracing::info!(user_id = %user.0, "User deactivated.");
    Ok(HttpResponse::Ok().json(json!({"version": committed.version})))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/users/me", "GET, PATCH, DELETE")
            .route(web::get().to(get_me))
            .route(web::patch().to(patch_me))
            .route(web::delete().to(delete_me)),
    );
}
