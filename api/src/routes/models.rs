//! `GET /models`: the models this deployment answers with (`assistant.models`).

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::state::AppState;

/// A model clients may name on a conversation or a message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    /// The name to use.
    pub id: String,
    /// Tokens of prompt and answer together the model takes.
    pub context_window: usize,
    /// Most tokens of one answer.
    pub max_output_tokens: u32,
    /// Whether it is the deployment's default.
    pub default: bool,
}

/// The configured models.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Every model, by name.
    pub data: Vec<ModelView>,
}

/// Lists the models.
#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    responses((status = 200, body = ModelList)), security(("bearer" = [])))]
pub async fn get_models(state: web::Data<AppState>, _me: Authenticated) -> Result<HttpResponse, ApiError> {
    let assistant = &state.settings.assistant;
    let data = assistant
        .models
        .iter()
        .map(|(id, m)| ModelView {
            id: id.clone(),
            context_window: m.context_window,
            max_output_tokens: m.max_output_tokens,
            default: *id == assistant.default_model,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ModelList { data }))
}

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/models", "GET").route(web::get().to(get_models)));
}
