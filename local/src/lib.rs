//! The local models, run on the CPU with candle (fetched by `scripts/models.sh`): the chat
//! model SmolLM2-135M-Instruct (a Q4 GGUF) behind `colloquy-providers`' [`ChatProvider`], and
//! the embedder all-MiniLM-L6-v2 behind its [`Embedder`].
//!
//! [`SmolLm`] is the model (load, prompt, tokens, a blocking generation loop); [`LocalChat`]
//! is the provider (a semaphore of generation slots, blocking threads, a bounded channel;
//! dropping the stream stops the loop at its next token). [`MiniLm`] is the embedder (batched
//! forward passes on blocking threads, bounded by a semaphore). Nothing downloads at run
//! time: a missing model file is an error that says to run `scripts/models.sh`.
//!
//! [`ChatProvider`]: colloquy_providers::ChatProvider
//! [`Embedder`]: colloquy_providers::Embedder

mod error;
mod minilm;
mod provider;
mod smollm;
mod template;
mod tokenizer;

pub use error::LocalError;
pub use minilm::{MiniLm, MINILM_BATCH_SIZE, MINILM_DIR, MINILM_MAX_TOKENS, MINILM_MODEL};
pub use provider::{LocalChat, STREAM_BUFFER};
pub use smollm::{
    Generation, SmolLm, CANCELLED, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, MODEL_FILE, REPEAT_LAST_N,
    REPEAT_PENALTY,
};
