//! Per-request context: the request id and the command metadata derived from it.

use actix_web::{HttpMessage, HttpRequest};
use colloquy_commands::CommandMeta;
use tracing_actix_web::RequestId;

/// The request's id (also sent back in `x-request-id`).
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions().get::<RequestId>().map(|r| r.to_string()).unwrap_or_default()
}

/// Metadata for the events a request's command produces. A caller-supplied
/// `X-Correlation-Id` ties a chain of requests together; otherwise the request id does.
pub fn command_meta(req: &HttpRequest, actor: String) -> CommandMeta {
    let request = request_id(req);
    let correlation = req
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 100)
        .map(String::from)
        .unwrap_or_else(|| request.clone());
    CommandMeta { actor, correlation_id: correlation, causation_id: Some(format!("request:{request}")) }
}
