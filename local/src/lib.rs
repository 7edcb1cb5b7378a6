//! The local chat model: SmolLM2-135M-Instruct (a Q4 GGUF fetched by `scripts/models.sh`)
//! run on the CPU with candle, behind `colloquy-providers`' [`ChatProvider`].
//!
//! [`SmolLm`] is the model (load, prompt, tokens, a blocking generation loop); [`LocalChat`]
//! is the provider (a semaphore of generation slots, blocking threads, a bounded channel;
//! dropping the stream stops the loop at its next token). Nothing downloads at run time: a
//! missing model file is an error that says to run `scripts/models.sh`.
//!
//! [`ChatProvider`]: colloquy_providers::ChatProvider

mod error;
mod provider;
mod smollm;
mod template;
mod tokenizer;

pub use error::LocalError;
pub use provider::{LocalChat, STREAM_BUFFER};
pub use smollm::{
    Generation, SmolLm, CANCELLED, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, MODEL_FILE, REPEAT_LAST_N,
    REPEAT_PENALTY,
};
