//! `POST /v1/embeddings`: vectors from the knowledge base's embedder (the local
//! all-MiniLM-L6-v2 by default, or the configured embeddings API), in OpenAI's shape, as
//! floats or as base64 (OpenAI's Python library asks for base64 unless told otherwise).
//! `input` is a string or a list of strings (token arrays are refused); `model` must be
//! the embedder's. `usage.prompt_tokens` is counted with `cl100k_base`, an estimate for
//! models with another tokenizer. Embeddings are not chat calls: they are not in the usage
//! ledger and do not spend token quotas; the per-user rate limit applies.

use actix_web::{web, HttpResponse};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::OpenAiError;
use crate::auth::ApiCaller;
use crate::errors::{ApiError, ErrorCode};
use crate::state::AppState;

/// Largest request body.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Most texts in one request.
pub const MAX_INPUTS: usize = 256;

/// Longest text, in characters.
pub const MAX_INPUT_CHARS: usize = 32_000;

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

/// The texts of `input`.
fn texts(input: Value) -> Result<Vec<String>, OpenAiError> {
    let invalid = |m: &str| OpenAiError::invalid("input", m);
    let texts = match input {
        Value::String(text) => vec![text],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(invalid("input must be a string or a list of strings (token arrays are not supported)")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid("input must be a string or a list of strings")),
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(invalid(&format!("input must hold 1 to {MAX_INPUTS} texts")));
    }
    if texts.iter().any(|t| t.trim().is_empty() || t.chars().count() > MAX_INPUT_CHARS) {
        return Err(invalid(&format!("every input must be 1 to {MAX_INPUT_CHARS} characters and not blank")));
    }
    Ok(texts)
}

/// A vector as OpenAI's base64 encoding: little-endian f32s.
fn base64_vector(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Creates embeddings.
pub async fn post_embeddings(
    state: web::Data<AppState>,
    _me: ApiCaller,
    payload: web::Payload,
) -> Result<HttpResponse, OpenAiError> {
    let body = super::read_body(payload, BODY_LIMIT).await?;
    let request: EmbeddingsRequest =
        serde_json::from_slice(&body).map_err(|e| OpenAiError::invalid("body", format!("invalid request: {e}")))?;
    let Some(embedder) = state.embedder.clone() else {
        return Err(ApiError::new(ErrorCode::EmbedderUnavailable, "this deployment has no embedder").into());
    };
    if request.model != embedder.model() {
        return Err(OpenAiError::model_not_found(&request.model));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err(OpenAiError::invalid("encoding_format", "encoding_format is `float` or `base64`")),
    };
    if request.dimensions.is_some_and(|d| d != embedder.dimension()) {
        let message = format!("{} makes vectors of {} dimensions only", embedder.model(), embedder.dimension());
        return Err(OpenAiError::invalid("dimensions", message));
    }
    let texts = texts(request.input)?;
    let tokens: usize = texts.iter().map(|t| colloquy_providers::tokens::estimate_text(t)).sum();
    let vectors = embedder.embed(&texts).await.map_err(|e| {
        tracing::warn!(error = %e, "Embeddings failed.");
        OpenAiError::from(ApiError::new(ErrorCode::EmbedderUnavailable, "the embedder is unavailable; retry later"))
    })?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 { json!(base64_vector(v)) } else { json!(v) };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": embedder.model(),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_strings_within_bounds() {
        assert_eq!(texts(json!("a")).unwrap(), vec!["a"]);
        assert_eq!(texts(json!(["a", "b"])).unwrap(), vec!["a", "b"]);
        for bad in [json!([1, 2, 3]), json!([[1, 2]]), json!([]), json!(""), json!(7), json!(["ok", " "])] {
            assert!(texts(bad.clone()).is_err(), "{bad}");
        }
        assert!(texts(json!(vec!["x"; MAX_INPUTS + 1])).is_err());
    }

    #[test]
    fn base64_vectors_are_little_endian_floats() {
        let encoded = base64_vector(&[1.0, -0.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat());
    }
}
