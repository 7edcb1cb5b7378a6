//! `OpenAiEmbedder` against the fake provider server: the real async-openai client reads the
//! real `/v1/embeddings` wire format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use colloquy_infra::assistant_settings::{ProviderKind, ProviderSettings};
use colloquy_providers::testing::{fake_embedding, FakeProvider, Route, Script};
use colloquy_providers::{Embedder, ErrorClass, OpenAiCompatible, OpenAiEmbedder};
use serde_json::json;

/// The fake's vectors are 8 long.
const FAKE_DIMENSION: usize = 8;

fn embedder(fake: &FakeProvider, dimension: usize, batch_size: usize) -> OpenAiEmbedder {
    let settings = ProviderSettings {
        kind: ProviderKind::Openai,
        base_url: fake.base_url(),
        api_key: Some("sk-test".into()),
        ..ProviderSettings::default()
    };
    let provider = Arc::new(OpenAiCompatible::new("openai", &settings).unwrap());
    OpenAiEmbedder::new(provider, "text-embedding-3-small", dimension, batch_size)
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|t| (*t).to_string()).collect()
}

fn inputs_sent(fake: &FakeProvider) -> Vec<serde_json::Value> {
    fake.requests_to(Route::Embeddings).into_iter().map(|r| r.body["input"].clone()).collect()
}

#[tokio::test]
async fn batches_split_the_requests_and_the_vectors_keep_the_order_of_the_texts() {
    let fake = FakeProvider::start().await;
    let embedder = embedder(&fake, FAKE_DIMENSION, 2);
    assert_eq!((embedder.model(), embedder.dimension(), embedder.batch_size()), ("text-embedding-3-small", 8, 2));
    let input = texts(&["one", "two", "three", "four", "five"]);

    let vectors = embedder.embed(&input).await.unwrap();

    let expected: Vec<Vec<f32>> = input.iter().map(|t| fake_embedding(t)).collect();
    assert_eq!(vectors, expected);
    assert_eq!(inputs_sent(&fake), vec![json!(["one", "two"]), json!(["three", "four"]), json!(["five"])]);
    for request in fake.requests_to(Route::Embeddings) {
        assert_eq!(request.body["model"], "text-embedding-3-small");
    }
}

#[tokio::test]
async fn vectors_answered_out_of_order_are_put_back_in_the_order_of_the_texts() {
    let fake = FakeProvider::start().await;
    // A 200 whose data lists the embeddings in reverse (the API orders them by `index`).
    let shuffled = json!({
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [
            {"object": "embedding", "index": 2, "embedding": fake_embedding("c")},
            {"object": "embedding", "index": 1, "embedding": fake_embedding("b")},
            {"object": "embedding", "index": 0, "embedding": fake_embedding("a")},
        ],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    });
    fake.push(Route::Embeddings, Script::Status { status: 200, retry_after: None, body: Some(shuffled.to_string()) });
    let vectors = embedder(&fake, FAKE_DIMENSION, 32).embed(&texts(&["a", "b", "c"])).await.unwrap();
    assert_eq!(vectors, vec![fake_embedding("a"), fake_embedding("b"), fake_embedding("c")]);
}

#[tokio::test]
async fn no_texts_make_no_request() {
    let fake = FakeProvider::start().await;
    let vectors = embedder(&fake, FAKE_DIMENSION, 2).embed(&[]).await.unwrap();
    assert!(vectors.is_empty());
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_vector_of_another_dimension_is_an_error() {
    let fake = FakeProvider::start().await;
    let error = embedder(&fake, 384, 2).embed(&texts(&["a cat", "a mat", "a hat"])).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Protocol);
    assert!(!error.class.is_retryable(), "the same model answers the same dimension again");
    assert!(error.message.contains("8 dimensions; 384"), "{}", error.message);
    assert_eq!(fake.requests_to(Route::Embeddings).len(), 1, "no batch is sent after a refused one");
}

#[tokio::test]
async fn a_failed_later_batch_fails_the_whole_call() {
    let fake = FakeProvider::start().await;
    fake.push(Route::Embeddings, Script::instant());
    fake.push(Route::Embeddings, Script::status(500));
    let error = embedder(&fake, FAKE_DIMENSION, 1).embed(&texts(&["a", "b", "c"])).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::ServerError);
    assert_eq!(inputs_sent(&fake), vec![json!(["a"]), json!(["b"])]);
}

#[tokio::test]
async fn http_errors_map_to_their_error_class() {
    for (status, class) in [(500, ErrorClass::ServerError), (429, ErrorClass::RateLimited)] {
        let fake = FakeProvider::start().await;
        fake.push(Route::Embeddings, Script::status(status));
        let error = embedder(&fake, FAKE_DIMENSION, 8).embed(&texts(&["x"])).await.unwrap_err();
        assert_eq!(error.class, class, "HTTP {status}: {error}");
        assert!(error.class.is_retryable(), "HTTP {status}");
        assert_eq!(fake.requests_to(Route::Embeddings).len(), 1, "HTTP {status}: retrying is the caller's");
    }
}
