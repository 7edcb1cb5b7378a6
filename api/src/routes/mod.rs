//! HTTP routes, one module per resource; each exposes `configure`.

pub mod auth;
pub mod conversations;
pub mod health;
pub mod users;

use std::time::Duration;

use actix_web::web;
use serde::Deserialize;

use crate::errors::ApiError;
use crate::state::AppState;

/// `?min_version=N`: wait until the named projections reached version N of the aggregate.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Freshness {
    /// Wait (a few seconds at most) until the read model reflects this aggregate version.
    pub min_version: Option<i64>,
}

/// Waits for `min_version` of `aggregate_id` in `projections`, or answers 503.
pub async fn await_version(
    state: &web::Data<AppState>,
    projections: &[&str],
    aggregate_id: &str,
    min_version: Option<i64>,
) -> Result<(), ApiError> {
    let Some(min) = min_version else { return Ok(()) };
    if min < 0 {
        return Err(ApiError::bad_request("invalid_min_version", "min_version must not be negative"));
    }
    let timeout = Duration::from_millis(state.settings.http.min_version_wait_ms);
    state.metrics.min_version_waiting.inc();
    let reached =
        colloquy_projections::freshness::wait_for_version(&state.pool, projections, aggregate_id, min, timeout).await;
    state.metrics.min_version_waiting.dec();
    if reached? {
        Ok(())
    } else {
        Err(ApiError::Unavailable(format!("the read model has not reached version {min} yet; retry shortly")))
    }
}

/// A resource whose unsupported methods answer 405 in the API's error format, with the
/// `Allow` header listing `allow`.
pub fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let mut response = actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed);
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, actix_web::http::header::HeaderValue::from_static(allow));
        response
    }))
}

/// All API routes under `/api/v1`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .configure(auth::configure)
            .configure(users::configure)
            .configure(conversations::configure),
    );
}
