//! Embedders: text in, one vector per text out. [`OpenAiEmbedder`] calls any
//! OpenAI-compatible `/embeddings` endpoint; the local all-MiniLM-L6-v2 lives in
//! `colloquy-local` (the only crate that runs models).
//!
//! An embedder is configured with the dimension its vectors must have: the chunk index is a
//! pgvector column of that dimension, so a vector of another length (a model swapped behind
//! the same name, a misconfigured `dimensions`) is refused here rather than stored.

use std::sync::Arc;

use crate::{ErrorClass, OpenAiCompatible, ProviderError};

/// Turns texts into vectors.
#[async_trait::async_trait]
pub trait Embedder: Send + Sync {
    /// The model's name (`all-minilm-l6-v2`, `text-embedding-3-small`), recorded with the
    /// vectors so an index knows what made them.
    fn model(&self) -> &str;

    /// The length of every vector this embedder returns.
    fn dimension(&self) -> usize;

    /// The embedding space of its vectors, as the chunk index names it.
    fn space(&self) -> colloquy_infra::knowledge_index::EmbeddingSpace {
        colloquy_infra::knowledge_index::EmbeddingSpace { model: self.model().to_string(), dimension: self.dimension() }
    }

    /// One vector per text, in the order of `texts`, each [`dimension`](Self::dimension)
    /// long. No texts: no vectors (and no work).
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ProviderError>;
}

/// An OpenAI-compatible embeddings endpoint (OpenAI, Azure, Ollama, vLLM, ...) and a model
/// on it. Texts are sent `batch_size` per request, one request after another (a document's
/// chunks must not burst through a provider's rate limit).
#[derive(Debug, Clone)]
pub struct OpenAiEmbedder {
    provider: Arc<OpenAiCompatible>,
    model: String,
    dimension: usize,
    batch_size: usize,
}

impl OpenAiEmbedder {
    /// `model` on `provider`, whose vectors must be `dimension` long, `batch_size` texts per
    /// request (at least one).
    pub fn new(provider: Arc<OpenAiCompatible>, model: impl Into<String>, dimension: usize, batch_size: usize) -> Self {
        Self { provider, model: model.into(), dimension, batch_size: batch_size.max(1) }
    }

    /// Texts sent per request.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The endpoint.
    pub fn provider(&self) -> &Arc<OpenAiCompatible> {
        &self.provider
    }
}

#[async_trait::async_trait]
impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ProviderError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.batch_size) {
            let answered = self.provider.embed(&self.model, batch.to_vec()).await?;
            for vector in &answered {
                check_vector(&self.model, vector, self.dimension)?;
            }
            vectors.extend(answered);
        }
        tracing::debug!(provider = %self.provider.name(), model = %self.model, texts = texts.len(), "Texts embedded.");
        Ok(vectors)
    }
}

/// Refuses a vector that is not `dimension` long or holds a value that is not a finite
/// number (neither can go into the index).
pub fn check_vector(model: &str, vector: &[f32], dimension: usize) -> Result<(), ProviderError> {
    if vector.len() != dimension {
        return Err(ProviderError::new(
            ErrorClass::Protocol,
            format!("model `{model}` answered a vector of {} dimensions; {dimension} are configured", vector.len()),
        ));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(ProviderError::new(ErrorClass::Protocol, format!("model `{model}` answered a non-finite value")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_of_another_dimension_or_not_finite_are_refused() {
        assert_eq!(check_vector("m", &[0.6, 0.8], 2), Ok(()));
        let short = check_vector("m", &[1.0], 2).unwrap_err();
        assert_eq!(short.class, ErrorClass::Protocol);
        assert!(short.message.contains("1 dimensions; 2"), "{}", short.message);
        assert_eq!(check_vector("m", &[f32::NAN, 0.0], 2).unwrap_err().class, ErrorClass::Protocol);
        assert_eq!(check_vector("m", &[f32::INFINITY, 0.0], 2).unwrap_err().class, ErrorClass::Protocol);
    }
}
