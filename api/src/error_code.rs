//! Every stable error code the API answers, with its HTTP status. Clients branch on these;
//! the OpenAPI document lists them (`ErrorCode` schema), and the end-to-end tests fail on
//! any answered code this enum does not declare.

use actix_web::http::StatusCode;
use serde::{Deserialize, Serialize};

/// A stable, snake_case error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // The request itself.
    /// The body is not valid JSON.
    InvalidJson,
    /// The body could not be read.
    InvalidBody,
    /// The body is JSON of the wrong shape.
    InvalidRequest,
    /// The query string is malformed.
    InvalidQuery,
    /// The Idempotency-Key header is malformed.
    InvalidIdempotencyKey,
    /// `limit` is out of range.
    InvalidLimit,
    /// `cursor` was not issued by this API.
    InvalidCursor,
    /// `min_version` is negative.
    InvalidMinVersion,
    /// `min_version` on the list needs `conversation_id`.
    MinVersionNeedsConversationId,
    /// `Last-Event-ID` is not an event id of a reply stream.
    InvalidLastEventId,
    /// The route speaks WebSocket only: the request was no WebSocket upgrade.
    WebsocketRequired,
    /// The body is larger than the limit.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// No such route, or no such object for this user.
    NotFound,
    /// The route exists, the method does not.
    MethodNotAllowed,
    // Authentication and limits.
    /// Missing, invalid or expired credentials.
    Unauthorized,
    /// Too many requests; see `Retry-After`.
    RateLimited,
    // Users.
    /// The user is already registered.
    AlreadyRegistered,
    /// The account is deactivated.
    UserDeactivated,
    /// The e-mail address is not valid.
    InvalidEmail,
    /// The full name is empty or too long.
    InvalidFullName,
    /// The password is too short or too long.
    InvalidPassword,
    /// The e-mail address is already registered.
    EmailTaken,
    /// A profile update that changes nothing.
    EmptyUpdate,
    /// The API key name is empty or too long.
    InvalidApiKeyName,
    /// The user has as many live API keys as allowed; revoke one first.
    TooManyApiKeys,
    // Conversations.
    /// A conversation with this id exists.
    ConversationExists,
    /// The conversation was deleted.
    ConversationDeleted,
    /// The conversation is archived.
    ConversationArchived,
    /// The conversation is already archived.
    AlreadyArchived,
    /// The conversation is not archived.
    NotArchived,
    /// A message with this id exists in the conversation.
    DuplicateMessage,
    /// Only user messages can be edited (a reply is regenerated instead).
    NotAUserMessage,
    /// The conversation has as many live shares as allowed; revoke one first.
    TooManyShares,
    /// The body is not an export colloquy can import (format, version, or a broken tree).
    InvalidImport,
    /// The reply has already ended (completed, failed or cancelled).
    ReplyFinished,
    /// The title is empty or too long.
    InvalidTitle,
    /// The model name is empty or too long.
    InvalidModel,
    /// The model is not one of `GET /api/v1/models`.
    UnknownModel,
    /// The system prompt is empty or too long.
    InvalidSystemPrompt,
    /// The message is empty or too long.
    InvalidMessage,
    // Text.
    /// Text holds a control character (NUL, ESC, ...) where it may not: message text allows
    /// only line breaks and tabs; names, titles, models and prompts likewise.
    ControlCharacter,
    /// A title, name, model name or system prompt holds a bidirectional-override/isolate or
    /// zero-width character.
    InvisibleCharacter,
    // Quotas.
    /// The user has as many conversations as allowed; delete one first.
    ConversationQuotaExceeded,
    /// The user posted as many messages today (UTC) as allowed.
    MessageQuotaExceeded,
    /// The day's or the month's token quota is spent (`resets_at` says until when).
    TokenQuotaExceeded,
    /// The user stores as much text as allowed.
    StorageQuotaExceeded,
    // Files and the knowledge base.
    /// The upload is no `multipart/form-data` body with exactly one part named `file`.
    InvalidUpload,
    /// The file is larger than the upload limit; nothing was kept.
    FileTooLarge,
    /// The file's bytes are of a type the knowledge base does not read (decided from the
    /// content, never from the client's Content-Type or file name).
    UnsupportedFileType,
    /// A file with this id exists.
    FileExists,
    /// The file was deleted.
    FileDeleted,
    /// The file name is empty, too long, or holds control or invisible characters.
    InvalidFileName,
    /// The file has no bytes.
    EmptyFile,
    /// A knowledge document with this id exists.
    DocumentExists,
    /// The knowledge document was deleted.
    DocumentDeleted,
    /// `file_id` names no file of the caller's (or a deleted one).
    SourceFileNotFound,
    /// A tag is empty or too long.
    InvalidTag,
    /// Too many tags.
    TooManyTags,
    /// The category is empty or too long.
    InvalidCategory,
    /// The text is blank or too long.
    InvalidText,
    /// The text of a document made from a file cannot be edited.
    FileSourcedText,
    /// A search without words, or with `k` out of range.
    InvalidSearch,
    /// Vector search needs the embedder, which this API instance does not have.
    EmbedderUnavailable,
    // Commands in general.
    /// The resource changed concurrently; retry.
    ConcurrentModification,
    /// The Idempotency-Key was used with a different request.
    IdempotencyKeyReused,
    /// The first request with this Idempotency-Key is still running.
    RequestInProgress,
    // The service.
    /// A dependency is down, or the read model did not reach `min_version` in time.
    Unavailable,
    /// Too much work queued (password hashing); retry after `Retry-After` seconds.
    Overloaded,
    /// An unexpected failure; the request id identifies it in the logs.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: &'static [ErrorCode] = &[
        Self::InvalidJson,
        Self::InvalidBody,
        Self::InvalidRequest,
        Self::InvalidQuery,
        Self::InvalidIdempotencyKey,
        Self::InvalidLimit,
        Self::InvalidCursor,
        Self::InvalidMinVersion,
        Self::MinVersionNeedsConversationId,
        Self::InvalidLastEventId,
        Self::WebsocketRequired,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Unauthorized,
        Self::RateLimited,
        Self::AlreadyRegistered,
        Self::UserDeactivated,
        Self::InvalidEmail,
        Self::InvalidFullName,
        Self::InvalidPassword,
        Self::EmailTaken,
        Self::EmptyUpdate,
        Self::InvalidApiKeyName,
        Self::TooManyApiKeys,
        Self::ConversationExists,
        Self::ConversationDeleted,
        Self::ConversationArchived,
        Self::AlreadyArchived,
        Self::NotArchived,
        Self::DuplicateMessage,
        Self::NotAUserMessage,
        Self::TooManyShares,
        Self::InvalidImport,
        Self::ReplyFinished,
        Self::InvalidTitle,
        Self::InvalidModel,
        Self::UnknownModel,
        Self::InvalidSystemPrompt,
        Self::InvalidMessage,
        Self::ControlCharacter,
        Self::InvisibleCharacter,
        Self::ConversationQuotaExceeded,
        Self::MessageQuotaExceeded,
        Self::TokenQuotaExceeded,
        Self::StorageQuotaExceeded,
        Self::InvalidUpload,
        Self::FileTooLarge,
        Self::UnsupportedFileType,
        Self::FileExists,
        Self::FileDeleted,
        Self::InvalidFileName,
        Self::EmptyFile,
        Self::DocumentExists,
        Self::DocumentDeleted,
        Self::SourceFileNotFound,
        Self::InvalidTag,
        Self::TooManyTags,
        Self::InvalidCategory,
        Self::InvalidText,
        Self::FileSourcedText,
        Self::InvalidSearch,
        Self::EmbedderUnavailable,
        Self::ConcurrentModification,
        Self::IdempotencyKeyReused,
        Self::RequestInProgress,
        Self::Unavailable,
        Self::Overloaded,
        Self::Internal,
    ];

    /// The HTTP status it is answered with.
    pub fn status(self) -> StatusCode {
        use ErrorCode as C;
        match self {
            C::InvalidJson
            | C::InvalidBody
            | C::InvalidQuery
            | C::InvalidIdempotencyKey
            | C::InvalidLimit
            | C::InvalidCursor
            | C::InvalidMinVersion
            | C::MinVersionNeedsConversationId
            | C::InvalidLastEventId
            | C::WebsocketRequired
            | C::InvalidUpload
            | C::InvalidSearch => StatusCode::BAD_REQUEST,
            C::Unauthorized => StatusCode::UNAUTHORIZED,
            C::NotFound => StatusCode::NOT_FOUND,
            C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            C::AlreadyRegistered
            | C::UserDeactivated
            | C::EmailTaken
            | C::ConversationExists
            | C::ConversationDeleted
            | C::ConversationArchived
            | C::AlreadyArchived
            | C::NotArchived
            | C::DuplicateMessage
            | C::ReplyFinished
            | C::FileExists
            | C::FileDeleted
            | C::DocumentExists
            | C::DocumentDeleted
            | C::ConcurrentModification
            | C::RequestInProgress => StatusCode::CONFLICT,
            C::PayloadTooLarge | C::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            C::UnsupportedMediaType | C::UnsupportedFileType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            C::InvalidRequest
            | C::InvalidEmail
            | C::InvalidFullName
            | C::InvalidPassword
            | C::EmptyUpdate
            | C::InvalidApiKeyName
            | C::TooManyApiKeys
            | C::InvalidTitle
            | C::InvalidModel
            | C::UnknownModel
            | C::InvalidSystemPrompt
            | C::InvalidMessage
            | C::NotAUserMessage
            | C::TooManyShares
            | C::InvalidImport
            | C::ControlCharacter
            | C::InvisibleCharacter
            | C::InvalidFileName
            | C::EmptyFile
            | C::SourceFileNotFound
            | C::InvalidTag
            | C::TooManyTags
            | C::InvalidCategory
            | C::InvalidText
            | C::FileSourcedText
            | C::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            C::RateLimited
            | C::ConversationQuotaExceeded
            | C::MessageQuotaExceeded
            | C::StorageQuotaExceeded
            | C::TokenQuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            C::Unavailable | C::Overloaded | C::EmbedderUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            C::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once_with_a_snake_case_name() {
        let mut names: Vec<String> =
            ErrorCode::ALL.iter().map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_string()).collect();
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')), "{names:?}");
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            let back: ErrorCode = serde_json::from_value(serde_json::to_value(code).unwrap()).unwrap();
            assert_eq!(back, *code);
        }
    }

    #[test]
    fn client_errors_are_4xx_and_service_errors_5xx() {
        for code in ErrorCode::ALL {
            let service = matches!(
                code,
                ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::EmbedderUnavailable | ErrorCode::Internal
            );
            assert_eq!(code.status().is_server_error(), service, "{code:?}");
        }
    }
}
