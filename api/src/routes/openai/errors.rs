//! Errors of the OpenAI-compatible routes in OpenAI's shape,
//! `{"error": {"message", "type", "param", "code"}}`, so that OpenAI's client libraries
//! raise their usual exceptions (`AuthenticationError`, `NotFoundError`, `RateLimitError`,
//! `BadRequestError`, ...). The status and headers (`Retry-After`, `WWW-Authenticate`) are
//! the API's own; a request the API would refuse with 422 is a 400 here, as OpenAI answers.
//! `code` is OpenAI's where clients look for one (`invalid_api_key`, `model_not_found`,
//! `rate_limit_exceeded`, `insufficient_quota`, `context_length_exceeded`), else colloquy's
//! stable code.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::errors::{ApiError, ErrorCode};

/// An error answered on `/v1/...`.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    /// One of the API's errors, with the request field it is about, if any.
    #[error("{inner}")]
    Api {
        /// The error.
        inner: ApiError,
        /// The request field it is about (OpenAI's `param`).
        param: Option<&'static str>,
    },
    /// A reply that ended without an answer (the model failed, or the wait ran out).
    #[error("{message}")]
    Reply {
        /// The status.
        status: StatusCode,
        /// OpenAI's error type.
        kind: &'static str,
        /// The reply's failure code.
        code: String,
        /// For people.
        message: String,
    },
}

impl From<ApiError> for OpenAiError {
    fn from(inner: ApiError) -> Self {
        Self::Api { inner, param: None }
    }
}

impl OpenAiError {
    /// A malformed or unsupported request (400), about `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::Api { inner: ApiError::new(ErrorCode::InvalidRequest, message), param: Some(param) }
    }

    /// `model` names no model of this deployment (404 `model_not_found`).
    pub fn model_not_found(model: &str) -> Self {
        let message = format!("The model `{model}` does not exist or you do not have access to it.");
        Self::Api { inner: ApiError::new(ErrorCode::UnknownModel, message), param: Some("model") }
    }

    /// The same error about `param`.
    pub fn about(self, param: &'static str) -> Self {
        match self {
            Self::Api { inner, .. } => Self::Api { inner, param: Some(param) },
            other => other,
        }
    }

    fn body(&self) -> (&'static str, String, Option<&'static str>, String) {
        match self {
            Self::Reply { kind, code, message, .. } => (kind, code.clone(), None, message.clone()),
            Self::Api { inner, param } => {
                let colloquy = inner.code();
                let (kind, code) = match colloquy {
                    ErrorCode::Unauthorized => ("invalid_request_error", "invalid_api_key".to_string()),
                    ErrorCode::UnknownModel => ("invalid_request_error", "model_not_found".to_string()),
                    ErrorCode::RateLimited => ("requests", "rate_limit_exceeded".to_string()),
                    ErrorCode::TokenQuotaExceeded
                    | ErrorCode::MessageQuotaExceeded
                    | ErrorCode::StorageQuotaExceeded => ("insufficient_quota", "insufficient_quota".to_string()),
                    c if c.status().is_server_error() => ("server_error", code_name(c)),
                    c => ("invalid_request_error", code_name(c)),
                };
                let message = match inner {
                    ApiError::Internal(_) => {
                        "something went wrong on our side; the request id identifies it in our logs".to_string()
                    }
                    other => other.to_string(),
                };
                (kind, code, *param, message)
            }
        }
    }
}

fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Reply { status, .. } => *status,
            // OpenAI answers an unknown model with 404 (colloquy's own routes with 422).
            Self::Api { inner, .. } if inner.code() == ErrorCode::UnknownModel => StatusCode::NOT_FOUND,
            Self::Api { inner, .. } => match inner.status_code() {
                StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                status => status,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status_code());
        if let Self::Api { inner, .. } = self {
            // The API's own answer logs what must be logged and carries the headers.
            let own = inner.error_response();
            for (name, value) in own.headers() {
                if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                    builder.append_header((name.clone(), value.clone()));
                }
            }
        }
        let (kind, code, param, message) = self.body();
        builder.json(json!({"error": {"message": message, "type": kind, "param": param, "code": code}}))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;
    use serde_json::Value;

    use super::*;

    async fn answer(e: OpenAiError) -> (u16, Option<String>, Value) {
        let response = e.error_response();
        let status = response.status().as_u16();
        let retry = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string());
        let body = to_bytes(response.into_body()).await.unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn errors_take_openais_shape_status_and_codes() {
        let (status, _, body) = answer(ApiError::unauthorized("no key").into()).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], Value::Null);
        let (status, _, body) = answer(OpenAiError::model_not_found("gpt-9")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str(), body["error"]["param"].as_str()),
            (404, Some("model_not_found"), Some("model"))
        );
        let (status, _, body) = answer(OpenAiError::invalid("n", "only n = 1 is supported")).await;
        assert_eq!((status, body["error"]["param"].as_str()), (400, Some("n")));
        assert_eq!(body["error"]["message"], "only n = 1 is supported");
        let (status, retry, body) = answer(ApiError::RateLimited { retry_after_secs: 3 }.into()).await;
        assert_eq!(
            (status, retry.as_deref(), body["error"]["code"].as_str()),
            (429, Some("3"), Some("rate_limit_exceeded"))
        );
        let (status, _, body) = answer(ApiError::internal(std::io::Error::other("secret detail")).into()).await;
        assert_eq!((status, body["error"]["type"].as_str()), (500, Some("server_error")));
        assert!(!body.to_string().contains("secret detail"));
        let reply = OpenAiError::Reply {
            status: StatusCode::BAD_GATEWAY,
            kind: "server_error",
            code: "provider_error".into(),
            message: "upstream closed".into(),
        };
        let (status, _, body) = answer(reply).await;
        assert_eq!((status, body["error"]["code"].as_str()), (502, Some("provider_error")));
    }
}
