//! all-MiniLM-L6-v2 on the CPU: the local embedder of the knowledge base (384 dimensions).
//!
//! Loaded from the safetensors, `config.json` and `tokenizer.json` that `scripts/models.sh`
//! unpacks; run with candle-transformers' `BertModel`; pooled as sentence-transformers does
//! for this model (the mean of the token vectors under the attention mask, then L2
//! normalisation), so its vectors match the published model's and cosine similarity is a
//! dot product.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use colloquy_providers::{Embedder, ProviderError};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};
use tokio::sync::Semaphore;

use crate::error::LocalError;

/// The model's folder, relative to the models directory (`scripts/models.sh` puts it there).
pub const MINILM_DIR: &str = "all-minilm-l6-v2";

/// The model's name, as [`Embedder::model`] reports it.
pub const MINILM_MODEL: &str = "all-minilm-l6-v2";

/// Tokens of a text the model reads; the rest is cut off. sentence-transformers' own limit
/// for this model (its `tokenizer.json` says 128, which cuts a typical chunk short; the
/// position table has 512).
pub const MINILM_MAX_TOKENS: usize = 256;

/// Texts per forward pass unless [`MiniLm::with_batch_size`] says otherwise.
pub const MINILM_BATCH_SIZE: usize = 32;

/// The files the model needs, inside [`MINILM_DIR`].
const WEIGHTS_FILE: &str = "model.safetensors";
const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";

/// The model proper: weights and tokenizer, shared by every blocking thread.
struct Weights {
    bert: BertModel,
    tokenizer: Tokenizer,
    dimension: usize,
    device: Device,
}

impl Weights {
    /// The unit vectors of `texts`, one forward pass (blocking, CPU-bound).
    fn embed(&self, texts: Vec<&str>) -> Result<Vec<Vec<f32>>, LocalError> {
        let count = texts.len();
        // The tokenizer pads every text to the longest of the batch.
        let encodings =
            self.tokenizer.encode_batch(texts, true).map_err(|e| LocalError::Tokenizer(format!("encoding: {e}")))?;
        let length = encodings.first().map_or(0, |e| e.len());
        let field = |get: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, LocalError> {
            let values: Vec<u32> = encodings.iter().flat_map(|e| get(e).iter().copied()).collect();
            Ok(Tensor::from_vec(values, (count, length), &self.device)?)
        };
        let ids = field(tokenizers::Encoding::get_ids)?;
        let type_ids = field(tokenizers::Encoding::get_type_ids)?;
        let mask = field(tokenizers::Encoding::get_attention_mask)?;

        let hidden = self.bert.forward(&ids, &type_ids, Some(&mask))?; // (texts, tokens, dimension)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (texts, tokens, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (texts, dimension)
                                                           // Never zero ([CLS] and [SEP] are always there); clamped as sentence-transformers does.
        let counted = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (texts, 1)
        let mean = summed.broadcast_div(&counted)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

/// all-MiniLM-L6-v2, loaded once and shared, as an [`Embedder`] (`all-minilm-l6-v2`, 384
/// dimensions). Forward passes run on blocking threads, at most `max_concurrent` at a time;
/// the texts of one call are grouped by length into batches, so short texts are not padded
/// to a long one's length.
pub struct MiniLm {
    weights: Arc<Weights>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    batch_size: usize,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("dimension", &self.weights.dimension)
            .field("max_concurrent", &self.max_concurrent)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl MiniLm {
    /// Loads the model from `models_dir` (the files are in [`MINILM_DIR`] inside it) and
    /// allows `max_concurrent` forward passes at once (at least one). Blocking (a fraction
    /// of a second): call it from a blocking thread. A missing file is
    /// [`LocalError::ModelMissing`] naming it.
    pub fn load(models_dir: &Path, max_concurrent: usize) -> Result<Self, LocalError> {
        let dir = models_dir.join(MINILM_DIR);
        let [weights_path, config_path, tokenizer_path] =
            [WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE].map(|f| dir.join(f));
        for path in [&weights_path, &config_path, &tokenizer_path] {
            if !path.is_file() {
                return Err(LocalError::ModelMissing { path: path.clone() });
            }
        }

        let config = read_config(&config_path)?;
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| LocalError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        // The shipped tokenizer.json pads everything to 128 and truncates there.
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MINILM_MAX_TOKENS, ..TruncationParams::default() }))
            .map_err(|e| LocalError::Tokenizer(format!("truncation: {e}")))?;

        let device = Device::Cpu;
        // SAFETY: the file is mapped read-only and must not change while mapped.
        // `scripts/models.sh` never rewrites a model file in place (it writes a `.part` file
        // and renames it over the old one, which leaves the mapped inode untouched), and
        // nothing else writes to the models directory.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights_path], DType::F32, &device)? };
        let bert = BertModel::load(vb, &config)?;
        let weights = Weights { bert, tokenizer, dimension: config.hidden_size, device };

        let max_concurrent = max_concurrent.max(1);
        Ok(Self {
            weights: Arc::new(weights),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            batch_size: MINILM_BATCH_SIZE,
        })
    }

    /// Texts per forward pass (at least one; [`MINILM_BATCH_SIZE`] unless set).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Texts per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Forward passes running now.
    pub fn batches_in_flight(&self) -> usize {
        self.max_concurrent.saturating_sub(self.slots.available_permits())
    }

    /// One forward pass over `texts` on a blocking thread, once a slot is free. The slot is
    /// held until the pass ends, even if the caller has gone: it frees when the CPU does.
    async fn embed_batch(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LocalError> {
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| LocalError::Task("the embedding slots are closed".into()))?;
        let weights = Arc::clone(&self.weights);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            weights.embed(texts.iter().map(String::as_str).collect())
        })
        .await
        .map_err(|e| LocalError::Task(format!("embedding: {e}")))?
    }
}

fn read_config(path: &Path) -> Result<Config, LocalError> {
    let io_error = |source| LocalError::Io { path: path.to_path_buf(), source };
    let text = std::fs::read_to_string(path).map_err(io_error)?;
    serde_json::from_str(&text).map_err(|e| io_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// The positions of `texts` grouped into batches of `batch_size`, shortest texts first (by
/// bytes, a cheap stand-in for tokens), so each batch pads to a length near its own texts'.
fn batches_by_length(texts: &[String], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

#[async_trait::async_trait]
impl Embedder for MiniLm {
    fn model(&self) -> &str {
        MINILM_MODEL
    }

    fn dimension(&self) -> usize {
        self.weights.dimension
    }

    /// Batches run concurrently up to `max_concurrent`; dropping the call stops batches
    /// that have not started.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ProviderError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let batches = batches_by_length(texts, self.batch_size);
        let passes = batches.iter().map(|batch| self.embed_batch(batch.iter().map(|&i| texts[i].clone()).collect()));
        let results = futures::future::try_join_all(passes).await.map_err(|error| {
            tracing::warn!(%error, "Local embedding failed.");
            ProviderError::from(error)
        })?;
        let mut vectors = vec![Vec::new(); texts.len()];
        for (batch, batch_vectors) in batches.iter().zip(results) {
            for (&position, vector) in batch.iter().zip(batch_vectors) {
                vectors[position] = vector;
            }
        }
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_texts_by_length_and_cover_every_position_once() {
        let texts: Vec<String> = ["medium text", "a", "the longest text of all", "bb", "ccc"].map(String::from).into();
        let batches = batches_by_length(&texts, 2);
        assert_eq!(batches, vec![vec![1, 3], vec![4, 0], vec![2]]);
        assert_eq!(batches_by_length(&texts, 0).len(), 5, "a batch size of 0 counts as 1");
        assert!(batches_by_length(&[], 4).is_empty());
    }
}
