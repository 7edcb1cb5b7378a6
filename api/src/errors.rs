//! The one error type at the HTTP edge: every failure becomes
//! `{"error": {"code": "...", "message": "..."}}` with a stable snake_case code.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use colloquy_commands::credentials::{LoginError, RegistrationError};
use colloquy_commands::CommandError;
use colloquy_domain::conversation::ConversationError;
use colloquy_domain::user::UserError;
use serde_json::json;

/// The body of every error response (documentation type for the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `conversation_archived`.
    pub code: String,
    /// For people.
    pub message: String,
}

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{message}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// 401: no valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: nothing here for this user.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405: the route exists, the method does not.
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// 413: the body is too large.
    #[error("the request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// 415: the body is not JSON.
    #[error("send the body as application/json")]
    UnsupportedMediaType,
    /// 422: well-formed but rejected.
    #[error("{message}")]
    Unprocessable {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// 429: slow down.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a retry can succeed.
        retry_after_secs: u64,
    },
    /// 503: a dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an outage; the cause is logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } | Self::Conflict { code, .. } | Self::Unprocessable { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// A 500 from anything.
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    /// A 422 with `code`.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable { code, message: message.into() }
    }

    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            Self::Internal(e) => {
                tracing::error!(error = ?e, "Request failed.");
                "something went wrong on our side; the request id identifies it in our logs".to_string()
            }
            other => other.to_string(),
        };
        let mut builder = HttpResponse::build(self.status_code());
        match self {
            Self::RateLimited { retry_after_secs } => {
                builder.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::Unauthorized(_) => {
                builder.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        builder.json(json!({"error": {"code": self.code(), "message": message}}))
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        let code = match e {
            UserError::AlreadyRegistered => {
                return Self::Conflict { code: "already_registered", message: e.to_string() }
            }
            UserError::NotRegistered => return Self::NotFound("user"),
            UserError::Deactivated => return Self::Conflict { code: "user_deactivated", message: e.to_string() },
            UserError::InvalidEmail => "invalid_email",
            UserError::InvalidFullName { .. } => "invalid_full_name",
            UserError::InvalidModel { .. } => "invalid_model",
            UserError::InvalidSystemPrompt { .. } => "invalid_system_prompt",
            UserError::EmptyUpdate => "empty_update",
        };
        Self::unprocessable(code, e.to_string())
    }
}

impl From<ConversationError> for ApiError {
    fn from(e: ConversationError) -> Self {
        use ConversationError as C;
        let conflict = |code| Self::Conflict { code, message: e.to_string() };
        let code = match e {
            C::NotFound => return Self::NotFound("conversation"),
            C::AlreadyStarted => return conflict("conversation_exists"),
            C::Deleted => return conflict("conversation_deleted"),
            C::Archived => return conflict("conversation_archived"),
            C::AlreadyArchived => return conflict("already_archived"),
            C::NotArchived => return conflict("not_archived"),
            C::DuplicateMessage => return conflict("duplicate_message"),
            C::LookupFailed(cause) => return Self::internal(anyhow::anyhow!("message lookup failed: {cause}")),
            C::InvalidTitle { .. } => "invalid_title",
            C::InvalidModel { .. } => "invalid_model",
            C::InvalidSystemPrompt { .. } => "invalid_system_prompt",
            C::InvalidMessage { .. } => "invalid_message",
        };
        Self::unprocessable(code, e.to_string())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<CommandError<E>> for ApiError
where
    ApiError: From<E>,
{
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(e) => e.into(),
            CommandError::Conflict => Self::Conflict {
                code: "concurrent_modification",
                message: "the resource was changed concurrently; retry the request".into(),
            },
            CommandError::Store(m) => Self::internal(anyhow::anyhow!(m)),
        }
    }
}

impl From<RegistrationError> for ApiError {
    fn from(e: RegistrationError) -> Self {
        match e {
            RegistrationError::Invalid(e) => e.into(),
            RegistrationError::WeakPassword => Self::unprocessable("invalid_password", e.to_string()),
            RegistrationError::EmailTaken => Self::Conflict { code: "email_taken", message: e.to_string() },
            RegistrationError::Internal(m) => Self::internal(anyhow::anyhow!(m)),
        }
    }
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::InvalidCredentials => Self::Unauthorized(e.to_string()),
            LoginError::Internal(m) => Self::internal(anyhow::anyhow!(m)),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;

    use super::*;

    async fn body_of(e: &ApiError) -> serde_json::Value {
        let bytes = to_bytes(e.error_response().into_body()).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[actix_web::test]
    async fn command_outcomes_map_to_statuses_and_stable_codes() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (CommandError::<ConversationError>::Conflict.into(), 409, "concurrent_modification"),
            (CommandError::Rejected(ConversationError::NotFound).into(), 404, "not_found"),
            (CommandError::Rejected(ConversationError::Archived).into(), 409, "conversation_archived"),
            (CommandError::Rejected(ConversationError::InvalidTitle { max: 200 }).into(), 422, "invalid_title"),
            (CommandError::Rejected(UserError::EmptyUpdate).into(), 422, "empty_update"),
            (RegistrationError::EmailTaken.into(), 409, "email_taken"),
            (LoginError::InvalidCredentials.into(), 401, "unauthorized"),
            (ApiError::RateLimited { retry_after_secs: 3 }, 429, "rate_limited"),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
            let body = body_of(&error).await;
            assert_eq!(body["error"]["code"], code);
            assert!(!body["error"]["message"].as_str().unwrap_or_default().is_empty());
        }
    }

    #[actix_web::test]
    async fn internal_errors_hide_their_cause() {
        let error = ApiError::from(CommandError::<ConversationError>::Store("password=hunter2 at db:5432".into()));
        assert_eq!(error.status_code().as_u16(), 500);
        let body = body_of(&error).await.to_string();
        assert!(!body.contains("hunter2"), "{body}");
        assert!(body.contains("\"internal\""));
    }

    #[test]
    fn rate_limited_answers_carry_retry_after() {
        let response = ApiError::RateLimited { retry_after_secs: 7 }.error_response();
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    }
}
