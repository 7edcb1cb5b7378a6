//! Settings of the knowledge base: which embedder turns its chunks into vectors. Part of
//! [`crate::Settings`] (key `knowledge`), layered like the rest: defaults, file,
//! `COLLOQUY_KNOWLEDGE__...`.
//!
//! With nothing configured, the local all-MiniLM-L6-v2 (384 dimensions) embeds, so a fresh
//! install indexes and searches with no network and no key. Any OpenAI-compatible
//! embeddings API is used by naming its entry of `assistant.providers`: the endpoint, key
//! and headers are configured once, for chat and embeddings alike.

use serde::{Deserialize, Serialize};

use crate::assistant_settings::{AssistantSettings, ProviderKind};

/// The embedder name that means the local model, run in-process.
pub const LOCAL_EMBEDDER: &str = "local";
/// The local embedding model.
pub const LOCAL_EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
/// The length of the local model's vectors.
pub const LOCAL_EMBEDDING_DIMENSION: usize = 384;

/// Everything the knowledge base is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KnowledgeSettings {
    /// The embedder of chunks and search queries.
    pub embedder: EmbedderSettings,
}

/// The embedder of chunks and search queries. Changing the model or the dimension makes the
/// existing index unusable for search (vectors of different models are not comparable):
/// documents must be re-indexed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmbedderSettings {
    /// `local` (the local model), or the name of an entry of `assistant.providers` of kind
    /// `openai` (any OpenAI-compatible embeddings API).
    pub provider: String,
    /// The model's name on that provider (`text-embedding-3-small`); the local provider knows
    /// only `all-minilm-l6-v2`.
    pub model: String,
    /// The length of the model's vectors (the index's vector column). A provider answering
    /// vectors of another length is an error.
    pub dimension: usize,
    /// Texts embedded per request (or per forward pass of the local model).
    pub batch_size: usize,
}

impl Default for EmbedderSettings {
    fn default() -> Self {
        Self {
            provider: LOCAL_EMBEDDER.to_string(),
            model: LOCAL_EMBEDDING_MODEL.to_string(),
            dimension: LOCAL_EMBEDDING_DIMENSION,
            batch_size: 32,
        }
    }
}

impl EmbedderSettings {
    /// Whether the local model embeds.
    pub fn is_local(&self) -> bool {
        self.provider == LOCAL_EMBEDDER
    }
}

/// A configuration mistake found by [`KnowledgeSettings::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KnowledgeConfigError {
    /// The embedder names a provider that is not in `assistant.providers`.
    #[error("knowledge.embedder.provider `{provider}` is not configured in assistant.providers")]
    UnknownProvider {
        /// The provider.
        provider: String,
    },
    /// The embedder names a provider that has no OpenAI-compatible embeddings API.
    #[error("knowledge.embedder.provider `{provider}` is of kind {kind:?}; embeddings need kind openai (or `local`)")]
    NotOpenAi {
        /// The provider.
        provider: String,
        /// Its kind.
        kind: ProviderKind,
    },
    /// The local provider is configured with a model or dimension it does not have.
    #[error(
        "the local embedder is {LOCAL_EMBEDDING_MODEL} with {LOCAL_EMBEDDING_DIMENSION} dimensions, \
         not `{model}` with {dimension}"
    )]
    LocalModel {
        /// The configured model.
        model: String,
        /// The configured dimension.
        dimension: usize,
    },
    /// The model name is empty.
    #[error("knowledge.embedder.model is empty")]
    EmptyModel,
    /// The dimension is 0.
    #[error("knowledge.embedder.dimension must be at least 1")]
    ZeroDimension,
    /// The batch size is 0.
    #[error("knowledge.embedder.batch_size must be at least 1")]
    ZeroBatchSize,
}

impl KnowledgeSettings {
    /// Every mistake of the configuration, given the assistant's providers: an embedder
    /// provider that is not configured or is not OpenAI-compatible (`local` always is
    /// fine, whatever `assistant.providers` holds), a local model other than the one there
    /// is, an empty model, a zero dimension or batch size. Empty when it is usable.
    pub fn check(&self, assistant: &AssistantSettings) -> Result<(), Vec<KnowledgeConfigError>> {
        let embedder = &self.embedder;
        let mut errors = Vec::new();
        if embedder.is_local() {
            if embedder.model != LOCAL_EMBEDDING_MODEL || embedder.dimension != LOCAL_EMBEDDING_DIMENSION {
                errors.push(KnowledgeConfigError::LocalModel {
                    model: embedder.model.clone(),
                    dimension: embedder.dimension,
                });
            }
        } else {
            match assistant.providers.get(&embedder.provider) {
                None => errors.push(KnowledgeConfigError::UnknownProvider { provider: embedder.provider.clone() }),
                Some(entry) if entry.kind != ProviderKind::Openai => errors
                    .push(KnowledgeConfigError::NotOpenAi { provider: embedder.provider.clone(), kind: entry.kind }),
                Some(_) => {}
            }
            if embedder.model.trim().is_empty() {
                errors.push(KnowledgeConfigError::EmptyModel);
            }
            if embedder.dimension == 0 {
                errors.push(KnowledgeConfigError::ZeroDimension);
            }
        }
        if embedder.batch_size == 0 {
            errors.push(KnowledgeConfigError::ZeroBatchSize);
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
    use crate::assistant_settings::ProviderSettings;
    use crate::Settings;

    fn with_provider(name: &str, kind: ProviderKind) -> AssistantSettings {
        let mut assistant = AssistantSettings::default();
        assistant.providers.insert(name.into(), ProviderSettings { kind, ..ProviderSettings::default() });
        assistant
    }

    fn openai_embedder(provider: &str) -> KnowledgeSettings {
        KnowledgeSettings {
            embedder: EmbedderSettings {
                provider: provider.into(),
                model: "text-embedding-3-small".into(),
                dimension: 1536,
                batch_size: 64,
            },
        }
    }

    #[test]
    fn the_defaults_embed_with_the_local_model() {
        let s = KnowledgeSettings::default();
        assert_eq!(s.embedder.provider, "local");
        assert!(s.embedder.is_local());
        assert_eq!(s.embedder.model, "all-minilm-l6-v2");
        assert_eq!((s.embedder.dimension, s.embedder.batch_size), (384, 32));
        assert_eq!(s.check(&AssistantSettings::default()), Ok(()));
        assert_eq!(Settings::default().knowledge, s);
    }

    #[test]
    fn local_needs_no_provider_entry() {
        let mut assistant = AssistantSettings::default();
        assistant.providers.clear();
        assert_eq!(KnowledgeSettings::default().check(&assistant), Ok(()));
    }

    #[test]
    fn an_openai_kind_provider_is_accepted() {
        let assistant = with_provider("openai", ProviderKind::Openai);
        assert_eq!(openai_embedder("openai").check(&assistant), Ok(()));
    }

    #[test]
    fn an_unconfigured_provider_is_refused() {
        let errors = openai_embedder("openai").check(&AssistantSettings::default()).unwrap_err();
        assert_eq!(errors, vec![KnowledgeConfigError::UnknownProvider { provider: "openai".into() }]);
    }

    #[test]
    fn a_provider_of_another_kind_is_refused() {
        let assistant = with_provider("claude", ProviderKind::Anthropic);
        let errors = openai_embedder("claude").check(&assistant).unwrap_err();
        assert_eq!(
            errors,
            vec![KnowledgeConfigError::NotOpenAi { provider: "claude".into(), kind: ProviderKind::Anthropic }]
        );
        // The assistant's local chat model entry is not an embeddings API either.
        let mut assistant = AssistantSettings::default();
        assistant.providers.insert("smol".into(), ProviderSettings::local());
        let errors = openai_embedder("smol").check(&assistant).unwrap_err();
        assert_eq!(
            errors,
            vec![KnowledgeConfigError::NotOpenAi { provider: "smol".into(), kind: ProviderKind::Local }]
        );
    }

    #[test]
    fn the_local_embedder_has_one_model_and_dimension() {
        let mut s = KnowledgeSettings::default();
        s.embedder.dimension = 768;
        assert_eq!(
            s.check(&AssistantSettings::default()).unwrap_err(),
            vec![KnowledgeConfigError::LocalModel { model: "all-minilm-l6-v2".into(), dimension: 768 }]
        );
        s.embedder = EmbedderSettings { model: "text-embedding-3-small".into(), ..EmbedderSettings::default() };
        assert_eq!(
            s.check(&AssistantSettings::default()).unwrap_err(),
            vec![KnowledgeConfigError::LocalModel { model: "text-embedding-3-small".into(), dimension: 384 }]
        );
    }

    #[test]
    fn check_names_every_mistake() {
        let s = KnowledgeSettings {
            embedder: EmbedderSettings { provider: "nowhere".into(), model: " ".into(), dimension: 0, batch_size: 0 },
        };
        assert_eq!(
            s.check(&AssistantSettings::default()).unwrap_err(),
            vec![
                KnowledgeConfigError::UnknownProvider { provider: "nowhere".into() },
                KnowledgeConfigError::EmptyModel,
                KnowledgeConfigError::ZeroDimension,
                KnowledgeConfigError::ZeroBatchSize,
            ]
        );
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_embedder_comes_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_ASSISTANT__PROVIDERS__OPENAI__KIND", "openai");
            jail.set_env("COLLOQUY_ASSISTANT__PROVIDERS__OPENAI__API_KEY", "sk-env");
            jail.set_env("COLLOQUY_KNOWLEDGE__EMBEDDER__PROVIDER", "openai");
            jail.set_env("COLLOQUY_KNOWLEDGE__EMBEDDER__MODEL", "text-embedding-3-small");
            jail.set_env("COLLOQUY_KNOWLEDGE__EMBEDDER__DIMENSION", "1536");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let embedder = &s.knowledge.embedder;
            assert_eq!(embedder.provider, "openai");
            assert!(!embedder.is_local());
            assert_eq!(embedder.model, "text-embedding-3-small");
            assert_eq!(embedder.dimension, 1536);
            assert_eq!(embedder.batch_size, 32, "unset fields keep their default");
            assert_eq!(s.knowledge.check(&s.assistant), Ok(()));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_embedder_comes_from_a_file_and_the_environment_overrides_it() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "colloquy.toml",
                r#"
                [assistant.providers.ollama]
                kind = "openai"
                base_url = "http://localhost:11434/v1"
                [knowledge.embedder]
                provider = "ollama"
                model = "nomic-embed-text"
                dimension = 768
                batch_size = 16
                "#,
            )?;
            jail.set_env("COLLOQUY_KNOWLEDGE__EMBEDDER__BATCH_SIZE", "8");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let embedder = &s.knowledge.embedder;
            assert_eq!(
                (embedder.provider.as_str(), embedder.model.as_str(), embedder.dimension, embedder.batch_size),
                ("ollama", "nomic-embed-text", 768, 8)
            );
            assert_eq!(s.knowledge.check(&s.assistant), Ok(()));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_dimension_that_is_not_a_number_is_refused_without_repeating_it() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_KNOWLEDGE__EMBEDDER__DIMENSION", "many");
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(error.contains("knowledge.embedder.dimension"), "{error}");
            assert!(!error.contains("many"), "{error}");
            Ok(())
        });
    }
}
