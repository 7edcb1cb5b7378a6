//! The one error type at the HTTP edge: every failure becomes
//! `{"error": {"code": "...", "message": "..."}}` with a stable [`ErrorCode`], and every
//! error of the layers below maps to one here, in one place.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use colloquy_commands::quotas::Quota;
use colloquy_commands::sessions::RefreshRejection;
use colloquy_commands::users::{LoginRejection, RegistrationRejection};
use colloquy_commands::{Failure, UseCaseError};
use colloquy_domain::conversation::ConversationError;
use colloquy_domain::file::FileError;
use colloquy_domain::knowledge::KnowledgeDocumentError;
use colloquy_domain::user::UserError;
use colloquy_infra::passwords::PasswordError;
use colloquy_projections::queries::QueryError;
use serde_json::json;

pub use crate::error_code::ErrorCode;

/// The body of every error response (documentation type for the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `conversation_archived`.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// With `token_quota_exceeded`: when the spent quota is whole again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An answer with a stable code (4xx, or 503 for an unavailable dependency).
    #[error("{message}")]
    Coded {
        /// The code; it decides the status.
        code: ErrorCode,
        /// For people.
        message: String,
        /// The recorded answer to an earlier request with the same Idempotency-Key.
        replayed: bool,
    },
    /// 429: slow down.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a retry can succeed.
        retry_after_secs: u64,
    },
    /// 429: a token quota is spent until `resets_at`.
    #[error("{message}")]
    TokensSpent {
        /// For people.
        message: String,
        /// When the quota is whole again.
        resets_at: chrono::DateTime<chrono::Utc>,
    },
    /// 500: a bug or an outage; the cause chain is logged, never shown.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl ApiError {
    /// An answer with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Coded { code, message: message.into(), replayed: false }
    }

    /// 404 for `what` (also another user's object).
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// 401 with `message`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// A 500 from anything.
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Internal(e.into())
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Coded { code, .. } => *code,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::TokensSpent { .. } => ErrorCode::TokenQuotaExceeded,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code().status()
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
            Self::Coded { code: ErrorCode::Unauthorized, .. } => {
                builder.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::Coded { code: ErrorCode::Overloaded, .. } => {
                builder.insert_header((header::RETRY_AFTER, OVERLOADED_RETRY_AFTER_SECS.to_string()));
            }
            Self::Coded { replayed: true, .. } => {
                builder.insert_header((crate::requests::REPLAYED_HEADER, "true"));
            }
            Self::TokensSpent { resets_at, .. } => {
                let wait = (*resets_at - chrono::Utc::now()).num_seconds().max(1);
                builder.insert_header((header::RETRY_AFTER, wait.to_string()));
                return builder
                    .json(json!({"error": {"code": self.code(), "message": message, "resets_at": resets_at}}));
            }
            _ => {}
        }
        builder.json(json!({"error": {"code": self.code(), "message": message}}))
    }
}

/// `Retry-After` of an `overloaded` answer: a password hash takes well under a second.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// A rejection of the layers below, with the code it is answered with.
pub trait Coded: std::error::Error {
    /// The code; its status follows.
    fn code(&self) -> ErrorCode;
}

impl Coded for UserError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::AlreadyRegistered => ErrorCode::AlreadyRegistered,
            Self::NotRegistered => ErrorCode::NotFound,
            Self::Deactivated => ErrorCode::UserDeactivated,
            Self::InvalidEmail => ErrorCode::InvalidEmail,
            Self::InvalidFullName { .. } => ErrorCode::InvalidFullName,
            Self::InvalidModel { .. } => ErrorCode::InvalidModel,
            Self::InvalidSystemPrompt { .. } => ErrorCode::InvalidSystemPrompt,
            Self::EmptyUpdate => ErrorCode::EmptyUpdate,
            Self::ControlCharacter { .. } => ErrorCode::ControlCharacter,
            Self::InvisibleCharacter { .. } => ErrorCode::InvisibleCharacter,
            Self::InvalidApiKeyName { .. } => ErrorCode::InvalidApiKeyName,
            Self::TooManyApiKeys { .. } => ErrorCode::TooManyApiKeys,
            Self::ApiKeyNotFound => ErrorCode::NotFound,
        }
    }
}

impl Coded for ConversationError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::AlreadyStarted => ErrorCode::ConversationExists,
            Self::Deleted => ErrorCode::ConversationDeleted,
            Self::Archived => ErrorCode::ConversationArchived,
            Self::AlreadyArchived => ErrorCode::AlreadyArchived,
            Self::NotArchived => ErrorCode::NotArchived,
            Self::NothingToChange => ErrorCode::EmptyUpdate,
            Self::DuplicateMessage => ErrorCode::DuplicateMessage,
            Self::NotAUserMessage => ErrorCode::NotAUserMessage,
            Self::ShareNotFound => ErrorCode::NotFound,
            Self::TooManyShares { .. } => ErrorCode::TooManyShares,
            Self::InvalidImport { .. } => ErrorCode::InvalidImport,
            Self::InvalidTitle { .. } => ErrorCode::InvalidTitle,
            Self::InvalidModel { .. } => ErrorCode::InvalidModel,
            Self::UnknownModel => ErrorCode::UnknownModel,
            Self::InvalidSystemPrompt { .. } => ErrorCode::InvalidSystemPrompt,
            Self::InvalidMessage { .. } => ErrorCode::InvalidMessage,
            Self::ControlCharacter { .. } => ErrorCode::ControlCharacter,
            Self::InvisibleCharacter { .. } => ErrorCode::InvisibleCharacter,
            // Reply rejections answer the assistant worker (its commands), never an HTTP
            // client; these codes only matter if a route ever issues reply commands.
            Self::ReplyIdMismatch => ErrorCode::InvalidRequest,
            Self::MessageNotFound => ErrorCode::NotFound,
            Self::ReplyInProgress => ErrorCode::RequestInProgress,
            Self::ReplyAlreadyFinished | Self::ReplyNotOpen => ErrorCode::ConcurrentModification,
        }
    }
}

impl Coded for FileError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::AlreadyUploaded => ErrorCode::FileExists,
            Self::NotFound => ErrorCode::NotFound,
            Self::Deleted => ErrorCode::FileDeleted,
            Self::InvalidFileName { .. } => ErrorCode::InvalidFileName,
            Self::ControlCharacter { .. } => ErrorCode::ControlCharacter,
            Self::InvisibleCharacter { .. } => ErrorCode::InvisibleCharacter,
            Self::EmptyFile => ErrorCode::EmptyFile,
            // The media type, checksum and key are colloquy's own (sniffed, hashed, made),
            // and processing records come from the ingest worker: a refusal of one of these
            // is no client's mistake.
            Self::InvalidMediaType
            | Self::InvalidSha256
            | Self::InvalidStorageKey
            | Self::InvalidFailureCode { .. }
            | Self::InvalidFailureMessage { .. } => ErrorCode::InvalidRequest,
            Self::NotProcessing { .. } => ErrorCode::ConcurrentModification,
        }
    }
}

impl Coded for KnowledgeDocumentError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::AlreadyCreated => ErrorCode::DocumentExists,
            Self::NotFound => ErrorCode::NotFound,
            Self::Deleted => ErrorCode::DocumentDeleted,
            Self::SourceFileNotFound => ErrorCode::SourceFileNotFound,
            Self::InvalidTitle { .. } => ErrorCode::InvalidTitle,
            Self::InvalidTag { .. } => ErrorCode::InvalidTag,
            Self::TooManyTags { .. } => ErrorCode::TooManyTags,
            Self::InvalidCategory { .. } => ErrorCode::InvalidCategory,
            Self::InvalidText { .. } => ErrorCode::InvalidText,
            Self::ControlCharacter { .. } => ErrorCode::ControlCharacter,
            Self::InvisibleCharacter { .. } => ErrorCode::InvisibleCharacter,
            Self::EmptyRevision => ErrorCode::EmptyUpdate,
            Self::FileSourcedText => ErrorCode::FileSourcedText,
            // Indexing records come from the ingest worker, never from a client.
            Self::StaleVersion { .. } | Self::UnknownVersion { .. } | Self::NotIndexing { .. } => {
                ErrorCode::ConcurrentModification
            }
            Self::InvalidChunking { .. }
            | Self::InvalidEmbeddingModel { .. }
            | Self::InvalidEmbeddingDimension
            | Self::InvalidFailureCode { .. }
            | Self::InvalidFailureMessage { .. } => ErrorCode::InvalidRequest,
        }
    }
}

impl Coded for RegistrationRejection {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(e) => e.code(),
            Self::WeakPassword => ErrorCode::InvalidPassword,
            Self::EmailTaken => ErrorCode::EmailTaken,
        }
    }
}

impl Coded for LoginRejection {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidCredentials => ErrorCode::Unauthorized,
        }
    }
}

impl Coded for RefreshRejection {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid | Self::Reused => ErrorCode::Unauthorized,
        }
    }
}

impl<R: Coded + Send + Sync + 'static> From<UseCaseError<R>> for ApiError {
    fn from(e: UseCaseError<R>) -> Self {
        let code = match &e {
            UseCaseError::Rejected { rejection, replayed } => {
                return Self::Coded { code: rejection.code(), message: rejection.to_string(), replayed: *replayed };
            }
            UseCaseError::Conflict => ErrorCode::ConcurrentModification,
            UseCaseError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            UseCaseError::RequestInProgress => ErrorCode::RequestInProgress,
            UseCaseError::Failed(Failure::Passwords(PasswordError::Overloaded)) => {
                return Self::new(ErrorCode::Overloaded, "too many requests are being processed; retry shortly");
            }
            UseCaseError::QuotaExceeded(q) => match q.quota {
                Quota::Conversations => ErrorCode::ConversationQuotaExceeded,
                Quota::MessagesPerDay => ErrorCode::MessageQuotaExceeded,
                Quota::StoredBytes => ErrorCode::StorageQuotaExceeded,
            },
            UseCaseError::TokenQuotaExceeded(spent) => {
                return Self::TokensSpent { message: spent.to_string(), resets_at: spent.resets_at };
            }
            UseCaseError::Failed(_) => return Self::internal(e),
        };
        Self::new(code, e.to_string())
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let code = match &e {
            QueryError::NotFound(_) => ErrorCode::NotFound,
            QueryError::NotYetVisible { .. } => ErrorCode::Unavailable,
            QueryError::InvalidLimit | QueryError::InvalidEventsLimit => ErrorCode::InvalidLimit,
            QueryError::InvalidCursor => ErrorCode::InvalidCursor,
            QueryError::InvalidMinVersion => ErrorCode::InvalidMinVersion,
            QueryError::MinVersionNeedsConversation => ErrorCode::MinVersionNeedsConversationId,
            QueryError::InvalidRange => ErrorCode::InvalidQuery,
            QueryError::Failed(_) => return Self::internal(e),
        };
        Self::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;
    use colloquy_commands::command_service::StoreError;
    use colloquy_commands::quotas::QuotaExceeded;
    use colloquy_commands::{CommandError, Failure};
    use colloquy_domain::values::TextField;
    use colloquy_projections::queries::Resource;

    use super::*;

    async fn body_of(e: &ApiError) -> serde_json::Value {
        let bytes = to_bytes(e.error_response().into_body()).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn rejected<R: Coded + Send + Sync + 'static>(r: R) -> ApiError {
        UseCaseError::<R>::rejected(r).into()
    }

    fn quota(quota: Quota) -> ApiError {
        UseCaseError::<ConversationError>::QuotaExceeded(QuotaExceeded { quota, limit: 3 }).into()
    }

    /// Every rejection and failure the layers below can give, with the status and code it
    /// is answered with.
    fn every_mapping() -> Vec<(ApiError, u16, &'static str)> {
        use ConversationError as C;
        use UserError as U;
        vec![
            (rejected(U::AlreadyRegistered), 409, "already_registered"),
            (rejected(U::NotRegistered), 404, "not_found"),
            (rejected(U::Deactivated), 409, "user_deactivated"),
            (rejected(U::InvalidEmail), 422, "invalid_email"),
            (rejected(U::InvalidFullName { max: 200 }), 422, "invalid_full_name"),
            (rejected(U::InvalidModel { max: 200 }), 422, "invalid_model"),
            (rejected(U::InvalidSystemPrompt { max: 9 }), 422, "invalid_system_prompt"),
            (rejected(U::EmptyUpdate), 422, "empty_update"),
            (rejected(C::AlreadyStarted), 409, "conversation_exists"),
            (rejected(C::NotFound), 404, "not_found"),
            (rejected(C::Deleted), 409, "conversation_deleted"),
            (rejected(C::Archived), 409, "conversation_archived"),
            (rejected(C::AlreadyArchived), 409, "already_archived"),
            (rejected(C::NotArchived), 409, "not_archived"),
            (rejected(C::InvalidTitle { max: 200 }), 422, "invalid_title"),
            (rejected(C::InvalidModel { max: 200 }), 422, "invalid_model"),
            (rejected(C::InvalidSystemPrompt { max: 9 }), 422, "invalid_system_prompt"),
            (rejected(C::InvalidMessage { max: 9 }), 422, "invalid_message"),
            (rejected(C::DuplicateMessage), 409, "duplicate_message"),
            (rejected(C::NotAUserMessage), 422, "not_a_user_message"),
            (rejected(C::ShareNotFound), 404, "not_found"),
            (rejected(C::TooManyShares { max: 20 }), 422, "too_many_shares"),
            (rejected(U::TooManyApiKeys { max: 20 }), 422, "too_many_api_keys"),
            (rejected(U::InvalidApiKeyName { max: 100 }), 422, "invalid_api_key_name"),
            (rejected(U::ApiKeyNotFound), 404, "not_found"),
            (rejected(C::InvalidImport { reason: "x".into() }), 422, "invalid_import"),
            (rejected(C::ControlCharacter { field: TextField::Message }), 422, "control_character"),
            (rejected(C::InvisibleCharacter { field: TextField::Title }), 422, "invisible_character"),
            (rejected(U::ControlCharacter { field: TextField::FullName }), 422, "control_character"),
            (rejected(U::InvisibleCharacter { field: TextField::FullName }), 422, "invisible_character"),
            (quota(Quota::Conversations), 429, "conversation_quota_exceeded"),
            (quota(Quota::MessagesPerDay), 429, "message_quota_exceeded"),
            (quota(Quota::StoredBytes), 429, "storage_quota_exceeded"),
            (rejected(C::NothingToChange), 422, "empty_update"),
            (rejected(FileError::AlreadyUploaded), 409, "file_exists"),
            (rejected(FileError::NotFound), 404, "not_found"),
            (rejected(FileError::Deleted), 409, "file_deleted"),
            (rejected(FileError::InvalidFileName { max: 255 }), 422, "invalid_file_name"),
            (rejected(FileError::EmptyFile), 422, "empty_file"),
            (rejected(FileError::ControlCharacter { field: TextField::FileName }), 422, "control_character"),
            (rejected(KnowledgeDocumentError::AlreadyCreated), 409, "document_exists"),
            (rejected(KnowledgeDocumentError::NotFound), 404, "not_found"),
            (rejected(KnowledgeDocumentError::Deleted), 409, "document_deleted"),
            (rejected(KnowledgeDocumentError::SourceFileNotFound), 422, "source_file_not_found"),
            (rejected(KnowledgeDocumentError::InvalidTitle { max: 200 }), 422, "invalid_title"),
            (rejected(KnowledgeDocumentError::InvalidTag { max: 50 }), 422, "invalid_tag"),
            (rejected(KnowledgeDocumentError::TooManyTags { max: 20 }), 422, "too_many_tags"),
            (rejected(KnowledgeDocumentError::InvalidCategory { max: 100 }), 422, "invalid_category"),
            (rejected(KnowledgeDocumentError::InvalidText { max: 9 }), 422, "invalid_text"),
            (rejected(KnowledgeDocumentError::EmptyRevision), 422, "empty_update"),
            (rejected(KnowledgeDocumentError::FileSourcedText), 422, "file_sourced_text"),
            (QueryError::NotFound(Resource::File).into(), 404, "not_found"),
            (QueryError::NotFound(Resource::Document).into(), 404, "not_found"),
            (rejected(RegistrationRejection::Invalid(U::InvalidEmail)), 422, "invalid_email"),
            (rejected(RegistrationRejection::WeakPassword), 422, "invalid_password"),
            (rejected(RegistrationRejection::EmailTaken), 409, "email_taken"),
            (rejected(LoginRejection::InvalidCredentials), 401, "unauthorized"),
            (rejected(RefreshRejection::Invalid), 401, "unauthorized"),
            (rejected(RefreshRejection::Reused), 401, "unauthorized"),
            (UseCaseError::<LoginRejection>::from(PasswordError::Overloaded).into(), 503, "overloaded"),
            (UseCaseError::<C>::Conflict.into(), 409, "concurrent_modification"),
            (UseCaseError::<C>::from(CommandError::<C>::Conflict).into(), 409, "concurrent_modification"),
            (UseCaseError::<C>::IdempotencyKeyReused.into(), 422, "idempotency_key_reused"),
            (UseCaseError::<C>::RequestInProgress.into(), 409, "request_in_progress"),
            (QueryError::NotFound(Resource::Conversation).into(), 404, "not_found"),
            (QueryError::NotFound(Resource::User).into(), 404, "not_found"),
            (QueryError::NotYetVisible { min_version: 3 }.into(), 503, "unavailable"),
            (QueryError::InvalidLimit.into(), 400, "invalid_limit"),
            (QueryError::InvalidEventsLimit.into(), 400, "invalid_limit"),
            (QueryError::InvalidCursor.into(), 400, "invalid_cursor"),
            (QueryError::InvalidMinVersion.into(), 400, "invalid_min_version"),
            (QueryError::InvalidRange.into(), 400, "invalid_query"),
            (QueryError::MinVersionNeedsConversation.into(), 400, "min_version_needs_conversation_id"),
            (ApiError::RateLimited { retry_after_secs: 3 }, 429, "rate_limited"),
            (tokens_spent(), 429, "token_quota_exceeded"),
            (ApiError::not_found("route"), 404, "not_found"),
            (ApiError::unauthorized("no token"), 401, "unauthorized"),
        ]
    }

    #[actix_web::test]
    async fn every_outcome_maps_to_its_status_and_stable_code() {
        for (error, status, code) in every_mapping() {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
            let body = body_of(&error).await;
            assert_eq!(body["error"]["code"], code, "{error:?}");
            assert!(!body["error"]["message"].as_str().unwrap_or_default().is_empty(), "{error:?}");
        }
    }

    #[actix_web::test]
    async fn internal_errors_hide_their_cause() {
        let cause: Box<dyn std::error::Error + Send + Sync> = "password=hunter2 at db:5432".into();
        let failures: Vec<ApiError> = vec![
            UseCaseError::<ConversationError>::Failed(Failure::Store(StoreError::from(cause))).into(),
            QueryError::Failed(sqlx::Error::PoolTimedOut.into()).into(),
        ];
        for error in failures {
            assert_eq!(error.status_code().as_u16(), 500);
            let body = body_of(&error).await.to_string();
            assert!(!body.contains("hunter2") && !body.contains("pool"), "{body}");
            assert!(body.contains("\"internal\""));
        }
    }

    fn tokens_spent() -> ApiError {
        let spent = colloquy_commands::quotas::TokenQuotaExceeded {
            period: colloquy_commands::quotas::TokenPeriod::Day,
            limit: 100,
            used: 120,
            resets_at: chrono::Utc::now() + chrono::Duration::seconds(90),
        };
        UseCaseError::<ConversationError>::TokenQuotaExceeded(spent).into()
    }

    #[actix_web::test]
    async fn a_spent_token_quota_says_when_it_resets() {
        let error = tokens_spent();
        let response = error.error_response();
        let wait: i64 = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap();
        assert!((85..=90).contains(&wait), "{wait}");
        let body = body_of(&error).await;
        let resets_at: chrono::DateTime<chrono::Utc> = body["error"]["resets_at"].as_str().unwrap().parse().unwrap();
        assert!(resets_at > chrono::Utc::now(), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("120 of 100"), "{body}");
    }

    #[test]
    fn rate_limited_answers_carry_retry_after() {
        let response = ApiError::RateLimited { retry_after_secs: 7 }.error_response();
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    }

    #[test]
    fn overloaded_answers_carry_retry_after() {
        let error: ApiError = UseCaseError::<RegistrationRejection>::from(PasswordError::Overloaded).into();
        let response = error.error_response();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    }

    #[test]
    fn replayed_rejections_say_so() {
        let error: ApiError = UseCaseError::Rejected { rejection: ConversationError::Archived, replayed: true }.into();
        let response = error.error_response();
        assert_eq!(response.status().as_u16(), 409);
        assert_eq!(response.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    }
}
