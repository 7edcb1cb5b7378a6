//! `GET /users/me`, `PATCH /users/me`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use colloquy_commands::users::{UpdateProfile, UserAccepted};
use colloquy_projections::queries::UsageReport;
use colloquy_projections::users;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::Freshness;
use crate::auth::Authenticated;
use crate::body::parse;
use crate::errors::{ApiError, ErrorBody};
use crate::requests::answer;
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

/// The authenticated user's profile.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", params(Freshness),
    responses((status = 200, body = users::UserProfile), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_me(
    state: web::Data<AppState>,
    me: Authenticated,
    q: web::Query<Freshness>,
) -> Result<HttpResponse, ApiError> {
    let body = state.queries.profile(me.user, q.min_version).await?;
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

/// Updates the authenticated user's profile.
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users", request_body = UpdateProfileRequest,
    responses((status = 200, body = UserAccepted)), security(("bearer" = [])))]
pub async fn patch_me(
    state: web::Data<AppState>,
    me: Authenticated,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let r: UpdateProfileRequest = parse(body.into_inner())?;
    let input =
        UpdateProfile { full_name: r.full_name, default_model: r.default_model, system_prompt: r.system_prompt };
    let accepted = state.commands.update_profile(&me.caller, input).await?;
    Ok(answer(StatusCode::OK, accepted))
}

/// Deactivates the authenticated user's account: no more logins, and its access and
/// refresh tokens stop working at once (recorded in PostgreSQL, see `Commands::deactivate`).
#[utoipa::path(delete, path = "/api/v1/users/me", tag = "users",
    responses((status = 200, body = UserAccepted)), security(("bearer" = [])))]
pub async fn delete_me(state: web::Data<AppState>, me: Authenticated) -> Result<HttpResponse, ApiError> {
    let accepted = state.commands.deactivate(&me.caller).await?;
    Ok(HttpResponse::Ok().json(accepted))
}

/// Registers the routes. Profiles are personal: `Cache-Control: no-store`.
/// The usage report's range.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct UsageQuery {
    /// First UTC day (`YYYY-MM-DD`), default 29 days before `to`.
    pub from: Option<chrono::NaiveDate>,
    /// Last UTC day, included (default today); at most 366 days after `from`.
    pub to: Option<chrono::NaiveDate>,
}

/// The authenticated user's use of the models per day and model: calls, tokens and their
/// cost by the configured price table (replies and conversation titles).
#[utoipa::path(get, path = "/api/v1/users/me/usage", tag = "users", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_usage(
    state: web::Data<AppState>,
    me: Authenticated,
    q: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.queries.usage(me.user, q.from, q.to).await?))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/users/me", "GET, PATCH, DELETE")
            .route(web::get().to(get_me))
            .route(web::patch().to(patch_me))
            .route(web::delete().to(delete_me))
            .wrap(super::no_store()),
    )
    .service(super::resource("/users/me/usage", "GET").route(web::get().to(get_usage)).wrap(super::no_store()));
}
