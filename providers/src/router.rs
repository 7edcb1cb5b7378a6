//! The router: resolves the model a reply uses, walks the model's route (its ordered
//! fallback chain) with retries, backoff and `Retry-After`, keeps a circuit breaker per
//! provider, and hands back the stream at its first token. From the first token on it
//! never switches provider: a later failure reaches the caller as an `Err` item.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colloquy_infra::assistant_settings::{split_target, AssistantSettings, ProviderKind};
use futures::StreamExt;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{
    Anthropic, ChatMessage, ChatProvider, ChatRequest, ChatStream, ErrorClass, OpenAiCompatible, Parameters,
    ProviderBuildError, ProviderError, StreamItem, Usage,
};

/// First-token timeout of a provider that has no settings entry (milliseconds).
const DEFAULT_FIRST_TOKEN_TIMEOUT_MS: u64 = 30_000;

/// A model clients may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The name clients use.
    pub name: String,
    /// Tokens of its context window.
    pub context_window: usize,
    /// Most tokens of an answer.
    pub max_output_tokens: u32,
    /// Its targets, `<provider>/<upstream model>`, in the order they are tried.
    pub route: Vec<String>,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// It produced the first token: the reply streams from it.
    Succeeded,
    /// It failed before the first token.
    Failed,
    /// The provider's circuit was open: not called.
    Skipped,
}

/// One attempt of a routed reply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Attempt {
    /// The provider entry.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The class of its failure.
    pub error_class: Option<ErrorClass>,
    /// Its failure as the provider described it.
    pub error: Option<String>,
    /// The HTTP status of its failure, when there was one.
    pub status: Option<u16>,
    /// Milliseconds from the call to its first token (or failure).
    pub latency_ms: u64,
}

/// A reply that reached its first token.
pub struct RoutedReply {
    /// The provider entry that answers.
    pub provider: String,
    /// The upstream model that answers.
    pub model: String,
    /// The text of the first delta (empty only when the model finished without text).
    pub first: String,
    /// The rest of the reply. Dropping it cancels the upstream call.
    pub rest: ChatStream,
    /// Every attempt, the successful one last.
    pub attempts: Vec<Attempt>,
    /// When routing started.
    pub started_at: Instant,
    /// When the first token arrived.
    pub first_token_at: Instant,
}

impl std::fmt::Debug for RoutedReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedReply")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("first", &self.first)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// A reply that no target of the route could start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no provider answered: {error}")]
pub struct RouteFailure {
    /// Every attempt.
    pub attempts: Vec<Attempt>,
    /// The last failure (`NotFound` for a model that is not configured, `CircuitOpen` when
    /// every target was skipped).
    pub error: ProviderError,
}

/// The router could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Its metrics could not be registered (already registered on this registry).
    #[error("cannot register the provider metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The settings are inconsistent.
    #[error("invalid assistant configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<colloquy_infra::assistant_settings::AssistantConfigError>),
}

/// Builds every `openai` and `anthropic` provider entry of `settings` (the local one is
/// the caller's: it lives in another crate).
pub fn http_providers(
    settings: &AssistantSettings,
) -> Result<HashMap<String, Arc<dyn ChatProvider>>, ProviderBuildError> {
    let mut providers: HashMap<String, Arc<dyn ChatProvider>> = HashMap::new();
    for (name, entry) in &settings.providers {
        match entry.kind {
            ProviderKind::Openai => {
                providers.insert(name.clone(), Arc::new(OpenAiCompatible::new(name, entry)?));
            }
            ProviderKind::Anthropic => {
                providers.insert(name.clone(), Arc::new(Anthropic::new(name, entry)?));
            }
            ProviderKind::Local => {}
        }
    }
    Ok(providers)
}

/// The state of one provider's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CircuitState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl CircuitState {
    fn gauge(self) -> i64 {
        match self {
            Self::Closed { .. } => 0,
            Self::Open { .. } => 1,
            Self::HalfOpen { .. } => 2,
        }
    }
}

/// A provider's circuit breaker.
struct Circuit {
    provider: String,
    state: Mutex<CircuitState>,
}

/// Leave to call a provider; a probe that is dropped without a verdict (the caller gave up)
/// re-opens the circuit for an immediate new probe instead of blocking it forever.
struct Permit<'a> {
    circuit: &'a Circuit,
    metrics: &'a Metrics,
    probe: bool,
    settled: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.circuit.set(CircuitState::Open { until: Instant::now() }, self.metrics);
        }
    }
}

impl Circuit {
    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, state: CircuitState, metrics: &Metrics) {
        *self.lock() = state;
        metrics.circuit.with_label_values(&[&self.provider]).set(state.gauge());
    }

    /// Leave to call, or `None` while open (or while its one probe is out).
    fn admit<'a>(&'a self, metrics: &'a Metrics) -> Option<Permit<'a>> {
        let mut state = self.lock();
        let probe = match *state {
            CircuitState::Closed { .. } => false,
            CircuitState::Open { until } if Instant::now() >= until => {
                *state = CircuitState::HalfOpen { probing: true };
                true
            }
            CircuitState::Open { .. } | CircuitState::HalfOpen { probing: true } => return None,
            CircuitState::HalfOpen { probing: false } => {
                *state = CircuitState::HalfOpen { probing: true };
                true
            }
        };
        metrics.circuit.with_label_values(&[&self.provider]).set(state.gauge());
        Some(Permit { circuit: self, metrics, probe, settled: false })
    }

    fn succeeded(&self, mut permit: Permit<'_>) {
        permit.settled = true;
        self.set(CircuitState::Closed { failures: 0 }, permit.metrics);
    }

    /// A failed attempt: a counting failure (retryable classes, timeouts) moves the circuit
    /// toward open; another (the provider answered, refusing the request) is a sign of life.
    fn failed(&self, mut permit: Permit<'_>, counts: bool, threshold: u32, open_for: Duration) {
        permit.settled = true;
        let current = *self.lock();
        let next = match (counts, current) {
            (false, CircuitState::Closed { failures }) => CircuitState::Closed { failures },
            (false, _) => CircuitState::Closed { failures: 0 },
            (true, CircuitState::Closed { failures }) if failures + 1 < threshold => {
                CircuitState::Closed { failures: failures + 1 }
            }
            (true, _) => CircuitState::Open { until: Instant::now() + open_for },
        };
        self.set(next, permit.metrics);
    }
}

/// The router's Prometheus metrics.
#[derive(Clone)]
struct Metrics {
    requests: IntCounterVec,
    errors: IntCounterVec,
    fallbacks: IntCounterVec,
    circuit: IntGaugeVec,
    latency: HistogramVec,
    first_token: HistogramVec,
    tokens_in: IntCounterVec,
    tokens_out: IntCounterVec,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let pm = ["provider", "model"];
        let buckets = vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new("colloquy_provider_requests_total", "Provider calls (attempts), by provider and model."),
                &pm,
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "colloquy_provider_errors_total",
                    "Failed provider calls, by provider, model and error class.",
                ),
                &["provider", "model", "class"],
            )?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "colloquy_provider_fallbacks_total",
                    "Times a route moved on from this provider and model to its next target.",
                ),
                &pm,
            )?,
            circuit: IntGaugeVec::new(
                Opts::new(
                    "colloquy_provider_circuit_state",
                    "Circuit breaker per provider: 0 closed, 1 open, 2 half-open.",
                ),
                &["provider"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "colloquy_provider_call_duration_seconds",
                    "Whole provider calls, to the end of the stream.",
                )
                .buckets(buckets.clone()),
                &pm,
            )?,
            first_token: HistogramVec::new(
                HistogramOpts::new(
                    "colloquy_provider_time_to_first_token_seconds",
                    "Provider calls to their first token.",
                )
                .buckets(buckets),
                &pm,
            )?,
            tokens_in: IntCounterVec::new(
                Opts::new("colloquy_provider_input_tokens_total", "Prompt tokens, by provider and model."),
                &pm,
            )?,
            tokens_out: IntCounterVec::new(
                Opts::new("colloquy_provider_output_tokens_total", "Generated tokens, by provider and model."),
                &pm,
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        registry.register(Box::new(metrics.fallbacks.clone()))?;
        registry.register(Box::new(metrics.circuit.clone()))?;
        registry.register(Box::new(metrics.latency.clone()))?;
        registry.register(Box::new(metrics.first_token.clone()))?;
        registry.register(Box::new(metrics.tokens_in.clone()))?;
        registry.register(Box::new(metrics.tokens_out.clone()))?;
        Ok(metrics)
    }

    fn error(&self, provider: &str, model: &str, class: ErrorClass) {
        let class = serde_json::to_value(class).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        self.errors.with_label_values(&[provider, model, class.as_str()]).inc();
    }
}

/// Picks providers for models, retries, falls back and breaks circuits. Cheap to share
/// behind an `Arc`; every method takes `&self`.
pub struct Router {
    settings: AssistantSettings,
    providers: HashMap<String, Arc<dyn ChatProvider>>,
    circuits: HashMap<String, Circuit>,
    metrics: Metrics,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut providers: Vec<&String> = self.providers.keys().collect();
        providers.sort();
        f.debug_struct("Router").field("models", &self.settings.models.keys()).field("providers", &providers).finish()
    }
}

/// What one call of one target came to.
enum Outcome {
    Started { first: String, rest: ChatStream },
    Failed(ProviderError),
}

impl Router {
    /// A router over `providers` (by entry name; route targets name them) configured by
    /// `settings`, its metrics registered on `registry`. Refuses settings that
    /// [`AssistantSettings::check`] refuses. A configured provider missing from
    /// `providers` (the local model when it is not installed) fails its attempts as
    /// `NotFound`, so routes fall back past it.
    pub fn new(
        settings: AssistantSettings,
        providers: HashMap<String, Arc<dyn ChatProvider>>,
        registry: &Registry,
    ) -> Result<Self, RouterError> {
        settings.check().map_err(RouterError::Config)?;
        let metrics = Metrics::new(registry)?;
        let circuits = settings
            .providers
            .keys()
            .chain(providers.keys())
            .map(|name| {
                metrics.circuit.with_label_values(&[name]).set(0);
                (
                    name.clone(),
                    Circuit { provider: name.clone(), state: Mutex::new(CircuitState::Closed { failures: 0 }) },
                )
            })
            .collect();
        Ok(Self { settings, providers, circuits, metrics })
    }

    /// The models clients may name, by name.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.settings
            .models
            .iter()
            .map(|(name, m)| ModelInfo {
                name: name.clone(),
                context_window: m.context_window,
                max_output_tokens: m.max_output_tokens,
                route: m.route.clone(),
            })
            .collect()
    }

    /// The first of `requested` (request, conversation, user, in that order) that names a
    /// configured model, else the configured default model.
    pub fn resolve(&self, requested: &[Option<&str>]) -> &str {
        requested
            .iter()
            .flatten()
            .find_map(|name| self.settings.models.get_key_value(*name).map(|(k, _)| k.as_str()))
            .unwrap_or(&self.settings.default_model)
    }

    /// Whether `name` is a configured model.
    pub fn has_model(&self, name: &str) -> bool {
        self.settings.models.contains_key(name)
    }

    /// Tokens `messages` take in `model`'s prompt: counted by the provider of the route's
    /// first target when it can, else estimated with `cl100k_base`.
    pub fn count_tokens(&self, model: &str, messages: &[ChatMessage]) -> usize {
        self.settings
            .models
            .get(model)
            .and_then(|m| m.route.first())
            .and_then(|target| split_target(target))
            .and_then(|(provider, upstream)| self.providers.get(provider)?.count_tokens(upstream, messages))
            .unwrap_or_else(|| crate::tokens::estimate(messages))
    }

    /// Reports the final usage of a reply served by `provider`'s `model` (the upstream
    /// model of [`RoutedReply`]) for the token counters.
    pub fn record_usage(&self, provider: &str, model: &str, usage: Usage) {
        self.metrics.tokens_in.with_label_values(&[provider, model]).inc_by(u64::from(usage.input_tokens));
        self.metrics.tokens_out.with_label_values(&[provider, model]).inc_by(u64::from(usage.output_tokens));
    }

    /// Starts a reply of `model` (a configured model name): tries the route's targets in
    /// order, retrying retryable failures of each (backoff with full jitter, at least the
    /// provider's `Retry-After`), skipping providers whose circuit is open, and returns at
    /// the first delta. `parameters.max_tokens` is capped at (and defaults to) the model's
    /// `max_output_tokens`.
    pub async fn stream(
        &self,
        model: &str,
        messages: Vec<ChatMessage>,
        mut parameters: Parameters,
    ) -> Result<RoutedReply, RouteFailure> {
        let started_at = Instant::now();
        let Some(settings) = self.settings.models.get(model) else {
            return Err(RouteFailure {
                attempts: Vec::new(),
                error: ProviderError::new(ErrorClass::NotFound, format!("model `{model}` is not configured")),
            });
        };
        let cap = settings.max_output_tokens;
        parameters.max_tokens = Some(parameters.max_tokens.map_or(cap, |asked| asked.min(cap)));
        let retry = &self.settings.retry;
        let mut attempts = Vec::new();
        let mut last_error = None;
        for (index, target) in settings.route.iter().enumerate() {
            let Some((provider_name, upstream)) = split_target(target) else { continue };
            let mut tries = 0;
            loop {
                tries += 1;
                let request = ChatRequest {
                    model: upstream.to_string(),
                    messages: messages.clone(),
                    parameters: parameters.clone(),
                };
                let (attempt, outcome) = self.attempt(provider_name, upstream, request).await;
                attempts.push(attempt);
                let error = match outcome {
                    Outcome::Started { first, rest } => {
                        return Ok(RoutedReply {
                            provider: provider_name.to_string(),
                            model: upstream.to_string(),
                            first,
                            rest,
                            attempts,
                            started_at,
                            first_token_at: Instant::now(),
                        });
                    }
                    Outcome::Failed(error) => error,
                };
                let wait = match error.class.is_retryable() && tries < retry.max_attempts.max(1) {
                    true => self.backoff(tries, error.retry_after),
                    false => None,
                };
                last_error = Some(error);
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => break,
                }
            }
            if index + 1 < settings.route.len() {
                self.metrics.fallbacks.with_label_values(&[provider_name, upstream]).inc();
            }
        }
        let error = last_error.unwrap_or_else(|| {
            ProviderError::new(ErrorClass::NotFound, format!("model `{model}` has no usable target"))
        });
        Err(RouteFailure { attempts, error })
    }

    /// The wait before retry number `tries` (1-based): full jitter over `base·2^(tries-1)`
    /// capped at `max_delay`, but at least `retry_after`; `None` when `retry_after` is
    /// beyond `max_retry_after` (move to the next target at once).
    fn backoff(&self, tries: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let retry = &self.settings.retry;
        let exp = retry.base_delay_ms.saturating_mul(1u64 << (tries - 1).min(32)).min(retry.max_delay_ms);
        let jittered = Duration::from_millis(rand::thread_rng().gen_range(0..=exp));
        match retry_after {
            Some(after) if after > Duration::from_millis(retry.max_retry_after_ms) => None,
            Some(after) => Some(jittered.max(after)),
            None => Some(jittered),
        }
    }

    /// One call of one target, bounded by the provider's first-token timeout.
    async fn attempt(&self, provider_name: &str, upstream: &str, request: ChatRequest) -> (Attempt, Outcome) {
        let record = |outcome: AttemptOutcome, error: Option<&ProviderError>, latency: Duration| {
            let attempt = Attempt {
                provider: provider_name.to_string(),
                model: upstream.to_string(),
                outcome,
                error_class: error.map(|e| e.class),
                error: error.map(|e| e.message.clone()),
                status: error.and_then(|e| e.status),
                latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            };
            tracing::info!(
                provider = provider_name,
                model = upstream,
                outcome = ?attempt.outcome,
                class = ?attempt.error_class,
                status = attempt.status,
                latency_ms = attempt.latency_ms,
                error = attempt.error.as_deref(),
                "Provider attempt."
            );
            attempt
        };
        let (Some(provider), Some(circuit)) = (self.providers.get(provider_name), self.circuits.get(provider_name))
        else {
            let error =
                ProviderError::new(ErrorClass::NotFound, format!("provider `{provider_name}` is not available"));
            return (record(AttemptOutcome::Failed, Some(&error), Duration::ZERO), Outcome::Failed(error));
        };
        let Some(permit) = circuit.admit(&self.metrics) else {
            let error =
                ProviderError::new(ErrorClass::CircuitOpen, format!("the circuit of `{provider_name}` is open"));
            return (record(AttemptOutcome::Skipped, Some(&error), Duration::ZERO), Outcome::Failed(error));
        };
        let labels = [provider_name, upstream];
        self.metrics.requests.with_label_values(&labels).inc();
        let timeout = Duration::from_millis(
            self.settings
                .providers
                .get(provider_name)
                .map_or(DEFAULT_FIRST_TOKEN_TIMEOUT_MS, |p| p.first_token_timeout_ms),
        );
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, first_delta(provider.as_ref(), request)).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::new(
                ErrorClass::Timeout,
                format!("no first token within {} ms", timeout.as_millis()),
            )),
        };
        let latency = started.elapsed();
        match result {
            Ok((first, rest)) => {
                circuit.succeeded(permit);
                self.metrics.first_token.with_label_values(&labels).observe(latency.as_secs_f64());
                let rest = self.watch(provider_name, upstream, started, rest);
                (record(AttemptOutcome::Succeeded, None, latency), Outcome::Started { first, rest })
            }
            Err(error) => {
                let counts = error.class.is_retryable();
                circuit.failed(
                    permit,
                    counts,
                    self.settings.circuit.failure_threshold.max(1),
                    Duration::from_millis(self.settings.circuit.open_ms),
                );
                self.metrics.error(provider_name, upstream, error.class);
                self.metrics.latency.with_label_values(&labels).observe(latency.as_secs_f64());
                (record(AttemptOutcome::Failed, Some(&error), latency), Outcome::Failed(error))
            }
        }
    }

    /// `rest`, observed: the whole call's latency when it ends, its error class if it fails.
    fn watch(&self, provider: &str, model: &str, started: Instant, rest: ChatStream) -> ChatStream {
        struct Watch {
            metrics: Metrics,
            provider: String,
            model: String,
            started: Instant,
            observed: bool,
        }
        impl Watch {
            fn end(&mut self, error: Option<ErrorClass>) {
                if self.observed {
                    return;
                }
                self.observed = true;
                let labels = [self.provider.as_str(), self.model.as_str()];
                self.metrics.latency.with_label_values(&labels).observe(self.started.elapsed().as_secs_f64());
                if let Some(class) = error {
                    self.metrics.error(&self.provider, &self.model, class);
                }
            }
        }
        impl Drop for Watch {
            // A dropped (cancelled) reply still counts its duration.
            fn drop(&mut self) {
                self.end(None);
            }
        }
        let mut watch = Watch {
            metrics: self.metrics.clone(),
            provider: provider.to_string(),
            model: model.to_string(),
            started,
            observed: false,
        };
        Box::pin(rest.inspect(move |item| match item {
            Ok(StreamItem::Finished(_)) => watch.end(None),
            Err(e) => watch.end(Some(e.class)),
            Ok(_) => {}
        }))
    }
}

/// Calls `provider` and waits for its first delta; `Usage` items before it are kept in
/// front of the rest. A stream that finishes before any text is a success with empty text.
async fn first_delta(provider: &dyn ChatProvider, request: ChatRequest) -> Result<(String, ChatStream), ProviderError> {
    let mut stream = provider.stream_chat(request).await?;
    let mut before = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(StreamItem::Delta(text))) => {
                let rest = futures::stream::iter(before).chain(stream);
                return Ok((text, Box::pin(rest)));
            }
            Some(Ok(item @ StreamItem::Usage(_))) => before.push(Ok(item)),
            Some(Ok(item @ StreamItem::Finished(_))) => {
                before.push(Ok(item));
                return Ok((String::new(), Box::pin(futures::stream::iter(before))));
            }
            Some(Err(error)) => return Err(error),
            None => return Err(ProviderError::new(ErrorClass::Connection, "the stream ended before its first token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colloquy_infra::assistant_settings::RetrySettings;

    fn router(retry: RetrySettings) -> Router {
        let settings = AssistantSettings { retry, ..AssistantSettings::default() };
        Router::new(settings, HashMap::new(), &Registry::new()).unwrap()
    }

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        let r =
            router(RetrySettings { max_attempts: 5, base_delay_ms: 100, max_delay_ms: 300, max_retry_after_ms: 2_000 });
        for tries in 1..=6 {
            let cap = (100u64 << (tries - 1)).min(300);
            for _ in 0..50 {
                let wait = r.backoff(tries, None).unwrap();
                assert!(wait <= Duration::from_millis(cap), "{tries}: {wait:?}");
            }
        }
        assert!(r.backoff(1, Some(Duration::from_secs(1))).unwrap() >= Duration::from_secs(1));
        assert_eq!(r.backoff(1, Some(Duration::from_secs(3))), None, "past the cap: next target");
    }

    #[test]
    fn models_resolve_from_the_first_known_name() {
        let r = router(RetrySettings::default());
        assert_eq!(r.resolve(&[None, Some("nope"), Some("local/smollm2-135m")]), "local/smollm2-135m");
        assert_eq!(r.resolve(&[Some("nope")]), "local/smollm2-135m");
        assert!(r.has_model("local/smollm2-135m") && !r.has_model("nope"));
        assert_eq!(r.models().len(), 1);
        assert_eq!(r.models()[0].context_window, 2048);
        assert!(r.count_tokens("local/smollm2-135m", &[ChatMessage::new(crate::Role::User, "hi")]) > 0);
    }

    #[test]
    fn a_second_router_on_one_registry_is_refused() {
        let registry = Registry::new();
        assert!(Router::new(AssistantSettings::default(), HashMap::new(), &registry).is_ok());
        assert!(matches!(
            Router::new(AssistantSettings::default(), HashMap::new(), &registry),
            Err(RouterError::Metrics(_))
        ));
    }
}
