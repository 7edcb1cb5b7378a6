//! How fast the local model is on this machine: load time, time to the first token and
//! tokens per second for a 64-token answer.
//!
//!     cargo run --release -p colloquy-local --example tokens_per_second [models-dir]
//!
//! The models directory defaults to `COLLOQUY_MODELS_DIR`, else `.colloquy/models`.

// A benchmark's output is its figures.
#![allow(clippy::print_stdout)]

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use colloquy_local::SmolLm;
use colloquy_providers::{ChatMessage, Parameters, Role};

const ANSWER_TOKENS: u32 = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("COLLOQUY_MODELS_DIR"))
        .map_or_else(|| PathBuf::from(".colloquy/models"), PathBuf::from);

    let started = Instant::now();
    let model = SmolLm::load(&dir)?;
    let load = started.elapsed();

    let messages = vec![
        ChatMessage::new(Role::System, "You are a helpful assistant."),
        ChatMessage::new(Role::User, "Write a short story about a lighthouse keeper and a storm."),
    ];
    // Temperature 0: the same answer every run, so runs compare.
    let params = Parameters { max_tokens: Some(ANSWER_TOKENS), temperature: Some(0.0), top_p: None };
    let started = Instant::now();
    let mut first_token: Option<Duration> = None;
    let mut text = String::new();
    let generation = model.generate(&messages, &params, 0, &mut |piece| {
        first_token.get_or_insert_with(|| started.elapsed());
        text.push_str(piece);
        ControlFlow::Continue(())
    })?;
    let total = started.elapsed();
    let first_token = first_token.unwrap_or(total);
    let after_first = total.saturating_sub(first_token).as_secs_f64();
    let rate = if generation.output_tokens > 1 && after_first > 0.0 {
        (generation.output_tokens - 1) as f64 / after_first
    } else {
        0.0
    };

    println!("load (with Q4_1 -> Q4_0): {:.2} s", load.as_secs_f64());
    println!("prompt: {} tokens", generation.input_tokens);
    println!("time to first token: {:.3} s", first_token.as_secs_f64());
    println!(
        "answer: {} tokens in {:.2} s, finish {:?}",
        generation.output_tokens,
        total.as_secs_f64(),
        generation.finish
    );
    println!("generation: {rate:.1} tokens/s (after the first token)");
    println!("---\n{text}");
    Ok(())
}
