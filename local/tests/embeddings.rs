//! The local embedder, for real: these tests load all-MiniLM-L6-v2 from the models directory
//! (`COLLOQUY_MODELS_DIR`, else `<workspace>/.colloquy/models`), which `scripts/models.sh`
//! fills; CI runs it first. A missing model fails the tests (it does not skip them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use colloquy_local::{LocalError, MiniLm, MINILM_DIR};
use colloquy_providers::{Embedder, ErrorClass};

fn models_dir() -> PathBuf {
    std::env::var_os("COLLOQUY_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.colloquy/models"))
}

/// The model, `batch_size` texts per forward pass (loading maps the file: a fraction of a
/// second).
fn minilm(batch_size: usize) -> MiniLm {
    match MiniLm::load(&models_dir(), 2) {
        Ok(model) => model.with_batch_size(batch_size),
        Err(error) => panic!("{error} (models dir {}; run scripts/models.sh)", models_dir().display()),
    }
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|t| (*t).to_string()).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b) / (norm(a) * norm(b))
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `count` words of a repeated sentence, then `tail` (single-token words: one word, one
/// token).
fn words(count: usize, tail: &str) -> String {
    let sentence = ["the", "old", "man", "walked", "down", "to", "the", "river", "and", "sat"];
    let mut text: Vec<&str> = sentence.iter().cycle().take(count).copied().collect();
    text.push(tail);
    text.join(" ")
}

#[test]
fn a_missing_model_names_the_missing_file_and_the_models_script() {
    let error = MiniLm::load(Path::new("/nonexistent/models"), 1).unwrap_err();
    match &error {
        LocalError::ModelMissing { path } => {
            assert_eq!(path, &Path::new("/nonexistent/models").join(MINILM_DIR).join("model.safetensors"))
        }
        other => panic!("expected ModelMissing, got {other:?}"),
    }
    assert!(error.to_string().contains("/nonexistent/models/all-minilm-l6-v2/model.safetensors"), "{error}");
    assert!(error.to_string().contains("scripts/models.sh"), "{error}");
    assert_eq!(colloquy_providers::ProviderError::from(error).class, ErrorClass::NotFound);
}

#[tokio::test]
async fn similar_sentences_are_closer_than_unrelated_ones() {
    let model = minilm(32);
    let input = texts(&["A cat sits on the mat", "A kitten rests on a rug", "Quarterly revenue grew by ten percent"]);
    let vectors = model.embed(&input).await.unwrap();
    let similar = cosine(&vectors[0], &vectors[1]);
    let unrelated = cosine(&vectors[0], &vectors[2]);
    let unrelated_too = cosine(&vectors[1], &vectors[2]);
    eprintln!("cos(cat, kitten) = {similar:.3}, cos(cat, revenue) = {unrelated:.3}, cos(kitten, revenue) = {unrelated_too:.3}");
    assert!(similar > 0.5, "cos(cat, kitten) = {similar}");
    assert!(
        unrelated < 0.2 && unrelated_too < 0.2,
        "cos(cat, revenue) = {unrelated}, (kitten, revenue) = {unrelated_too}"
    );
    assert!(similar - unrelated > 0.3, "cos(cat, kitten) = {similar}, cos(cat, revenue) = {unrelated}");
}

#[tokio::test]
async fn vectors_are_384_long_and_of_unit_length() {
    let model = minilm(32);
    assert_eq!((model.model(), model.dimension()), ("all-minilm-l6-v2", 384));
    let input = texts(&["", "Hello", "naïve café — 東京 🙂", &words(400, "end")]);
    let vectors = model.embed(&input).await.unwrap();
    assert_eq!(vectors.len(), input.len());
    for (text, vector) in input.iter().zip(&vectors) {
        assert_eq!(vector.len(), 384);
        assert!((norm(vector) - 1.0).abs() < 1e-4, "|v| = {} for {text:?}", norm(vector));
        assert!(vector.iter().all(|x| x.is_finite()));
    }
    assert!(cosine(&vectors[1], &vectors[2]) < 0.99, "different texts, different vectors");
}

#[tokio::test]
async fn no_texts_give_no_vectors() {
    assert!(minilm(32).embed(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn batching_gives_the_vectors_of_one_text_at_a_time() {
    let input = texts(&[
        "The quick brown fox jumps over the lazy dog.",
        "Hi",
        "Rust's ownership model prevents data races at compile time, without a garbage collector.",
        "Invoices are due thirty days after receipt.",
        "",
        "Der Zug nach Berlin fährt um acht Uhr.",
        &words(180, "finally"),
        "A cat sits on the mat",
        "Paris is the capital of France.",
        "ok",
    ]);
    // Three batches of up to four texts, grouped by length: padding differs from one at a time.
    let batched = minilm(4).embed(&input).await.unwrap();
    let single = minilm(1);
    assert_eq!(batched.len(), input.len());
    for (text, vector) in input.iter().zip(&batched) {
        let alone = single.embed(std::slice::from_ref(text)).await.unwrap();
        let difference = max_difference(vector, &alone[0]);
        assert!(difference < 1e-4, "{text:?}: batched and alone differ by {difference}");
    }
    assert_eq!(single.batches_in_flight(), 0, "every forward pass gave its slot back");
}

#[tokio::test]
async fn texts_are_read_up_to_256_tokens() {
    let model = minilm(32);
    // [CLS] + 200 words + the last word + [SEP] fits; the last words differ.
    let within = texts(&[&words(200, "cat"), &words(200, "finance")]);
    // 300 words before the difference: past 256 tokens both are the same text.
    let beyond = texts(&[&words(300, "cat"), &words(300, "finance")]);
    let within = model.embed(&within).await.unwrap();
    let beyond = model.embed(&beyond).await.unwrap();
    assert!(max_difference(&within[0], &within[1]) > 1e-3, "a difference at token 202 is read");
    assert!(max_difference(&beyond[0], &beyond[1]) < 1e-6, "a difference at token 302 is cut off");
}

/// Throughput, for the record (`--nocapture` shows it); the assertion is only that every
/// text got its vector.
#[tokio::test]
async fn sixty_four_short_sentences() {
    let model = minilm(32);
    let input: Vec<String> =
        (0..64).map(|i| format!("Sentence number {i} is about topic {} and nothing else.", i % 7)).collect();
    model.embed(&input[..2]).await.unwrap(); // warm-up
    let started = Instant::now();
    let vectors = model.embed(&input).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(vectors.len(), 64);
    eprintln!("all-minilm-l6-v2: 64 short sentences in {elapsed:?}, {:.0} embeddings/s", 64.0 / elapsed.as_secs_f64());
}
