//! `POST /auth/register`, `POST /auth/login`, `POST /auth/refresh`, `POST /auth/logout`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use colloquy_commands::sessions::SessionGrant;
use colloquy_commands::users::{login_throttle_key, Register, Registered};

use crate::auth::Authenticated;
use crate::body::parse;
use crate::errors::{ApiError, ErrorBody};
use crate::requests::{client_address, correlation_id};
use crate::state::AppState;

/// Registration request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// E-mail address (unique).
    #[schema(min_length = 3, max_length = 254, format = Email)]
    pub email: String,
    /// Display name.
    #[schema(min_length = 1, max_length = 200)]
    pub full_name: String,
    /// 8 to 256 characters.
    #[schema(min_length = 8, max_length = 256, format = Password)]
    pub password: String,
}

/// Login request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// E-mail address.
    pub email: String,
    /// Password.
    pub password: String,
}

/// Refresh request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the last login or refresh (used up by this request).
    pub refresh_token: String,
}

/// A new access token and refresh token (login and refresh).
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// The bearer token for API requests (short-lived).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Exchanges for the next pair at `POST /auth/refresh`, once: using it twice revokes
    /// the session.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
    /// Whose tokens they are.
    pub user_id: Uuid,
}

fn tokens_for(state: &AppState, grant: SessionGrant) -> Result<HttpResponse, ApiError> {
    let (access_token, expires_in) = state.tokens.issue(grant.user_id, grant.session_id)?;
    Ok(HttpResponse::Ok().json(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in,
        refresh_token: grant.refresh_token,
        refresh_expires_in: grant.refresh_expires_in,
        user_id: grant.user_id,
    }))
}

/// Registers a user.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = Registered), (status = 409, body = ErrorBody, description = "email_taken"),
        (status = 503, body = ErrorBody, description = "overloaded (see Retry-After) or unavailable")))]
pub async fn post_register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.limiter.check_auth(&client_address(&req).to_string()).await?;
    let r: RegisterRequest = parse(body.into_inner())?;
    let input = Register { email: r.email, full_name: r.full_name, password: r.password };
    let registered = state.commands.register(correlation_id(&req), input).await?;
    Ok(HttpResponse::build(StatusCode::CREATED).json(registered))
}

/// Exchanges an e-mail address and password for an access token and a refresh token.
/// Failed logins make further attempts on the same address wait, doubling each time
/// (429 `rate_limited` with `Retry-After`), whether or not an account has the address.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody, description = "invalid credentials"),
        (status = 429, body = ErrorBody, description = "too many attempts from this address or on this account; see Retry-After"),
        (status = 503, body = ErrorBody, description = "overloaded (see Retry-After) or unavailable")))]
pub async fn post_login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.limiter.check_auth(&client_address(&req).to_string()).await?;
    let r: LoginRequest = parse(body.into_inner())?;
    let account = login_throttle_key(&r.email);
    state.limiter.begin_login(&account).await?;
    let grant = state.commands.sign_in(&r.email, r.password).await?;
    state.limiter.login_succeeded(&account).await;
    tokens_for(&state, grant)
}

/// Exchanges a refresh token for a new access token and refresh token of the same
/// session. A refresh token works once: presenting a used one revokes its whole session
/// (every access and refresh token of it) and answers 401.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse),
        (status = 401, body = ErrorBody, description = "invalid, expired, revoked or reused refresh token")))]
pub async fn post_refresh(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.limiter.check_auth(&client_address(&req).to_string()).await?;
    let r: RefreshRequest = parse(body.into_inner())?;
    let grant = state.commands.refresh(&r.refresh_token).await?;
    tokens_for(&state, grant)
}

/// Logs out: the presented access token and every token of its session (its refresh
/// token included) stop working at once.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "logged out")), security(("bearer" = [])))]
pub async fn post_logout(state: web::Data<AppState>, me: Authenticated) -> Result<HttpResponse, ApiError> {
    let token = me.token;
    state.commands.logout(token.user, token.session, token.jti, token.expires_at).await.map_err(ApiError::internal)?;
    if let Err(e) = state.limiter.remember_refused(token.user, token.session, token.remaining_secs()).await {
        tracing::warn!(error = ?e, "Could not cache a revoked session.");
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the routes. Their answers carry tokens: `Cache-Control: no-store`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/auth/register", "POST").route(web::post().to(post_register)).wrap(super::no_store()))
        .service(super::resource("/auth/login", "POST").route(web::post().to(post_login)).wrap(super::no_store()))
        .service(super::resource("/auth/refresh", "POST").route(web::post().to(post_refresh)).wrap(super::no_store()))
        .service(super::resource("/auth/logout", "POST").route(web::post().to(post_logout)).wrap(super::no_store()));
}
