//! The router against two fake provider servers: fallback, retries, `Retry-After`, the
//! circuit breaker, first-token timeouts and cancel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use colloquy_infra::assistant_settings::{
    AssistantSettings, CircuitSettings, ModelSettings, ProviderKind, ProviderSettings, RetrySettings,
};
use colloquy_providers::testing::{FakeProvider, Route, Script};
use colloquy_providers::{
    http_providers, AttemptOutcome, ChatMessage, ErrorClass, Parameters, Role, RoutedReply, Router, StreamItem,
};
use futures::StreamExt;

const MODEL: &str = "chat";

struct Setup {
    a: FakeProvider,
    b: FakeProvider,
    router: Router,
    registry: prometheus::Registry,
}

/// A router whose model `chat` routes to provider `a` (model `model-a`), then `b`
/// (`model-b`); `kind_a` is `a`'s wire format.
async fn setup(kind_a: ProviderKind, tune: impl FnOnce(&mut AssistantSettings)) -> Setup {
    let (a, b) = (FakeProvider::start().await, FakeProvider::start().await);
    let mut settings = AssistantSettings::default();
    let entry = |kind, fake: &FakeProvider| ProviderSettings {
        kind,
        base_url: fake.base_url(),
        api_key: Some("sk-test".into()),
        first_token_timeout_ms: 5_000,
        ..ProviderSettings::default()
    };
    settings.providers.insert("a".into(), entry(kind_a, &a));
    settings.providers.insert("b".into(), entry(ProviderKind::Openai, &b));
    settings.models.insert(
        MODEL.into(),
        ModelSettings {
            route: vec!["a/model-a".into(), "b/model-b".into()],
            context_window: 4096,
            max_output_tokens: 100,
        },
    );
    settings.retry = RetrySettings { max_attempts: 1, base_delay_ms: 10, max_delay_ms: 50, max_retry_after_ms: 5_000 };
    tune(&mut settings);
    let providers = http_providers(&settings).unwrap();
    let registry = prometheus::Registry::new();
    let router = Router::new(settings, providers, &registry).unwrap();
    Setup { a, b, router, registry }
}

fn prompt() -> Vec<ChatMessage> {
    vec![ChatMessage::new(Role::User, "hello there")]
}

async fn ask(router: &Router) -> RoutedReply {
    router.stream(MODEL, prompt(), Parameters::default()).await.unwrap()
}

/// The first text and every later delta of a reply, and how it ended.
async fn text_of(reply: RoutedReply) -> (String, Option<ErrorClass>) {
    let mut text = reply.first;
    let mut rest = reply.rest;
    while let Some(item) = rest.next().await {
        match item {
            Ok(StreamItem::Delta(t)) => text.push_str(&t),
            Ok(_) => {}
            Err(e) => return (text, Some(e.class)),
        }
    }
    (text, None)
}

fn outcomes(reply_attempts: &[colloquy_providers::Attempt]) -> Vec<(String, AttemptOutcome, Option<ErrorClass>)> {
    reply_attempts.iter().map(|a| (a.provider.clone(), a.outcome, a.error_class)).collect()
}

fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_failure_before_the_first_token_falls_back_to_the_next_target() {
    let s = setup(ProviderKind::Openai, |_| {}).await;
    s.a.push(Route::ChatCompletions, Script::status(500));
    s.b.push(Route::ChatCompletions, Script::reply(&["from ", "b"]));
    let reply = ask(&s.router).await;
    assert_eq!((reply.provider.as_str(), reply.model.as_str()), ("b", "model-b"));
    assert_eq!(
        outcomes(&reply.attempts),
        vec![
            ("a".into(), AttemptOutcome::Failed, Some(ErrorClass::ServerError)),
            ("b".into(), AttemptOutcome::Succeeded, None),
        ]
    );
    assert_eq!(reply.attempts[0].status, Some(500));
    assert_eq!(reply.attempts[0].model, "model-a");
    assert!(reply.first_token_at >= reply.started_at);
    assert_eq!(text_of(reply).await, ("from b".into(), None));
    // The model's max_output_tokens is the default max_tokens.
    assert_eq!(s.b.requests()[0].body["max_tokens"], 100);
    assert_eq!(s.b.requests()[0].body["model"], "model-b");
    assert_eq!(metric(&s.registry, "colloquy_provider_fallbacks_total", &[("provider", "a")]), 1.0);
    assert_eq!(
        metric(&s.registry, "colloquy_provider_errors_total", &[("provider", "a"), ("class", "server_error")]),
        1.0
    );
    assert_eq!(metric(&s.registry, "colloquy_provider_requests_total", &[("provider", "b")]), 1.0);
}

#[tokio::test]
async fn after_the_first_token_the_router_never_switches() {
    let s = setup(ProviderKind::Openai, |_| {}).await;
    s.a.push(Route::ChatCompletions, Script::cut_after(&["one ", "two "]));
    let reply = ask(&s.router).await;
    assert_eq!(reply.provider, "a");
    assert_eq!(reply.first, "one ");
    assert_eq!(text_of(reply).await, ("one two ".into(), Some(ErrorClass::Connection)));
    assert!(s.b.requests().is_empty(), "b is never called");
}

#[tokio::test]
async fn retries_honour_retry_after_on_the_same_target() {
    let s = setup(ProviderKind::Openai, |s| s.retry.max_attempts = 3).await;
    s.a.push(Route::ChatCompletions, Script::rate_limited(1));
    s.a.push(Route::ChatCompletions, Script::reply(&["ok"]));
    let reply = ask(&s.router).await;
    assert_eq!(reply.provider, "a");
    assert_eq!(
        outcomes(&reply.attempts),
        vec![
            ("a".into(), AttemptOutcome::Failed, Some(ErrorClass::RateLimited)),
            ("a".into(), AttemptOutcome::Succeeded, None),
        ]
    );
    let requests = s.a.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].at.duration_since(requests[0].at) >= Duration::from_secs(1));
    assert!(s.b.requests().is_empty());
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_moves_on_at_once() {
    let s = setup(ProviderKind::Openai, |s| {
        s.retry.max_attempts = 3;
        s.retry.max_retry_after_ms = 1_000;
    })
    .await;
    s.a.push(Route::ChatCompletions, Script::rate_limited(60));
    let started = Instant::now();
    let reply = ask(&s.router).await;
    assert_eq!(reply.provider, "b");
    assert_eq!(s.a.requests().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn anthropic_overloaded_before_any_text_is_retried_then_falls_back() {
    let s = setup(ProviderKind::Anthropic, |s| s.retry.max_attempts = 2).await;
    s.a.push(Route::Messages, Script::overloaded_after(&[]));
    s.a.push(Route::Messages, Script::reply(&["second try"]));
    let reply = ask(&s.router).await;
    assert_eq!(reply.provider, "a");
    assert_eq!(outcomes(&reply.attempts)[0], ("a".into(), AttemptOutcome::Failed, Some(ErrorClass::Overloaded)));
    // The usage of message_start, read before the first token, is kept.
    let mut rest = reply.rest;
    assert!(matches!(rest.next().await, Some(Ok(StreamItem::Usage(_)))));

    s.a.push(Route::Messages, Script::overloaded_after(&[]));
    s.a.push(Route::Messages, Script::overloaded_after(&[]));
    s.b.push(Route::ChatCompletions, Script::reply(&["from b"]));
    let reply = ask(&s.router).await;
    assert_eq!(reply.provider, "b");
    assert_eq!(
        outcomes(&reply.attempts),
        vec![
            ("a".into(), AttemptOutcome::Failed, Some(ErrorClass::Overloaded)),
            ("a".into(), AttemptOutcome::Failed, Some(ErrorClass::Overloaded)),
            ("b".into(), AttemptOutcome::Succeeded, None),
        ]
    );
}

#[tokio::test]
async fn the_circuit_opens_after_the_threshold_and_closes_after_one_probe() {
    let open_ms = 400;
    let s = setup(ProviderKind::Openai, |s| s.circuit = CircuitSettings { failure_threshold: 2, open_ms }).await;
    s.a.set_default(Script::status(503));
    for _ in 0..2 {
        assert_eq!(ask(&s.router).await.provider, "b");
    }
    assert_eq!(s.a.requests().len(), 2);
    assert_eq!(metric(&s.registry, "colloquy_provider_circuit_state", &[("provider", "a")]), 1.0);

    // Open: a is skipped without a call.
    let reply = ask(&s.router).await;
    assert_eq!(reply.provider, "b");
    assert_eq!(outcomes(&reply.attempts)[0], ("a".into(), AttemptOutcome::Skipped, Some(ErrorClass::CircuitOpen)));
    assert_eq!(s.a.requests().len(), 2, "no request while open");

    // After open_ms one probe goes through; it fails, so the circuit opens again.
    tokio::time::sleep(Duration::from_millis(open_ms + 100)).await;
    assert_eq!(ask(&s.router).await.provider, "b");
    assert_eq!(s.a.requests().len(), 3, "one probe");
    assert_eq!(ask(&s.router).await.attempts[0].outcome, AttemptOutcome::Skipped);
    assert_eq!(s.a.requests().len(), 3);

    // After open_ms again a succeeding probe closes it.
    tokio::time::sleep(Duration::from_millis(open_ms + 100)).await;
    s.a.set_default(Script::reply(&["back"]));
    assert_eq!(ask(&s.router).await.provider, "a");
    assert_eq!(metric(&s.registry, "colloquy_provider_circuit_state", &[("provider", "a")]), 0.0);
    assert_eq!(ask(&s.router).await.provider, "a");
    assert_eq!(s.a.requests().len(), 5);
}

#[tokio::test]
async fn a_refused_request_does_not_open_the_circuit() {
    let s =
        setup(ProviderKind::Openai, |s| s.circuit = CircuitSettings { failure_threshold: 1, open_ms: 60_000 }).await;
    s.a.push(Route::ChatCompletions, Script::status(400));
    let reply = ask(&s.router).await;
    assert_eq!(outcomes(&reply.attempts)[0], ("a".into(), AttemptOutcome::Failed, Some(ErrorClass::BadRequest)));
    assert_eq!(ask(&s.router).await.provider, "a", "a 400 does not count toward the circuit");
}

#[tokio::test]
async fn no_first_token_within_the_timeout_falls_back() {
    let s = setup(ProviderKind::Openai, |s| {
        if let Some(a) = s.providers.get_mut("a") {
            a.first_token_timeout_ms = 300;
        }
    })
    .await;
    s.a.push(Route::ChatCompletions, Script::reply(&["late"]).with_delay(Duration::from_secs(3)));
    let reply = ask(&s.router).await;
    assert_eq!(reply.provider, "b");
    assert_eq!(outcomes(&reply.attempts)[0], ("a".into(), AttemptOutcome::Failed, Some(ErrorClass::Timeout)));
    assert!(reply.attempts[0].latency_ms >= 300);
    wait_for_disconnect(&s.a).await;
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_connection() {
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let s = setup(kind, |_| {}).await;
        let route = match kind {
            ProviderKind::Anthropic => Route::Messages,
            _ => Route::ChatCompletions,
        };
        s.a.push(route, Script::hold_after(&["hold ", "on"]));
        let reply = ask(&s.router).await;
        assert_eq!(reply.first, "hold ");
        let mut rest = reply.rest;
        // Anthropic's message_start usage, read before the first token, comes first.
        let next = loop {
            match rest.next().await.unwrap().unwrap() {
                StreamItem::Usage(_) => continue,
                other => break other,
            }
        };
        assert_eq!(next, StreamItem::Delta("on".into()));
        assert!(s.a.disconnects().is_empty());
        drop(rest);
        let disconnect = wait_for_disconnect(&s.a).await;
        assert_eq!((disconnect.route, disconnect.chunks_sent), (route, 2));
    }
}

#[tokio::test]
async fn an_unknown_model_or_missing_provider_fails_or_falls_back() {
    let s = setup(ProviderKind::Openai, |s| {
        let route = vec!["local/smollm2-135m".into(), "b/model-b".into()];
        s.models.insert("with-local".into(), ModelSettings { route, ..ModelSettings::default() });
    })
    .await;
    let failure = s.router.stream("nope", prompt(), Parameters::default()).await.unwrap_err();
    assert_eq!(failure.error.class, ErrorClass::NotFound);
    // The local provider is configured but was not given to the router.
    let reply = s.router.stream("with-local", prompt(), Parameters::default()).await.unwrap();
    assert_eq!(reply.provider, "b");
    assert_eq!(outcomes(&reply.attempts)[0], ("local".into(), AttemptOutcome::Failed, Some(ErrorClass::NotFound)));
}

#[tokio::test]
async fn when_every_target_fails_the_failure_lists_every_attempt() {
    let s = setup(ProviderKind::Openai, |_| {}).await;
    s.a.push(Route::ChatCompletions, Script::status(500));
    s.b.push(Route::ChatCompletions, Script::status(401));
    let failure = s.router.stream(MODEL, prompt(), Parameters::default()).await.unwrap_err();
    assert_eq!(failure.error.class, ErrorClass::Auth);
    assert_eq!(failure.attempts.len(), 2);
    assert!(failure.attempts.iter().all(|a| a.outcome == AttemptOutcome::Failed));
    let json = serde_json::to_value(&failure.attempts[1]).unwrap();
    assert_eq!(json["outcome"], "failed");
    assert_eq!(json["error_class"], "auth");
    assert_eq!(json["status"], 401);
}

#[tokio::test]
async fn counting_tokens_uses_the_first_targets_tokenizer() {
    let s = setup(ProviderKind::Openai, |_| {}).await;
    let messages = prompt();
    assert_eq!(s.router.count_tokens(MODEL, &messages), colloquy_providers::tokens::count_openai("model-a", &messages));
    let local_only = Router::new(AssistantSettings::default(), HashMap::new(), &prometheus::Registry::new()).unwrap();
    assert_eq!(
        local_only.count_tokens("local/smollm2-135m", &messages),
        colloquy_providers::tokens::estimate(&messages)
    );
}

async fn wait_for_disconnect(fake: &FakeProvider) -> colloquy_providers::testing::Disconnect {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(d) = fake.disconnects().into_iter().next() {
            return d;
        }
        assert!(Instant::now() < deadline, "the upstream connection was not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_half_open_circuit_lets_exactly_one_probe_through() {
    let open_ms = 300;
    let s = setup(ProviderKind::Openai, |s| s.circuit = CircuitSettings { failure_threshold: 1, open_ms }).await;
    s.a.push(Route::ChatCompletions, Script::status(500));
    assert_eq!(ask(&s.router).await.provider, "b");
    tokio::time::sleep(Duration::from_millis(open_ms + 100)).await;
    // The probe is slow to its first token; a reply asked meanwhile does not call `a`.
    s.a.push(Route::ChatCompletions, Script::reply(&["probe"]).with_delay(Duration::from_millis(800)));
    let (probe, meanwhile) = tokio::join!(ask(&s.router), async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.a.requests().len() < 2 {
            assert!(Instant::now() < deadline, "the probe never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ask(&s.router).await
    });
    assert_eq!((probe.provider.as_str(), probe.first.as_str()), ("a", "probe"));
    assert_eq!(meanwhile.provider, "b");
    assert_eq!(outcomes(&meanwhile.attempts)[0], ("a".into(), AttemptOutcome::Skipped, Some(ErrorClass::CircuitOpen)));
    assert_eq!(s.a.requests().len(), 2);
    assert_eq!(metric(&s.registry, "colloquy_provider_circuit_state", &[("provider", "a")]), 0.0);
}

#[tokio::test]
async fn usage_reported_by_the_caller_is_counted() {
    let s = setup(ProviderKind::Openai, |_| {}).await;
    s.router.record_usage("b", "model-b", colloquy_providers::Usage { input_tokens: 10, output_tokens: 4 });
    s.router.record_usage("b", "model-b", colloquy_providers::Usage { input_tokens: 5, output_tokens: 1 });
    assert_eq!(
        metric(&s.registry, "colloquy_provider_input_tokens_total", &[("provider", "b"), ("model", "model-b")]),
        15.0
    );
    assert_eq!(metric(&s.registry, "colloquy_provider_output_tokens_total", &[("provider", "b")]), 5.0);
}
