//! Settings of the assistant: the configured model providers (OpenAI-compatible servers,
//! Anthropic, the local model), the models clients may name with their fallback routes, and
//! the retry and circuit-breaker policy of the router. Part of [`crate::Settings`] (key
//! `assistant`), layered like the rest: defaults, file, `COLLOQUY_ASSISTANT__...`.
//!
//! With nothing configured, one provider `local` (the local model) answers the one model
//! `local/smollm2-135m`, so a fresh install answers with no network and no key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::REDACTED;

/// The name of the default local provider and model.
pub const LOCAL_PROVIDER: &str = "local";
/// The model answered when nothing is configured.
pub const LOCAL_MODEL: &str = "local/smollm2-135m";

/// Everything the assistant is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssistantSettings {
    /// The model used when the request, the conversation and the user name none.
    pub default_model: String,
    /// Configured provider endpoints by name (the name routes refer to).
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Models clients may name, by that name.
    pub models: BTreeMap<String, ModelSettings>,
    /// Retries of one route target.
    pub retry: RetrySettings,
    /// The circuit breaker kept per provider.
    pub circuit: CircuitSettings,
    /// The local model runtime.
    pub local: LocalSettings,
    /// The assistant worker (`colloquy assistant`).
    pub worker: WorkerSettings,
    /// What provider calls cost, by `provider/upstream-model` (as routes name targets). A
    /// call to a model with no price costs 0 and is listed as unpriced. Costs are a
    /// projection of the usage ledger: change a price and rebuild the `usage` read model to
    /// re-price the past.
    pub prices: PriceTable,
}

/// Prices by `provider/upstream-model`.
pub type PriceTable = BTreeMap<String, ModelPrice>;

/// The price of one model, per million tokens (in the currency the operator bills in).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// Per million prompt tokens.
    pub input_per_million: f64,
    /// Per million generated tokens.
    pub output_per_million: f64,
}

impl ModelPrice {
    /// What `input` prompt and `output` generated tokens cost.
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input_per_million + output as f64 * self.output_per_million) / 1_000_000.0
    }
}

/// The price of `model` at `provider` in `prices` (keyed `provider/model`, as routes name
/// their targets), if configured.
pub fn price_of(prices: &PriceTable, provider: &str, model: &str) -> Option<ModelPrice> {
    prices.get(&format!("{provider}/{model}")).copied()
}

/// The assistant worker's knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Whether posted messages are answered. `false`: no assistant worker starts (not even
    /// inside `colloquy dev`); messages are stored and never answered, and their reply
    /// streams end with `reply_not_found` after `streams.wait_for_start_secs`. Meant for
    /// load tests of the event pipeline (`bench/README.md`); to answer at once, configure a
    /// provider that does instead.
    pub enabled: bool,
    /// Replies running (or waiting their conversation's turn) in one worker, at most; past
    /// that the worker stops taking messages from Kafka until one finishes.
    pub max_concurrent_replies: usize,
    /// How long a reply's lease lasts unless its worker renews it (it renews every third of
    /// it). A worker that dies mid-reply leaves the reply to be ended by another worker
    /// this long after its last renewal.
    pub lease_ms: u64,
    /// How often each worker looks for expired leases.
    pub sweep_interval_ms: u64,
    /// On shutdown, how long running replies may go on before they end as failed
    /// (`worker_stopped`, partial text kept).
    pub shutdown_grace_ms: u64,
    /// Most messages of the path to a message read to build its prompt (the context window
    /// trims further).
    pub history_limit: i64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_replies: 32,
            lease_ms: 30_000,
            sweep_interval_ms: 5_000,
            shutdown_grace_ms: 10_000,
            history_limit: 200,
        }
    }
}

impl AssistantSettings {
    /// Whether a model's route goes through provider `name`.
    pub fn routes_use(&self, name: &str) -> bool {
        self.models.values().flat_map(|m| &m.route).any(|t| split_target(t).is_some_and(|(p, _)| p == name))
    }
}

impl Default for AssistantSettings {
    fn default() -> Self {
        let mut providers = BTreeMap::new();
        providers.insert(LOCAL_PROVIDER.to_string(), ProviderSettings::local());
        let mut models = BTreeMap::new();
        models.insert(
            LOCAL_MODEL.to_string(),
            ModelSettings { route: vec![LOCAL_MODEL.to_string()], context_window: 2048, max_output_tokens: 256 },
        );
        Self {
            default_model: LOCAL_MODEL.to_string(),
            providers,
            models,
            retry: RetrySettings::default(),
            circuit: CircuitSettings::default(),
            local: LocalSettings::default(),
            worker: WorkerSettings::default(),
            prices: BTreeMap::new(),
        }
    }
}

/// What implements a provider entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible chat completions server (OpenAI, Azure, Ollama, vLLM, ...).
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// The local model, run in-process.
    Local,
}

/// One configured provider endpoint.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderSettings {
    /// The implementation.
    pub kind: ProviderKind,
    /// The API's base URL (`https://api.openai.com/v1`, `https://api.anthropic.com/v1`,
    /// `http://localhost:11434/v1`). Empty for the local model.
    pub base_url: String,
    /// The API key. A secret: never printed.
    pub api_key: Option<String>,
    /// Extra headers sent with every request (Azure's `api-key`, OpenRouter's `HTTP-Referer`).
    /// Their values may be secrets: never printed.
    pub headers: BTreeMap<String, String>,
    /// Milliseconds to establish a connection.
    pub connect_timeout_ms: u64,
    /// Milliseconds from sending a request to its first token; past it the router gives up
    /// on the attempt (and may retry or fall back).
    pub first_token_timeout_ms: u64,
}

impl ProviderSettings {
    /// The local model's entry.
    pub fn local() -> Self {
        Self { kind: ProviderKind::Local, base_url: String::new(), ..Self::default() }
    }
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Openai,
            base_url: "https://api.openai.com/v1".into(),
            api_key: None,
            headers: BTreeMap::new(),
            connect_timeout_ms: 5_000,
            first_token_timeout_ms: 30_000,
        }
    }
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: BTreeMap<&str, &str> = self.headers.keys().map(|k| (k.as_str(), REDACTED)).collect();
        f.debug_struct("ProviderSettings")
            .field("kind", &self.kind)
            .field("base_url", &crate::settings::redact_url(&self.base_url))
            .field("api_key", &self.api_key.as_ref().map(|_| REDACTED))
            .field("headers", &headers)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("first_token_timeout_ms", &self.first_token_timeout_ms)
            .finish()
    }
}

/// One model clients may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSettings {
    /// Targets tried in order, each `<provider>/<upstream model>` (the upstream model may
    /// itself contain slashes: `openrouter/meta-llama/llama-3.1-8b`).
    pub route: Vec<String>,
    /// Tokens of the model's context window (prompt and answer).
    pub context_window: usize,
    /// Most tokens of an answer, unless the request asks for fewer.
    pub max_output_tokens: u32,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self { route: Vec::new(), context_window: 8192, max_output_tokens: 1024 }
    }
}

/// One route target, split: `openai/gpt-4o-mini` is provider `openai`, model `gpt-4o-mini`.
pub fn split_target(target: &str) -> Option<(&str, &str)> {
    target.split_once('/').filter(|(provider, model)| !provider.is_empty() && !model.is_empty())
}

/// Retries of one route target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrySettings {
    /// Attempts per target (1 means no retry).
    pub max_attempts: u32,
    /// The first backoff, in milliseconds (doubled per retry, with full jitter).
    pub base_delay_ms: u64,
    /// The longest backoff, in milliseconds.
    pub max_delay_ms: u64,
    /// The longest `Retry-After` honoured, in milliseconds; a longer one moves on to the
    /// next target at once.
    pub max_retry_after_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self { max_attempts: 3, base_delay_ms: 200, max_delay_ms: 10_000, max_retry_after_ms: 30_000 }
    }
}

/// The circuit breaker kept per provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CircuitSettings {
    /// Consecutive failed attempts that open the circuit.
    pub failure_threshold: u32,
    /// Milliseconds the circuit stays open before one probe is let through.
    pub open_ms: u64,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        Self { failure_threshold: 5, open_ms: 30_000 }
    }
}

/// The local model runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalSettings {
    /// Where `scripts/models.sh` unpacked the model files.
    pub models_dir: PathBuf,
    /// Generations running at once, at most (each takes a core).
    pub max_concurrent: usize,
}

impl Default for LocalSettings {
    fn default() -> Self {
        Self { models_dir: PathBuf::from(".colloquy/models"), max_concurrent: 1 }
    }
}

/// A configuration mistake found by [`AssistantSettings::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssistantConfigError {
    /// A route target is not `<provider>/<model>`.
    #[error("model `{model}`: route target `{target}` is not `<provider>/<model>`")]
    MalformedTarget {
        /// The model.
        model: String,
        /// The target.
        target: String,
    },
    /// A route target names a provider that is not configured.
    #[error("model `{model}`: route target `{target}` names provider `{provider}`, which is not configured")]
    UnknownProvider {
        /// The model.
        model: String,
        /// The target.
        target: String,
        /// The provider.
        provider: String,
    },
    /// A model has no route.
    #[error("model `{model}` has an empty route")]
    EmptyRoute {
        /// The model.
        model: String,
    },
    /// The default model is not a configured model.
    #[error("default_model `{model}` is not a configured model")]
    UnknownDefaultModel {
        /// The model.
        model: String,
    },
}

impl AssistantSettings {
    /// Every mistake of the configuration: each route target whose provider is not
    /// configured (or that is malformed), each empty route, and a default model that is not
    /// a model. Empty when the configuration is usable.
    pub fn check(&self) -> Result<(), Vec<AssistantConfigError>> {
        let mut errors = Vec::new();
        for (model, settings) in &self.models {
            if settings.route.is_empty() {
                errors.push(AssistantConfigError::EmptyRoute { model: model.clone() });
            }
            for target in &settings.route {
                match split_target(target) {
                    None => errors
                        .push(AssistantConfigError::MalformedTarget { model: model.clone(), target: target.clone() }),
                    Some((provider, _)) if !self.providers.contains_key(provider) => {
                        errors.push(AssistantConfigError::UnknownProvider {
                            model: model.clone(),
                            target: target.clone(),
                            provider: provider.to_string(),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        if !self.models.contains_key(&self.default_model) {
            errors.push(AssistantConfigError::UnknownDefaultModel { model: self.default_model.clone() });
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    #[test]
    fn the_defaults_answer_with_the_local_model() {
        let s = AssistantSettings::default();
        assert_eq!(s.default_model, LOCAL_MODEL);
        assert_eq!(s.providers[LOCAL_PROVIDER].kind, ProviderKind::Local);
        let model = &s.models[LOCAL_MODEL];
        assert_eq!(model.route, vec![LOCAL_MODEL.to_string()]);
        assert_eq!((model.context_window, model.max_output_tokens), (2048, 256));
        assert_eq!(s.local.models_dir, PathBuf::from(".colloquy/models"));
        assert_eq!(s.local.max_concurrent, 1);
        assert_eq!(s.check(), Ok(()));
        assert_eq!(Settings::default().assistant, s);
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn providers_and_models_come_from_a_file_and_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "colloquy.toml",
                r#"
                [assistant]
                default_model = "gpt-4o-mini"
                [assistant.providers.openai]
                kind = "openai"
                base_url = "https://api.openai.com/v1"
                api_key = "sk-file"
                headers = { "OpenAI-Organization" = "org-1" }
                [assistant.providers.claude]
                kind = "anthropic"
                base_url = "https://api.anthropic.com/v1"
                [assistant.models."gpt-4o-mini"]
                route = ["openai/gpt-4o-mini", "claude/claude-3-5-haiku-latest", "local/smollm2-135m"]
                context_window = 128000
                [assistant.retry]
                max_attempts = 2
                "#,
            )?;
            jail.set_env("COLLOQUY_ASSISTANT__PROVIDERS__CLAUDE__API_KEY", "sk-ant-env");
            jail.set_env("COLLOQUY_ASSISTANT__CIRCUIT__OPEN_MS", "1000");
            jail.set_env("COLLOQUY_ASSISTANT__PROVIDERS__OPENAI__FIRST_TOKEN_TIMEOUT_MS", "5000");
            let s = Settings::load(None).map_err(|e| e.to_string())?.assistant;
            assert_eq!(s.default_model, "gpt-4o-mini");
            let openai = &s.providers["openai"];
            assert_eq!(openai.api_key.as_deref(), Some("sk-file"));
            assert_eq!(openai.headers["OpenAI-Organization"], "org-1");
            assert_eq!(openai.first_token_timeout_ms, 5000);
            assert_eq!(openai.connect_timeout_ms, 5000, "unset fields keep their default");
            assert_eq!(s.providers["claude"].kind, ProviderKind::Anthropic);
            assert_eq!(s.providers["claude"].api_key.as_deref(), Some("sk-ant-env"));
            // The local defaults stay alongside what was configured.
            assert_eq!(s.providers[LOCAL_PROVIDER].kind, ProviderKind::Local);
            assert!(s.models.contains_key(LOCAL_MODEL));
            let model = &s.models["gpt-4o-mini"];
            assert_eq!(model.route.len(), 3);
            assert_eq!(model.context_window, 128_000);
            assert_eq!(model.max_output_tokens, 1024);
            assert_eq!(s.retry.max_attempts, 2);
            assert_eq!(s.retry.base_delay_ms, 200);
            assert_eq!(s.circuit.open_ms, 1000);
            assert_eq!(s.circuit.failure_threshold, 5);
            assert_eq!(s.check(), Ok(()));
            Ok(())
        });
    }

    /// The variables docs/docker.md gives compose users, verbatim.
    #[test]
    #[allow(clippy::result_large_err)]
    fn a_provider_and_a_model_come_from_the_environment_alone() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_ASSISTANT__DEFAULT_MODEL", "gpt-4o-mini");
            jail.set_env("COLLOQUY_ASSISTANT__PROVIDERS__OPENAI__KIND", "openai");
            jail.set_env("COLLOQUY_ASSISTANT__PROVIDERS__OPENAI__BASE_URL", "https://api.openai.com/v1");
            jail.set_env("COLLOQUY_ASSISTANT__PROVIDERS__OPENAI__API_KEY", "sk-env");
            jail.set_env(
                "COLLOQUY_ASSISTANT__MODELS__GPT-4O-MINI__ROUTE",
                r#"["openai/gpt-4o-mini", "local/smollm2-135m"]"#,
            );
            jail.set_env("COLLOQUY_ASSISTANT__MODELS__GPT-4O-MINI__CONTEXT_WINDOW", "128000");
            let s = Settings::load(None).map_err(|e| e.to_string())?.assistant;
            assert_eq!(s.default_model, "gpt-4o-mini");
            assert_eq!(s.providers["openai"].kind, ProviderKind::Openai);
            assert_eq!(s.providers["openai"].api_key.as_deref(), Some("sk-env"));
            let model = &s.models["gpt-4o-mini"];
            assert_eq!(model.route, ["openai/gpt-4o-mini", "local/smollm2-135m"]);
            assert_eq!(model.context_window, 128_000);
            assert!(s.models.contains_key(LOCAL_MODEL), "the local model stays");
            assert_eq!(s.check(), Ok(()));
            Ok(())
        });
    }

    #[test]
    fn keys_and_header_values_are_not_printed() {
        let mut s = AssistantSettings::default();
        let mut headers = BTreeMap::new();
        headers.insert("api-key".to_string(), "azure-s3cret".to_string());
        s.providers.insert(
            "azure".into(),
            ProviderSettings {
                api_key: Some("sk-s3cret".into()),
                headers,
                base_url: "https://user:url-s3cret@example.openai.azure.com/openai".into(),
                ..ProviderSettings::default()
            },
        );
        let printed = format!("{s:?} {s:#?} {:?}", Settings { assistant: s.clone(), ..Settings::default() });
        for secret in ["sk-s3cret", "azure-s3cret", "url-s3cret"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
        assert!(printed.contains("api-key"), "header names are printed: {printed}");
    }

    #[test]
    fn check_names_every_unknown_provider_and_the_default_model() {
        let mut s = AssistantSettings::default();
        s.models.insert(
            "gpt-4o".into(),
            ModelSettings {
                route: vec!["openai/gpt-4o".into(), "local/smollm2-135m".into(), "nonsense".into()],
                ..ModelSettings::default()
            },
        );
        s.models
            .insert("claude".into(), ModelSettings { route: vec!["anthropic/claude-3".into()], ..Default::default() });
        s.models.insert("empty".into(), ModelSettings::default());
        s.default_model = "gpt-5".into();
        let errors = s.check().unwrap_err();
        assert_eq!(
            errors,
            vec![
                AssistantConfigError::UnknownProvider {
                    model: "claude".into(),
                    target: "anthropic/claude-3".into(),
                    provider: "anthropic".into()
                },
                AssistantConfigError::EmptyRoute { model: "empty".into() },
                AssistantConfigError::UnknownProvider {
                    model: "gpt-4o".into(),
                    target: "openai/gpt-4o".into(),
                    provider: "openai".into()
                },
                AssistantConfigError::MalformedTarget { model: "gpt-4o".into(), target: "nonsense".into() },
                AssistantConfigError::UnknownDefaultModel { model: "gpt-5".into() },
            ]
        );
    }

    #[test]
    fn targets_split_at_the_first_slash() {
        assert_eq!(split_target("openai/gpt-4o"), Some(("openai", "gpt-4o")));
        assert_eq!(split_target("openrouter/meta-llama/llama-3"), Some(("openrouter", "meta-llama/llama-3")));
        assert_eq!(split_target("openai"), None);
        assert_eq!(split_target("/gpt"), None);
    }
}
