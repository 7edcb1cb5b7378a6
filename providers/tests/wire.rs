//! The HTTP providers against the fake provider server: the real client code reads the
//! real wire formats.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_infra::assistant_settings::{ProviderKind, ProviderSettings};
use colloquy_providers::testing::{fake_embedding, FakeProvider, Route, Script};
use colloquy_providers::{
    Anthropic, ChatMessage, ChatProvider, ChatRequest, ErrorClass, FinishReason, OpenAiCompatible, Parameters, Role,
    StreamItem, Usage,
};
use futures::StreamExt;

fn entry(kind: ProviderKind, fake: &FakeProvider) -> ProviderSettings {
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("X-Extra".to_string(), "extra-value".to_string());
    ProviderSettings {
        kind,
        base_url: fake.base_url(),
        api_key: Some("sk-test".into()),
        headers,
        ..ProviderSettings::default()
    }
}

fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "Say hello")],
        parameters: Parameters { max_tokens: Some(64), temperature: Some(0.5), top_p: None },
    }
}

async fn collect(provider: &dyn ChatProvider, request: ChatRequest) -> Vec<Result<StreamItem, ErrorClass>> {
    let stream = provider.stream_chat(request).await.unwrap();
    stream.map(|item| item.map_err(|e| e.class)).collect().await
}

#[tokio::test]
async fn openai_streams_deltas_usage_and_the_finish_reason() {
    let fake = FakeProvider::start().await;
    fake.push(Route::ChatCompletions, Script::reply(&["Hel", "lo!"]).with_usage(12, 2));
    let provider = OpenAiCompatible::new("openai", &entry(ProviderKind::Openai, &fake)).unwrap();
    let items = collect(&provider, request("gpt-4o-mini")).await;
    assert_eq!(
        items,
        vec![
            Ok(StreamItem::Delta("Hel".into())),
            Ok(StreamItem::Delta("lo!".into())),
            Ok(StreamItem::Usage(Usage { input_tokens: 12, output_tokens: 2 })),
            Ok(StreamItem::Finished(FinishReason::Stop)),
        ]
    );
    let requests = fake.requests_to(Route::ChatCompletions);
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.headers["authorization"], "Bearer sk-test");
    assert_eq!(sent.headers["x-extra"], "extra-value");
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    assert_eq!(sent.body["max_tokens"], 64, "a compatible server gets max_tokens");
    assert_eq!(sent.body["temperature"], 0.5);
    assert_eq!(sent.body["messages"][0], serde_json::json!({"role": "system", "content": "Be brief."}));
    assert_eq!(sent.body["messages"][1], serde_json::json!({"role": "user", "content": "Say hello"}));
    assert!(provider.count_tokens("gpt-4o-mini", &request("gpt-4o-mini").messages).unwrap() > 5);
}

#[tokio::test]
async fn openai_failures_carry_status_class_and_retry_after() {
    let fake = FakeProvider::start().await;
    fake.push(Route::ChatCompletions, Script::rate_limited(7));
    fake.push(Route::ChatCompletions, Script::status(400));
    fake.push(Route::ChatCompletions, Script::cut_after(&["partial"]));
    fake.push(Route::ChatCompletions, Script::overloaded_after(&["So"]));
    let provider = OpenAiCompatible::new("openai", &entry(ProviderKind::Openai, &fake)).unwrap();
    let Err(error) = provider.stream_chat(request("gpt-4o")).await else { panic!("a 429 is an error") };
    assert_eq!((error.class, error.status), (ErrorClass::RateLimited, Some(429)));
    assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(7)));
    assert!(error.message.contains("Rate limit reached"), "{}", error.message);
    let Err(error) = provider.stream_chat(request("gpt-4o")).await else { panic!("a 400 is an error") };
    assert_eq!((error.class, error.status, error.retry_after), (ErrorClass::BadRequest, Some(400), None));
    let items = collect(&provider, request("gpt-4o")).await;
    assert_eq!(items, vec![Ok(StreamItem::Delta("partial".into())), Err(ErrorClass::Connection)]);
    let items = collect(&provider, request("gpt-4o")).await;
    assert_eq!(
        items,
        vec![Ok(StreamItem::Delta("So".into())), Err(ErrorClass::Overloaded)],
        "an error inside the stream"
    );
}

#[tokio::test]
async fn anthropic_streams_deltas_usage_and_the_stop_reason() {
    let fake = FakeProvider::start().await;
    fake.push(Route::Messages, Script::reply(&["Hi", " there"]).with_usage(15, 3));
    let provider = Anthropic::new("claude", &entry(ProviderKind::Anthropic, &fake)).unwrap();
    let items = collect(&provider, request("claude-3-5-haiku-latest")).await;
    assert_eq!(
        items,
        vec![
            Ok(StreamItem::Usage(Usage { input_tokens: 15, output_tokens: 1 })),
            Ok(StreamItem::Delta("Hi".into())),
            Ok(StreamItem::Delta(" there".into())),
            Ok(StreamItem::Usage(Usage { input_tokens: 15, output_tokens: 3 })),
            Ok(StreamItem::Finished(FinishReason::Stop)),
        ]
    );
    let sent = &fake.requests_to(Route::Messages)[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], "sk-test");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert_eq!(sent.headers["x-extra"], "extra-value");
    assert!(!sent.headers.contains_key("authorization"));
    assert_eq!(sent.body["system"], "Be brief.");
    assert_eq!(sent.body["max_tokens"], 64);
    assert_eq!(sent.body["messages"], serde_json::json!([{"role": "user", "content": "Say hello"}]));
}

#[tokio::test]
async fn anthropic_errors_in_the_stream_and_in_the_status_are_classified() {
    let fake = FakeProvider::start().await;
    fake.push(Route::Messages, Script::overloaded_after(&["So"]));
    fake.push(Route::Messages, Script::status(529));
    fake.push(Route::Messages, Script::cut_after(&["half"]));
    let provider = Anthropic::new("claude", &entry(ProviderKind::Anthropic, &fake)).unwrap();
    let items = collect(&provider, request("claude")).await;
    assert_eq!(items[1..], [Ok(StreamItem::Delta("So".into())), Err(ErrorClass::Overloaded)]);
    let Err(error) = provider.stream_chat(request("claude")).await else { panic!("a 529 is an error") };
    assert_eq!((error.class, error.status), (ErrorClass::Overloaded, Some(529)));
    assert!(error.message.contains("overloaded_error"), "{}", error.message);
    let items = collect(&provider, request("claude")).await;
    assert_eq!(items.last(), Some(&Err(ErrorClass::Connection)));
}

#[tokio::test]
async fn embeddings_round_trip_through_async_openai() {
    let fake = FakeProvider::start().await;
    let provider = OpenAiCompatible::new("openai", &entry(ProviderKind::Openai, &fake)).unwrap();
    let vectors = provider.embed("text-embedding-3-small", vec!["a cat".into(), "a mat".into()]).await.unwrap();
    assert_eq!(vectors, vec![fake_embedding("a cat"), fake_embedding("a mat")]);
    let sent = &fake.requests_to(Route::Embeddings)[0];
    assert_eq!(sent.body["model"], "text-embedding-3-small");
    assert_eq!(sent.body["input"], serde_json::json!(["a cat", "a mat"]));
    assert_eq!(sent.headers["authorization"], "Bearer sk-test");

    fake.push(Route::Embeddings, Script::status(429));
    let error = provider.embed("text-embedding-3-small", vec!["x".into()]).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::RateLimited);
    assert_eq!(fake.requests_to(Route::Embeddings).len(), 2, "async-openai's own retries are off");
}

#[tokio::test]
async fn a_keyless_server_gets_no_authorization_header() {
    let fake = FakeProvider::start().await;
    let settings = ProviderSettings { api_key: None, ..entry(ProviderKind::Openai, &fake) };
    let provider = OpenAiCompatible::new("ollama", &settings).unwrap();
    let items = collect(&provider, request("llama3.2")).await;
    assert_eq!(items[0], Ok(StreamItem::Delta("Say ".into())), "the default script echoes");
    assert!(!fake.requests()[0].headers.contains_key("authorization"));
}
