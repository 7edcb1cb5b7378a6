//! The models clients may ask for: the configured ones (`assistant.models`). A conversation
//! or a message that names another model is refused before anything is stored, so no reply
//! is ever asked of a model nobody configured.

use std::collections::BTreeSet;

use colloquy_domain::conversation::ConversationError;

use crate::errors::UseCaseError;

/// The configured model names and the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCatalog {
    names: BTreeSet<String>,
    /// The model of a conversation whose request and owner name none.
    pub default: String,
}

/// The default configuration's only model: the local one.
pub const LOCAL_MODEL: &str = "local/smollm2-135m";

impl Default for ModelCatalog {
    fn default() -> Self {
        Self::new([LOCAL_MODEL.to_string()], LOCAL_MODEL.to_string())
    }
}

impl ModelCatalog {
    /// A catalog of `names` with `default` (added to the names if missing).
    pub fn new(names: impl IntoIterator<Item = String>, default: String) -> Self {
        let mut names: BTreeSet<String> = names.into_iter().collect();
        names.insert(default.clone());
        Self { names, default }
    }

    /// Refuses a model that is not configured. A name that is not even well-formed (empty,
    /// too long, invisible characters) passes here: the aggregate refuses it with the
    /// precise reason.
    pub fn check(&self, model: &str) -> Result<(), UseCaseError<ConversationError>> {
        let Ok(name) = colloquy_domain::values::model_name(model) else { return Ok(()) };
        match self.names.contains(&name) {
            true => Ok(()),
            false => Err(UseCaseError::rejected(ConversationError::UnknownModel)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_models_pass() {
        let catalog = ModelCatalog::new(["gpt-4o-mini".to_string()], "local/smollm2-135m".into());
        assert!(catalog.check("gpt-4o-mini").is_ok());
        assert!(catalog.check("local/smollm2-135m").is_ok(), "the default is always a model");
        assert!(matches!(
            catalog.check("gpt-5-imaginary"),
            Err(UseCaseError::Rejected { rejection: ConversationError::UnknownModel, .. })
        ));
    }
}
