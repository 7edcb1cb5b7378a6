use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::EmailAddress;

/// What a user may do beyond their own data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An ordinary user.
    #[default]
    Member,
    /// An operator who may use the administrative and audit routes.
    Admin,
}

/// A user registered. Carries no credential: the password hash lives outside the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserRegistered {
    /// The user's id.
    pub user_id: Uuid,
    /// The normalised e-mail address.
    pub email: EmailAddress,
    /// The display name.
    pub full_name: String,
    /// The role granted at registration.
    pub role: Role,
}

/// Profile fields changed. Each field is the new value; absent fields did not change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ProfileUpdated {
    /// New display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    /// New default model (`null` inside `Some` clears it).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::double_option")]
    #[schemars(with = "Option<String>")]
    pub default_model: Option<Option<String>>,
    /// New default system prompt (`null` inside `Some` clears it).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::double_option")]
    #[schemars(with = "Option<String>")]
    pub system_prompt: Option<Option<String>>,
}

/// The account was deactivated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserDeactivated {
    /// Why, if a reason was given.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An API key was made for the user (for the OpenAI-compatible routes). The secret never
/// enters an event: only the credential table holds its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiKeyCreated {
    /// The key's id (to list and revoke it).
    pub key_id: Uuid,
    /// The owner's label for it.
    pub name: String,
    /// The key's last four characters, so its owner can tell keys apart.
    pub hint: String,
}

/// An API key was revoked: requests carrying it are refused from then on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiKeyRevoked {
    /// The key.
    pub key_id: Uuid,
}

crate::domain_events! {
    /// Everything that can happen to a User.
    pub enum UserEvent {
        /// See [`UserRegistered`].
        UserRegistered(UserRegistered) = "1.0",
        /// See [`ProfileUpdated`].
        ProfileUpdated(ProfileUpdated) = "1.0",
        /// See [`UserDeactivated`].
        UserDeactivated(UserDeactivated) = "1.0",
        /// See [`ApiKeyCreated`].
        ApiKeyCreated(ApiKeyCreated) = "1.0",
        /// See [`ApiKeyRevoked`].
        ApiKeyRevoked(ApiKeyRevoked) = "1.0",
    }
}

impl crate::event_catalog::EventExamples for UserEvent {
    fn examples() -> Vec<Self> {
        let email = EmailAddress::parse("ada@example.com").unwrap_or_else(|| unreachable!("a valid literal"));
        vec![
            Self::UserRegistered(UserRegistered {
                user_id: Uuid::from_u128(1),
                email,
                full_name: "Ada Lovelace".into(),
                role: Role::Member,
            }),
            Self::ProfileUpdated(ProfileUpdated {
                full_name: Some("Ada".into()),
                default_model: Some(Some("local/smollm2-135m".into())),
                system_prompt: Some(None),
            }),
            Self::ProfileUpdated(ProfileUpdated::default()),
            Self::UserDeactivated(UserDeactivated { reason: Some("left".into()) }),
            Self::ApiKeyCreated(ApiKeyCreated { key_id: Uuid::from_u128(2), name: "laptop".into(), hint: "x9Qa".into() }),
            Self::ApiKeyRevoked(ApiKeyRevoked { key_id: Uuid::from_u128(2) }),
        ]
    }
}
