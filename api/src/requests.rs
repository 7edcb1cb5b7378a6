//! Per-request context and the answers every command route gives.

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use colloquy_commands::Answer;
use serde::Serialize;
use tracing_actix_web::RequestId;

/// The request header carrying a client's Idempotency-Key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The response header marking a replayed answer.
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";

/// The request's id (also sent back in `x-request-id`).
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions().get::<RequestId>().map(|r| r.to_string()).unwrap_or_default()
}

/// The id that ties a chain of requests together: a caller-supplied `X-Correlation-Id`, or
/// else the request id.
pub fn correlation_id(req: &HttpRequest) -> String {
    req.headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 100)
        .map(String::from)
        .unwrap_or_else(|| request_id(req))
}

/// A use case's answer with `status`, marked when it was replayed for an Idempotency-Key.
pub fn answer<T: Serialize>(status: StatusCode, answer: Answer<T>) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if answer.replayed {
        response.insert_header((REPLAYED_HEADER, "true"));
    }
    response.json(answer.value)
}
