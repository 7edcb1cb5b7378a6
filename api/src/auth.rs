//! The authenticated caller of a request: the access token is verified (signature, expiry,
//! issuer, audience, `typ`), the per-user rate limit applied, the session tables asked
//! whether the token may still be used (registered, active account; session and token not
//! revoked: primary-key lookups on the API's pool, concurrent requests' checks answered by
//! one statement, behind a Redis cache of refusals only), and the request's metadata
//! (request id, correlation id) and Idempotency-Key gathered into the [`Caller`] every use
//! case takes.

use std::future::Future;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};
use colloquy_commands::api_keys::API_KEY_PREFIX;
use colloquy_commands::sessions::SessionToken;
use colloquy_commands::{Caller, IdempotencyKey};
use uuid::Uuid;

use crate::errors::{ApiError, ErrorCode};
use crate::requests::{correlation_id, request_id, IDEMPOTENCY_HEADER};
use crate::state::AppState;
use crate::tokens::AccessToken;

/// The authenticated user of a request (and the request passed its rate limit).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user.
    pub user: Uuid,
    /// The verified access token.
    pub token: AccessToken,
    /// The user as the caller of a use case.
    pub caller: Caller,
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Self::authenticate(req, bearer_token(req))
    }
}

/// The token of the request's `Authorization: Bearer` header.
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string())
}

/// The request's `Idempotency-Key`, if it has one.
fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    match req.headers().get(IDEMPOTENCY_HEADER) {
        None => Ok(None),
        Some(raw) => raw.to_str().ok().and_then(IdempotencyKey::parse).map(Some).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidIdempotencyKey, "Idempotency-Key must be 1 to 200 visible characters")
        }),
    }
}

/// The caller of an OpenAI-compatible route (`/v1/...`): authenticated by an API key
/// (`Bearer ck_...`: a live key of an active account) or by an access token (every check of
/// [`Authenticated`]), and past the per-user rate limit either way.
#[derive(Debug, Clone)]
pub struct ApiCaller {
    /// The user.
    pub user: Uuid,
    /// The API key the request carried; `None` for an access token.
    pub api_key_id: Option<Uuid>,
    /// The user as the caller of a use case.
    pub caller: Caller,
}

impl ApiCaller {
    /// Authenticates `req` (errors in the API's own shape; the `/v1` routes convert them).
    pub async fn authenticate(req: &HttpRequest) -> Result<Self, ApiError> {
        let token = bearer_token(req);
        let Some(secret) = token.as_deref().filter(|t| t.starts_with(API_KEY_PREFIX)) else {
            let me = Authenticated::authenticate(req, token).await?;
            return Ok(Self { user: me.user, api_key_id: None, caller: me.caller });
        };
        let key = idempotency_key(req)?;
        let state =
            req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::internal("application state missing"))?;
        let holder = match state.commands.api_key_holder(secret).await {
            Ok(Some(holder)) => holder,
            Ok(None) => {
                return Err(ApiError::unauthorized("the API key is invalid, revoked, or its account is not active"))
            }
            Err(e) => {
                tracing::error!(error = ?e, "Could not check an API key.");
                return Err(ApiError::new(ErrorCode::Unavailable, "authentication is temporarily unavailable"));
            }
        };
        state.limiter.check_user(holder.user_id, holder.key_id).await?;
        let caller = Caller::user(holder.user_id, correlation_id(req), &request_id(req)).with_idempotency_key(key);
        Ok(Self { user: holder.user_id, api_key_id: Some(holder.key_id), caller })
    }
}

impl Authenticated {
    /// Authenticates `req` with `token`, taken from wherever its route accepts one (the
    /// WebSocket route also takes `?access_token=`, which browsers can set): the same checks
    /// as every other route.
    pub fn authenticate(req: &HttpRequest, token: Option<String>) -> <Self as FromRequest>::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let key = idempotency_key(req);
        let (request, correlation) = (request_id(req), correlation_id(req));
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("application state missing"))?;
            let token = token.ok_or_else(|| ApiError::unauthorized("an access token is required"))?;
            let token = state.tokens.verify(&token)?;
            let user = token.user;
            state.limiter.check_user(user, token.session).await?;
            match state.access.allowed(SessionToken { user_id: user, session_id: token.session, jti: token.jti }).await
            {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(e) = state.limiter.remember_refused(user, token.session, token.remaining_secs()).await {
                        tracing::warn!(error = ?e, "Could not cache a refused session.");
                    }
                    return Err(ApiError::unauthorized("the access token was revoked or its account is not active"));
                }
                Err(e) => {
                    tracing::error!(error = ?e, "Could not check the access token's session.");
                    return Err(ApiError::new(ErrorCode::Unavailable, "authentication is temporarily unavailable"));
                }
            }
            let caller = Caller::user(user, correlation, &request).with_idempotency_key(key?);
            Ok(Self { user, token, caller })
        })
    }
}
