//! Registration and login. Passwords are hashed before any command and kept in
//! `user_credentials`, never in an event. The table's unique e-mail column decides races:
//! of two simultaneous registrations with one address, exactly one inserts its row.

use colloquy_domain::user::{User, UserCommand, UserError, UserStatus};
use colloquy_domain::values::EmailAddress;
use colloquy_infra::passwords::{PasswordError, PasswordHasher, PASSWORD_MAX, PASSWORD_MIN};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use sqlx::PgPool;
use uuid::Uuid;

use crate::command_service::{CommandError, CommandMeta, CommandService, Committed};

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The profile data was rejected by the User aggregate.
    #[error(transparent)]
    Invalid(#[from] UserError),
    /// The password is too short or too long.
    #[error("the password must be between {PASSWORD_MIN} and {PASSWORD_MAX} characters")]
    WeakPassword,
    /// Someone registered this address already.
    #[error("the e-mail address is already registered")]
    EmailTaken,
    /// Infrastructure failed.
    #[error("registration failed: {0}")]
    Internal(String),
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown address, wrong password or deactivated account (deliberately one answer).
    #[error("invalid e-mail or password")]
    InvalidCredentials,
    /// Infrastructure failed.
    #[error("login failed: {0}")]
    Internal(String),
}

impl From<PasswordError> for RegistrationError {
    fn from(e: PasswordError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<sqlx::Error> for RegistrationError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

/// How long a credentials row may exist without its `UserRegistered` event before another
/// registration may take the address over (the first registrant crashed in between).
const ORPHAN_AFTER_SECS: i64 = 300;

/// Registers users and checks their passwords.
#[derive(Clone)]
pub struct Credentials {
    pool: PgPool,
    hasher: PasswordHasher,
}

impl Credentials {
    /// Uses `pool` for the credentials table and `hasher` for passwords.
    pub fn new(pool: PgPool, hasher: PasswordHasher) -> Self {
        Self { pool, hasher }
    }

    /// Registers a user: validates, hashes the password, claims the address, then records
    /// `UserRegistered`. Returns the new id and version.
    pub async fn register(
        &self,
        users: &CommandService<User>,
        email: &str,
        full_name: &str,
        password: String,
        meta: &CommandMeta,
    ) -> Result<(Uuid, Committed), RegistrationError> {
        let user_id = Uuid::new_v4();
        let command = UserCommand::RegisterUser { user_id, email: email.to_string(), full_name: full_name.to_string() };
        // Decide on an empty aggregate first: a rejection must not claim the address.
        User::default().handle(command.clone(), &(), &EventSink::default()).await?;
        let chars = password.chars().count();
        if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&chars) {
            return Err(RegistrationError::WeakPassword);
        }
        let email = EmailAddress::parse(email).ok_or(RegistrationError::Invalid(UserError::InvalidEmail))?;
        let hash = self.hasher.hash(password).await?;
        let claimed: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO user_credentials (user_id, email, password_hash) VALUES ($1, $2, $3)
             ON CONFLICT (email) DO UPDATE
                SET user_id = EXCLUDED.user_id, password_hash = EXCLUDED.password_hash, created_at = now()
              WHERE user_credentials.created_at < now() - make_interval(secs => $4)
                AND NOT EXISTS (SELECT 1 FROM events e
                                 WHERE e.aggregate_type = 'User' AND e.aggregate_id = user_credentials.user_id::text)
             RETURNING user_id",
        )
        .bind(user_id)
        .bind(email.as_str())
        .bind(&hash)
        .bind(ORPHAN_AFTER_SECS as f64)
        .fetch_optional(&self.pool)
        .await?;
        if claimed != Some(user_id) {
            return Err(RegistrationError::EmailTaken);
        }
        match users.execute(&user_id.to_string(), command, meta).await {
            Ok(committed) => Ok((user_id, committed)),
            Err(e) => {
                // Release the address so the person can try again.
                let released = sqlx::query("DELETE FROM user_credentials WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&self.pool)
                    .await;
                if let Err(e) = released {
                    // The address frees itself: an orphaned claim is taken over after ORPHAN_AFTER_SECS.
                    tracing::warn!(%user_id, error = %e, "Could not release the e-mail claim.");
                }
                Err(match e {
                    CommandError::Rejected(e) => RegistrationError::Invalid(e),
                    other => RegistrationError::Internal(other.to_string()),
                })
            }
        }
    }

    /// Checks an address and password; answers the user id of an active account.
    pub async fn login(&self, users: &CommandService<User>, email: &str, password: String) -> Result<Uuid, LoginError> {
        let internal = |e: &dyn std::fmt::Display| LoginError::Internal(e.to_string());
        let Some(email) = EmailAddress::parse(email) else {
            self.hasher.verify_dummy(password).await;
            return Err(LoginError::InvalidCredentials);
        };
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT user_id, password_hash FROM user_credentials WHERE email = $1")
                .bind(email.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| internal(&e))?;
        let Some((user_id, hash)) = row else {
            self.hasher.verify_dummy(password).await;
            return Err(LoginError::InvalidCredentials);
        };
        if !self.hasher.verify(password, hash).await.map_err(|e| internal(&e))? {
            return Err(LoginError::InvalidCredentials);
        }
        let (user, _) = users.load(&user_id.to_string()).await.map_err(|e| internal(&e))?;
        match user.status {
            UserStatus::Active => Ok(user_id),
            _ => Err(LoginError::InvalidCredentials),
        }
    }
}
