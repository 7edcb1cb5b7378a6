//! The credentials table (`user_credentials`): password hashes kept outside the event log,
//! and the unique e-mail column that decides registration races — of two simultaneous
//! registrations with one address, exactly one inserts its row.

use colloquy_domain::values::EmailAddress;
use colloquy_domain::User;
use colloquy_infra::event_store;
use cqrs_es::Aggregate;
use sqlx::PgPool;
use uuid::Uuid;

/// How long a credentials row may exist without its `UserRegistered` event before another
/// registration may take the address over (the first registrant crashed in between).
pub const ORPHAN_AFTER_SECS: f64 = 300.0;

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The database failed.
    #[error("credentials query failed")]
    Database(#[from] sqlx::Error),
    /// Checking the event store for an orphaned claim failed.
    #[error("orphan check failed")]
    EventStore(#[from] event_store::EventStoreError),
}

/// The stored credentials of an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    /// Whose.
    pub user_id: Uuid,
    /// The PHC string.
    pub password_hash: String,
}

/// The credentials table.
#[derive(Clone)]
pub struct Credentials {
    pool: PgPool,
}

impl Credentials {
    /// The table on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Claims `email` for `user_id`; false when someone else holds it. A claim older than
    /// [`ORPHAN_AFTER_SECS`] whose user never got its `UserRegistered` event is taken over
    /// (compare-and-set on the row as read, so two takeovers cannot both win).
    pub async fn claim(&self, email: &EmailAddress, user_id: Uuid, hash: &str) -> Result<bool, CredentialsError> {
        // Twice at most: a holder that released the address between our insert and our read
        // makes the second insert succeed.
        for _ in 0..2 {
            let inserted = sqlx::query(
                "INSERT INTO user_credentials (user_id, email, password_hash) VALUES ($1, $2, $3)
                 ON CONFLICT (email) DO NOTHING",
            )
            .bind(user_id)
            .bind(email.as_str())
            .bind(hash)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(true);
            }
            let holder: Option<(Uuid, bool)> = sqlx::query_as(
                "SELECT user_id, created_at < now() - make_interval(secs => $2) FROM user_credentials WHERE email = $1",
            )
            .bind(email.as_str())
            .bind(ORPHAN_AFTER_SECS)
            .fetch_optional(&self.pool)
            .await?;
            let Some((holder, old_enough)) = holder else { continue };
            if !old_enough || event_store::aggregate_version(&self.pool, User::TYPE, &holder.to_string()).await? > 0 {
                return Ok(false);
            }
            let taken = sqlx::query(
                "UPDATE user_credentials SET user_id = $3, password_hash = $4, created_at = now()
                  WHERE email = $1 AND user_id = $2",
            )
            .bind(email.as_str())
            .bind(holder)
            .bind(user_id)
            .bind(hash)
            .execute(&self.pool)
            .await?;
            return Ok(taken.rows_affected() == 1);
        }
        Ok(false)
    }

    /// Gives `user_id`'s claim back (its registration failed after claiming).
    pub async fn release(&self, user_id: Uuid) -> Result<(), CredentialsError> {
        sqlx::query("DELETE FROM user_credentials WHERE user_id = $1").bind(user_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Records that `user_id`'s account is deactivated: from now on no access token of it
    /// passes [`crate::sessions::Sessions::access_allowed`] and no refresh succeeds.
    /// Idempotent (the first time is kept).
    pub async fn mark_deactivated(&self, user_id: Uuid) -> Result<(), CredentialsError> {
        sqlx::query("UPDATE user_credentials SET deactivated_at = coalesce(deactivated_at, now()) WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The credentials stored for `email`.
    pub async fn find(&self, email: &EmailAddress) -> Result<Option<StoredCredentials>, CredentialsError> {
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT user_id, password_hash FROM user_credentials WHERE email = $1")
                .bind(email.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(user_id, password_hash)| StoredCredentials { user_id, password_hash }))
    }
}
