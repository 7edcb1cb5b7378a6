//! The local model behind [`ChatProvider`]: generations run on blocking threads, at most
//! `max_concurrent` at a time, and stream their text through a bounded channel.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use colloquy_providers::{
    ChatMessage, ChatProvider, ChatRequest, ChatStream, ErrorClass, FinishReason, ProviderError, StreamItem, Usage,
};
use tokio::sync::{mpsc, Semaphore};

use crate::error::LocalError;
use crate::smollm::{Generation, SmolLm};

/// Items a generation may run ahead of its reader: when the reader is this far behind, the
/// generation waits; when the reader is gone, it stops at its next token.
pub const STREAM_BUFFER: usize = 16;

/// The local chat model as a provider (`kind() == "local"`). Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct LocalChat {
    model: Arc<SmolLm>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    tokens_generated: Arc<AtomicU64>,
}

impl LocalChat {
    /// Loads the model from `models_dir` (see [`SmolLm::load`]; blocking, a second or two)
    /// and allows `max_concurrent` generations at once (at least one).
    pub fn load(models_dir: &Path, max_concurrent: usize) -> Result<Self, LocalError> {
        Ok(Self::new(Arc::new(SmolLm::load(models_dir)?), max_concurrent))
    }

    /// A provider running `model`, `max_concurrent` generations at once (at least one).
    pub fn new(model: Arc<SmolLm>, max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self {
            model,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            tokens_generated: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<SmolLm> {
        &self.model
    }

    /// Tokens of the prompt `messages` make (what the stream reports as `input_tokens`);
    /// `None` if the chat template could not be rendered.
    pub fn count_tokens(&self, messages: &[ChatMessage]) -> Option<usize> {
        match self.model.count_tokens(messages) {
            Ok(count) => Some(count),
            Err(error) => {
                tracing::warn!(%error, "Could not count the tokens of a local prompt.");
                None
            }
        }
    }

    /// Generations running now (each holds a slot until its loop has stopped).
    pub fn generations_in_flight(&self) -> usize {
        self.max_concurrent.saturating_sub(self.slots.available_permits())
    }

    /// Answer tokens generated since this provider was made, counted when each generation
    /// ends (a cancelled one included).
    pub fn tokens_generated(&self) -> u64 {
        self.tokens_generated.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl ChatProvider for LocalChat {
    fn kind(&self) -> &'static str {
        "local"
    }

    /// The rendered prompt's tokens, with SmolLM2's own tokenizer and chat template (one
    /// local chat model: the name is not needed).
    fn count_tokens(&self, _model: &str, messages: &[ChatMessage]) -> Option<usize> {
        LocalChat::count_tokens(self, messages)
    }

    /// Waits for a free slot, then starts the generation on a blocking thread. Dropping the
    /// stream stops the generation at its next token and frees the slot.
    async fn stream_chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| ProviderError::new(ErrorClass::ServerError, "the local model is shut down"))?;
        tracing::debug!(model = %request.model, "Local generation starting.");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let model = Arc::clone(&self.model);
        let tokens_generated = Arc::clone(&self.tokens_generated);
        let generation_tx = tx.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Held until the loop has stopped: the slot frees only when the CPU does.
            let _permit = permit;
            let tx = generation_tx;
            let seed = RandomState::new().build_hasher().finish();
            let mut on_token = |text: &str| {
                let delivered = if text.is_empty() {
                    !tx.is_closed()
                } else {
                    tx.blocking_send(Ok(StreamItem::Delta(text.to_owned()))).is_ok()
                };
                if delivered {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            };
            let result = model.generate(&request.messages, &request.parameters, seed, &mut on_token);
            match result {
                Ok(Generation { input_tokens, output_tokens, finish }) => {
                    tokens_generated.fetch_add(output_tokens as u64, Ordering::Relaxed);
                    if matches!(&finish, FinishReason::Other(reason) if reason == crate::smollm::CANCELLED) {
                        tracing::debug!(output_tokens, "Local generation cancelled by its reader.");
                        return;
                    }
                    let usage = Usage { input_tokens: saturate(input_tokens), output_tokens: saturate(output_tokens) };
                    let _ = tx.blocking_send(Ok(StreamItem::Usage(usage)));
                    let _ = tx.blocking_send(Ok(StreamItem::Finished(finish)));
                }
                Err(error) => {
                    tracing::warn!(%error, "Local generation failed.");
                    let _ = tx.blocking_send(Err(error.into()));
                }
            }
        });
        // A panic in the loop must end the stream with an error, not silently.
        tokio::spawn(async move {
            if let Err(error) = task.await {
                let _ = tx.send(Err(LocalError::Task(error.to_string()).into())).await;
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Box::pin(stream))
    }
}

fn saturate(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}
