//! JSON bodies: size limits answered with 413, another content type with 415, malformed
//! JSON with 400, a body of the
//! wrong shape with 422 — all in the error format of the API.

use actix_web::error::JsonPayloadError;
use actix_web::web;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::errors::{ApiError, ErrorCode};

/// The `JsonConfig` for a route accepting at most `limit` bytes.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(move |err, _req| {
        let api = match &err {
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                ApiError::new(ErrorCode::PayloadTooLarge, format!("the request body exceeds {limit} bytes"))
            }
            JsonPayloadError::ContentType => {
                ApiError::new(ErrorCode::UnsupportedMediaType, "send the body as application/json")
            }
            JsonPayloadError::Deserialize(e) => {
                ApiError::new(ErrorCode::InvalidJson, format!("the body is not valid JSON: {e}"))
            }
            other => ApiError::new(ErrorCode::InvalidBody, other.to_string()),
        };
        actix_web::Error::from(api)
    })
}

/// Reads a request type out of a JSON value; a wrong shape is a 422 naming the problem.
/// Only objects are accepted: serde would otherwise also read a struct from an array
/// (`[null, null]`), which no client means.
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))
}

/// Reads a body that may be left out: none (or only whitespace) is `T::default()`, else it
/// is read like any JSON body (malformed: 400, wrong shape: 422).
pub fn optional<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("the body is not valid JSON: {e}")))?;
    parse(value)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::parse;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Update {
        a: Option<String>,
        b: Option<String>,
    }

    #[test]
    fn only_objects_are_requests() {
        assert!(parse::<Update>(json!({"a": "x"})).is_ok());
        for not_an_object in [json!([null, null]), json!("a"), json!(1), json!(null)] {
            let err = parse::<Update>(not_an_object).unwrap_err();
            assert_eq!(err.code(), crate::errors::ErrorCode::InvalidRequest);
        }
    }
}
