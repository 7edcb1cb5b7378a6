//! The local model, for real: these tests load SmolLM2 from the models directory
//! (`COLLOQUY_MODELS_DIR`, else `<workspace>/.colloquy/models`), which `scripts/models.sh`
//! fills; CI runs it first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use colloquy_local::{LocalChat, LocalError, SmolLm, CANCELLED, STREAM_BUFFER};
use colloquy_providers::{
    ChatMessage, ChatProvider, ChatRequest, ErrorClass, FinishReason, Parameters, Role, StreamItem,
};
use futures::StreamExt;

fn models_dir() -> PathBuf {
    std::env::var_os("COLLOQUY_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.colloquy/models"))
}

/// One model for the whole test binary (loading takes a second or two).
fn model() -> Arc<SmolLm> {
    static MODEL: OnceLock<Arc<SmolLm>> = OnceLock::new();
    MODEL
        .get_or_init(|| match SmolLm::load(&models_dir()) {
            Ok(model) => Arc::new(model),
            Err(error) => panic!("{error} (models dir {}; run scripts/models.sh)", models_dir().display()),
        })
        .clone()
}

fn prompt(question: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You are a helpful assistant. Answer briefly."),
        ChatMessage::new(Role::User, question),
    ]
}

fn params(max_tokens: u32, temperature: f32) -> Parameters {
    Parameters { max_tokens: Some(max_tokens), temperature: Some(temperature), top_p: None }
}

fn generate(
    model: &SmolLm,
    messages: &[ChatMessage],
    params: &Parameters,
    seed: u64,
) -> (String, colloquy_local::Generation) {
    let mut text = String::new();
    let generation = model
        .generate(messages, params, seed, &mut |piece| {
            text.push_str(piece);
            ControlFlow::Continue(())
        })
        .unwrap();
    (text, generation)
}

#[test]
fn a_missing_model_says_to_run_the_models_script() {
    let error = SmolLm::load(std::path::Path::new("/nonexistent/models")).unwrap_err();
    assert!(matches!(error, LocalError::ModelMissing { .. }), "{error:?}");
    assert!(error.to_string().contains("scripts/models.sh"), "{error}");
}

#[test]
fn the_tokenizer_knows_the_chat_tokens_and_round_trips_text() {
    let model = model();
    assert_eq!(model.token_id("<|im_start|>"), Some(1));
    assert_eq!(model.token_id("<|im_end|>"), Some(2));
    assert_eq!(model.encode("<|im_start|>user\nHi<|im_end|>").unwrap().first(), Some(&1));
    assert_eq!(model.encode("<|im_start|>user\nHi<|im_end|>").unwrap().last(), Some(&2));
    for text in ["Hello, world!", "  leading spaces and 12345 digits", "naïve café — 東京 🙂\nnew line\ttab"] {
        let ids = model.encode(text).unwrap();
        assert_eq!(model.decode(&ids).unwrap(), text);
    }
    // Digits are split one by one; no prefix space is added.
    assert_eq!(model.encode("2024").unwrap().len(), 4);
    assert_eq!(model.decode(&model.encode("Hi").unwrap()).unwrap(), "Hi");
}

#[test]
fn the_context_window_comes_from_the_metadata() {
    // SmolLM2 says 8192; candle's rotary tables stop at 4096.
    assert_eq!(model().context_window(), 4096);
}

#[test]
fn a_short_prompt_gets_a_short_answer() {
    let model = model();
    let messages = prompt("What is the capital of France?");
    let (text, generation) = generate(&model, &messages, &params(8, 0.0), 1);
    assert!(!text.trim().is_empty(), "{text:?}");
    assert!((1..=8).contains(&generation.output_tokens), "{generation:?}");
    assert_eq!(generation.input_tokens, model.count_tokens(&messages).unwrap());
    assert!(matches!(generation.finish, FinishReason::Stop | FinishReason::Length), "{generation:?}");
    if generation.output_tokens < 8 {
        assert_eq!(generation.finish, FinishReason::Stop);
    }
}

#[test]
fn the_same_seed_gives_the_same_answer() {
    let model = model();
    let messages = prompt("Name three colours.");
    let greedy = params(12, 0.0);
    assert_eq!(generate(&model, &messages, &greedy, 1).0, generate(&model, &messages, &greedy, 2).0);
    let sampled = params(12, 1.0);
    assert_eq!(generate(&model, &messages, &sampled, 7), generate(&model, &messages, &sampled, 7));
}

#[test]
fn break_stops_the_generation_at_once() {
    let model = model();
    let mut calls = 0;
    let generation = model
        .generate(&prompt("Write a long story about a dragon."), &params(64, 0.0), 1, &mut |_| {
            calls += 1;
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(generation.output_tokens, 1);
    assert_eq!(generation.finish, FinishReason::Other(CANCELLED.to_owned()));
}

#[test]
fn the_prompt_counts_are_those_of_the_rendered_template() {
    let model = model();
    let messages = prompt("Hi");
    let rendered = model.prompt(&messages).unwrap();
    assert!(rendered.starts_with("<|im_start|>system\nYou are a helpful assistant."), "{rendered}");
    assert!(rendered.ends_with("<|im_start|>assistant\n"), "{rendered}");
    assert_eq!(model.count_tokens(&messages).unwrap(), model.encode(&rendered).unwrap().len());
}

fn request(question: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: "smollm2-135m-instruct".to_owned(),
        messages: prompt(question),
        parameters: params(max_tokens, 0.0),
    }
}

#[tokio::test]
async fn the_stream_yields_deltas_then_usage_then_finished() {
    let provider = LocalChat::new(model(), 1);
    assert_eq!(provider.kind(), "local");
    let request = request("What is the capital of France?", 8);
    let expected_input = provider.count_tokens(&request.messages).unwrap();
    let items: Vec<StreamItem> = provider.stream_chat(request).await.unwrap().map(|item| item.unwrap()).collect().await;

    let deltas = items.iter().take_while(|item| matches!(item, StreamItem::Delta(_))).count();
    assert!(deltas >= 1, "{items:?}");
    assert_eq!(items.len(), deltas + 2, "{items:?}");
    let StreamItem::Usage(usage) = &items[deltas] else { panic!("{items:?}") };
    assert_eq!(usage.input_tokens as usize, expected_input);
    assert!((1..=8).contains(&usage.output_tokens), "{usage:?}");
    assert!(matches!(&items[deltas + 1], StreamItem::Finished(FinishReason::Stop | FinishReason::Length)), "{items:?}");
    let text: String =
        items.iter().filter_map(|item| if let StreamItem::Delta(t) = item { Some(t.as_str()) } else { None }).collect();
    assert!(!text.trim().is_empty(), "{text:?}");
}

#[tokio::test]
async fn dropping_the_stream_stops_the_generation_and_frees_its_slot() {
    let provider = LocalChat::new(model(), 1);
    let long = || request("Write a long story about a dragon who learns to read.", 64);

    // Uncancelled, this request runs well past what a cancelled one may generate.
    let full: Vec<_> = provider.stream_chat(long()).await.unwrap().collect().await;
    let full_tokens = provider.tokens_generated();
    assert_eq!(full_tokens, 64, "{full:?}");
    assert!(full_tokens > (STREAM_BUFFER + 2) as u64);

    let mut stream = provider.stream_chat(long()).await.unwrap();
    assert!(matches!(stream.next().await, Some(Ok(StreamItem::Delta(_)))));
    drop(stream);

    // The slot frees once the loop has seen the closed channel.
    let deadline = Instant::now() + Duration::from_secs(60);
    while provider.generations_in_flight() > 0 {
        assert!(Instant::now() < deadline, "the cancelled generation still holds its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled_tokens = provider.tokens_generated() - full_tokens;
    // At most the channel's worth ran ahead of the reader, plus the token that found it closed.
    assert!((1..=(STREAM_BUFFER + 2) as u64).contains(&cancelled_tokens), "{cancelled_tokens}");

    // With max_concurrent = 1 the next request proceeds only because the slot was freed.
    let next: Vec<_> = provider.stream_chat(request("Say hello.", 4)).await.unwrap().collect().await;
    assert!(matches!(next.last(), Some(Ok(StreamItem::Finished(_)))), "{next:?}");
}

#[tokio::test]
async fn a_prompt_that_fills_the_context_window_is_refused_as_a_bad_request() {
    let provider = LocalChat::new(model(), 1);
    let long = "word ".repeat(provider.model().context_window());
    let error =
        provider.model().generate(&prompt(&long), &params(8, 0.0), 1, &mut |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(error, LocalError::PromptTooLong { context_window: 4096, .. }), "{error:?}");

    let items: Vec<_> = provider.stream_chat(request(&long, 8)).await.unwrap().collect().await;
    assert!(matches!(items.as_slice(), [Err(e)] if e.class == ErrorClass::BadRequest), "{items:?}");
    assert_eq!(provider.generations_in_flight(), 0);
}
