//! HTTP routes, one module per resource; each exposes `configure`.

pub mod api_keys;
pub mod auth;
pub mod branches;
pub mod conversations;
pub mod files;
pub mod health;
pub mod knowledge;
pub mod models;
pub mod openai;
pub mod replies;
pub mod shares;
pub mod users;
pub mod ws;

use actix_web::web;
use serde::Deserialize;

use crate::errors::{ApiError, ErrorCode};

/// `?min_version=N`: wait until the named projections reached version N of the aggregate.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Freshness {
    /// Wait (a few seconds at most) until the read model reflects this aggregate version.
    pub min_version: Option<i64>,
}

/// A resource whose unsupported methods answer 405 in the API's error format, with the
/// `Allow` header listing `allow`.
pub fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let error = ApiError::new(ErrorCode::MethodNotAllowed, "this method is not allowed on this route");
        let mut response = actix_web::ResponseError::error_response(&error);
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, actix_web::http::header::HeaderValue::from_static(allow));
        response
    }))
}

/// `Cache-Control: no-store` on every answer of a resource (tokens, profiles): for its
/// errors and 405s too, so that no shared cache keeps any of it.
pub fn no_store() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new().add((actix_web::http::header::CACHE_CONTROL, "no-store"))
}

/// All API routes under `/api/v1`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .configure(auth::configure)
            .configure(api_keys::configure)
            .configure(users::configure)
            .configure(conversations::configure)
            .configure(branches::configure)
            .configure(files::configure)
            .configure(knowledge::configure)
            .configure(models::configure)
            .configure(replies::configure)
            .configure(shares::configure)
            .configure(ws::configure),
    );
}
