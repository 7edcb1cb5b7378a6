use crate::values::TextField;

/// Business rejections of User commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum UserError {
    /// `RegisterUser` on a user that exists.
    #[error("the user is already registered")]
    AlreadyRegistered,
    /// Any command but `RegisterUser` on a user that does not exist.
    #[error("the user does not exist")]
    NotRegistered,
    /// Any command on a deactivated user.
    #[error("the user is deactivated")]
    Deactivated,
    /// The e-mail address is not plausible.
    #[error("the e-mail address is not valid")]
    InvalidEmail,
    /// The full name is empty or longer than the limit.
    #[error("the full name must be between 1 and {max} characters")]
    InvalidFullName {
        /// The limit.
        max: usize,
    },
    /// The default model name is empty or too long.
    #[error("the model name must be between 1 and {max} characters")]
    InvalidModel {
        /// The limit.
        max: usize,
    },
    /// The system prompt is empty or too long.
    #[error("the system prompt must be between 1 and {max} characters")]
    InvalidSystemPrompt {
        /// The limit.
        max: usize,
    },
    /// A control character in a name, model name or system prompt.
    #[error("the {field} contains a control character")]
    ControlCharacter {
        /// Where.
        field: TextField,
    },
    /// A bidirectional override/isolate or zero-width character in a name, model name or
    /// system prompt.
    #[error("the {field} contains a bidirectional-override or zero-width character")]
    InvisibleCharacter {
        /// Where.
        field: TextField,
    },
    /// An update that names no field.
    #[error("the update changes nothing")]
    EmptyUpdate,
    /// An API key name that is empty, too long or holds control characters.
    #[error("the API key name must be between 1 and {max} characters")]
    InvalidApiKeyName {
        /// Most characters.
        max: usize,
    },
    /// The user holds the most live API keys allowed.
    #[error("at most {max} API keys can be live at once; revoke one first")]
    TooManyApiKeys {
        /// The limit.
        max: usize,
    },
    /// No live API key of the user's has this id.
    #[error("API key not found")]
    ApiKeyNotFound,
}
