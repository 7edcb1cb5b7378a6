//! User use cases: register, log in, update the profile, deactivate.

use colloquy_domain::user::{UserCommand, UserError, UserStatus};
use colloquy_domain::values::EmailAddress;
use colloquy_domain::User;
use colloquy_infra::passwords::{PASSWORD_MAX, PASSWORD_MIN};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::command_service::{Actor, CommandError, CommandMeta};
use crate::errors::UseCaseError;
use crate::idempotency::Answer;
use crate::Commands;

/// A registration.
#[derive(Debug, Clone)]
pub struct Register {
    /// The address as entered.
    pub email: String,
    /// The display name.
    pub full_name: String,
    /// The password (never stored, never logged).
    pub password: String,
}

/// A registered user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registered {
    /// The new user's id.
    pub user_id: Uuid,
    /// The User aggregate's version.
    pub version: i64,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RegistrationRejection {
    /// The profile data was rejected by the User aggregate.
    #[error(transparent)]
    Invalid(#[from] UserError),
    /// The password is too short or too long.
    #[error("the password must be between {PASSWORD_MIN} and {PASSWORD_MAX} characters")]
    WeakPassword,
    /// Someone registered this address already.
    #[error("the e-mail address is already registered")]
    EmailTaken,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LoginRejection {
    /// Unknown address, wrong password or deactivated account (deliberately one answer).
    #[error("invalid e-mail or password")]
    InvalidCredentials,
}

/// A profile update; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdateProfile {
    /// New display name.
    pub full_name: Option<String>,
    /// New default model, or `Some(None)` to clear it.
    pub default_model: Option<Option<String>>,
    /// New default system prompt, or `Some(None)` to clear it.
    pub system_prompt: Option<Option<String>>,
}

/// A command on a user was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserAccepted {
    /// The User aggregate's version after the command; pass it as `min_version` to queries.
    pub version: i64,
}

impl Commands {
    /// Registers a user: validates, hashes the password, claims the address, then records
    /// `UserRegistered`. The password never enters an event.
    #[instrument(skip_all)]
    pub async fn register(
        &self,
        correlation_id: String,
        input: Register,
    ) -> Result<Registered, UseCaseError<RegistrationRejection>> {
        let user_id = Uuid::new_v4();
        let command = UserCommand::RegisterUser { user_id, email: input.email.clone(), full_name: input.full_name };
        // Decide on an empty aggregate first: a rejection must not claim the address.
        if let Err(refusal) = User::default().handle(command.clone(), &(), &EventSink::default()).await {
            return Err(UseCaseError::from_command(crate::command_service::refused(refusal)));
        }
        let chars = input.password.chars().count();
        if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&chars) {
            return Err(UseCaseError::rejected(RegistrationRejection::WeakPassword));
        }
        let email = EmailAddress::parse(&input.email).ok_or(UseCaseError::rejected(UserError::InvalidEmail))?;
        let hash = self.hasher.hash(input.password).await?;
        if !self.credentials.claim(&email, user_id, &hash).await? {
            return Err(UseCaseError::rejected(RegistrationRejection::EmailTaken));
        }
        let meta = CommandMeta { actor: Actor::Anonymous, correlation_id, causation_id: None };
        match self.users.execute(&user_id.to_string(), command, &meta).await {
            Ok(committed) => {
                tracing::info!(%user_id, "User registered.");
                Ok(Registered { user_id, version: committed.version })
            }
            Err(e) => {
                // Release the address so the person can try again.
                if let Err(release) = self.credentials.release(user_id).await {
                    // The address frees itself: an orphaned claim is taken over later.
                    tracing::warn!(%user_id, error = ?release, "Could not release the e-mail claim.");
                }
                Err(UseCaseError::from_command(e))
            }
        }
    }

    /// Checks an address and password; answers the user id of an active account.
    #[instrument(skip_all)]
    pub async fn login(&self, email: &str, password: String) -> Result<Uuid, UseCaseError<LoginRejection>> {
        let refused = || UseCaseError::rejected(LoginRejection::InvalidCredentials);
        let Some(email) = EmailAddress::parse(email) else {
            self.hasher.verify_dummy(password).await?;
            return Err(refused());
        };
        let Some(stored) = self.credentials.find(&email).await? else {
            self.hasher.verify_dummy(password).await?;
            return Err(refused());
        };
        if !self.hasher.verify(password, stored.password_hash).await? {
            return Err(refused());
        }
        let (user, _) = self
            .users
            .current_state(&stored.user_id.to_string())
            .await
            .map_err(|e| UseCaseError::from_command(e.map_rejection(|_| LoginRejection::InvalidCredentials)))?;
        match user.status {
            UserStatus::Active => Ok(stored.user_id),
            _ => Err(refused()),
        }
    }

    /// Changes the caller's profile.
    #[instrument(skip_all, fields(user_id = %caller.user))]
    pub async fn update_profile(
        &self,
        caller: &Caller,
        input: UpdateProfile,
    ) -> Result<Answer<UserAccepted>, UseCaseError<UserError>> {
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "update_profile", &input, || async {
                let command = UserCommand::UpdateProfile {
                    full_name: input.full_name.clone(),
                    default_model: input.default_model.clone(),
                    system_prompt: input.system_prompt.clone(),
                };
                let committed = self.users.execute(&caller.user.to_string(), command, &caller.meta).await?;
                Ok(UserAccepted { version: committed.version })
            })
            .await
    }

    /// Deactivates the caller's account: no more logins, and none of its tokens works
    /// any more.
    ///
    /// The `UserDeactivated` event is the truth; the mark next to the credentials (which
    /// every authenticated request and every refresh checks) is recorded right after it
    /// commits. Both cannot be one transaction (the event goes through the event store's own),
    /// so a crash between the two leaves the event without the mark. The account is then
    /// still refused at login (login reads the aggregate), a retried deactivation records the
    /// mark (the aggregate refuses the command as already done, and the mark is written
    /// anyway), and the next refresh finds the aggregate deactivated and records it too: the
    /// account's access tokens outlive such a crash by one access-token lifetime at most.
    #[instrument(skip_all, fields(user_id = %caller.user))]
    pub async fn deactivate(&self, caller: &Caller) -> Result<UserAccepted, UseCaseError<UserError>> {
        let command = UserCommand::DeactivateUser { reason: Some("deactivated by the user".into()) };
        match self.users.execute(&caller.user.to_string(), command, &caller.meta).await {
            Ok(committed) => {
                self.credentials.mark_deactivated(caller.user).await?;
                tracing::info!(user_id = %caller.user, "User deactivated.");
                Ok(UserAccepted { version: committed.version })
            }
            Err(CommandError::Rejected(UserError::Deactivated)) => {
                self.credentials.mark_deactivated(caller.user).await?;
                Err(UseCaseError::rejected(UserError::Deactivated))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The key the per-account login backoff counts failures under: the normalised address
/// (as registration stores it; the raw input, trimmed and lower-cased, when it does not
/// parse), hashed so that no address is written to the rate-limit store. The same for an
/// address whether or not an account has it.
pub fn login_throttle_key(email: &str) -> String {
    use sha2::Digest;
    let normalised = match EmailAddress::parse(email) {
        Some(address) => address.as_str().to_string(),
        None => email.trim().to_lowercase(),
    };
    hex::encode(sha2::Sha256::digest(normalised.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_of_one_address_share_their_login_backoff_key() {
        let key = login_throttle_key("ada@example.com");
        assert_eq!(login_throttle_key("  Ada@Example.COM "), key);
        assert_ne!(login_throttle_key("grace@example.com"), key);
        assert_eq!(key.len(), 64, "a SHA-256, never the address itself");
        assert!(!key.contains("ada"));
        // Input that is no address still gets a key of its own, alike for its variants.
        assert_eq!(login_throttle_key("Not An Address"), login_throttle_key("not an address"));
    }
}
