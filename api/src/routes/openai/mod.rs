//! The OpenAI-compatible API under `/v1`: chat completions, models and embeddings, so that
//! tools and client libraries written for OpenAI work with colloquy by changing their base
//! URL to `http://host/v1` and their key to a colloquy API key (or an access token). Errors
//! take OpenAI's shape on these routes ([`errors`]).

pub mod chat;
pub mod embeddings;
pub mod errors;
pub mod models;

use std::future::Future;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};

use self::errors::OpenAiError;
use crate::auth::ApiCaller;
use crate::errors::{ApiError, ErrorCode};

impl FromRequest for ApiCaller {
    type Error = OpenAiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, OpenAiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { ApiCaller::authenticate(&req).await.map_err(OpenAiError::from) })
    }
}

/// The request body, at most `limit` bytes (413 past it).
pub async fn read_body(payload: web::Payload, limit: usize) -> Result<web::Bytes, OpenAiError> {
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(ApiError::new(ErrorCode::InvalidBody, e.to_string()).into()),
        Err(_) => {
            Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("the request body exceeds {limit} bytes")).into())
        }
    }
}

/// A resource of `/v1` whose unsupported methods answer 405 in OpenAI's error shape.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let error =
            OpenAiError::from(ApiError::new(ErrorCode::MethodNotAllowed, "this method is not allowed on this route"));
        let mut response = actix_web::ResponseError::error_response(&error);
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, actix_web::http::header::HeaderValue::from_static(allow));
        response
    }))
}

/// Registers `/v1/...`; unknown routes under it answer 404 in OpenAI's shape.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .service(resource("/chat/completions", "POST").route(web::post().to(chat::post_chat_completions)))
            .service(resource("/models", "GET").route(web::get().to(models::get_models)))
            .service(resource("/models/{model:.+}", "GET").route(web::get().to(models::get_model)))
            .service(resource("/embeddings", "POST").route(web::post().to(embeddings::post_embeddings)))
            .default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(OpenAiError::from(ApiError::not_found("route")))
            })),
    );
}
