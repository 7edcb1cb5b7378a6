//! `GET /v1/models` and `GET /v1/models/{model}`: the configured chat models (named as
//! `model` in chat completions) and the knowledge base's embedding model, in OpenAI's
//! `model` shape. `owned_by` is the provider of the model's first route target.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::errors::OpenAiError;
use crate::auth::ApiCaller;
use crate::state::AppState;

/// Every model this deployment answers with, as `(id, owned_by)`.
fn models(state: &AppState) -> Vec<(String, String)> {
    let mut models: Vec<(String, String)> = state
        .settings
        .assistant
        .models
        .iter()
        .map(|(id, m)| {
            let provider = m.route.first().and_then(|r| r.split_once('/')).map_or("colloquy", |(p, _)| p);
            (id.clone(), provider.to_string())
        })
        .collect();
    if let Some(embedder) = &state.embedder {
        if !models.iter().any(|(id, _)| id == embedder.model()) {
            models.push((embedder.model().to_string(), "colloquy".to_string()));
        }
    }
    models.sort();
    models
}

fn model_object((id, owned_by): (String, String)) -> Value {
    // colloquy does not know when a model was made: 0 (the field is required).
    json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by})
}

/// Lists the models.
pub async fn get_models(state: web::Data<AppState>, _me: ApiCaller) -> Result<HttpResponse, OpenAiError> {
    let data: Vec<Value> = models(&state).into_iter().map(model_object).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// One model (404 `model_not_found` for another name).
pub async fn get_model(
    state: web::Data<AppState>,
    _me: ApiCaller,
    name: web::Path<String>,
) -> Result<HttpResponse, OpenAiError> {
    let found = models(&state).into_iter().find(|(id, _)| *id == *name);
    found.map(|m| HttpResponse::Ok().json(model_object(m))).ok_or_else(|| OpenAiError::model_not_found(&name))
}
