//! `POST /auth/register`, `POST /auth/login`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use colloquy_commands::users::{Register, Registered};

use crate::body::parse;
use crate::errors::{ApiError, ErrorBody};
use crate::requests::correlation_id;
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

/// An access token.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Whose token it is.
    pub user_id: Uuid,
}

fn client_address(req: &HttpRequest) -> String {
    req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_else(|| "unknown".into())
}

/// Registers a user.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = Registered), (status = 409, body = ErrorBody, description = "email_taken")))]
pub async fn post_register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.limiter.check_auth(&client_address(&req)).await?;
    let r: RegisterRequest = parse(body.into_inner())?;
    let input = Register { email: r.email, full_name: r.full_name, password: r.password };
    let registered = state.commands.register(correlation_id(&req), input).await?;
    Ok(HttpResponse::build(StatusCode::CREATED).json(registered))
}

/// Exchanges an e-mail address and password for an access token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody, description = "invalid credentials")))]
pub async fn post_login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.limiter.check_auth(&client_address(&req)).await?;
    let r: LoginRequest = parse(body.into_inner())?;
    let user_id = state.commands.login(&r.email, r.password).await?;
    let (access_token, expires_in) = state.tokens.issue(user_id)?;
    Ok(HttpResponse::Ok().json(TokenResponse { access_token, token_type: "Bearer".into(), expires_in, user_id }))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/auth/register", "POST").route(web::post().to(post_register)))
        .service(super::resource("/auth/login", "POST").route(web::post().to(post_login)));
}
