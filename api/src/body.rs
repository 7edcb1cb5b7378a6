//! JSON bodies: size limits answered with 413, malformed JSON with 400, a body of the
//! wrong shape with 422 — all in the error format of the API.

use actix_web::error::JsonPayloadError;
use actix_web::web;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::errors::ApiError;

/// The `JsonConfig` for a route accepting at most `limit` bytes.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(move |err, _req| {
        let api = match &err {
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                ApiError::PayloadTooLarge { limit }
            }
            JsonPayloadError::ContentType => {
                ApiError::bad_request("unsupported_content_type", "send the body as application/json")
            }
            JsonPayloadError::Deserialize(e) => ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")),
            other => ApiError::bad_request("invalid_body", other.to_string()),
        };
        actix_web::Error::from(api)
    })
}

/// Reads a request type out of a JSON value; a wrong shape is a 422 naming the problem.
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::unprocessable("invalid_request", e.to_string()))
}
