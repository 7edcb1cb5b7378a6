use serde::Deserialize;
use uuid::Uuid;

/// What can be asked of a User.
///
/// The password never reaches the aggregate: it is hashed and stored in the credentials
/// table by the registration service before `RegisterUser` is handled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum UserCommand {
    /// Create the user.
    RegisterUser {
        /// The new user's id (chosen by the caller).
        user_id: Uuid,
        /// The address as entered; validated and normalised by the aggregate.
        email: String,
        /// The display name.
        full_name: String,
    },
    /// Change profile fields; `None` leaves a field as it is, `Some(None)` clears it.
    UpdateProfile {
        /// New display name.
        full_name: Option<String>,
        /// New default model, or `Some(None)` to clear it.
        default_model: Option<Option<String>>,
        /// New default system prompt, or `Some(None)` to clear it.
        system_prompt: Option<Option<String>>,
    },
    /// Deactivate the account; a deactivated user can no longer log in or issue commands.
    /// Records a new API key (made and hashed by the application layer; the secret never
    /// reaches the aggregate).
    CreateApiKey {
        /// The key's id.
        key_id: Uuid,
        /// The owner's label.
        name: String,
        /// The key's last four characters.
        hint: String,
    },
    /// Revokes one of the user's API keys.
    RevokeApiKey {
        /// The key.
        key_id: Uuid,
    },
    DeactivateUser {
        /// Why, for the audit trail.
        reason: Option<String>,
    },
}
