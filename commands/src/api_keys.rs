//! API keys: long-lived credentials for the OpenAI-compatible routes (`/v1/...`), so that
//! tools built for OpenAI's API work with colloquy by configuration alone.
//!
//! A key is a random secret made here, shown once and stored only as its SHA-256 in the
//! `api_keys` table, the durable record of which key may still be used (like the session
//! tables for access tokens). The User aggregate records `ApiKeyCreated` and
//! `ApiKeyRevoked` (no secret, no hash), which bounds the live keys per user and is the
//! audit trail.
//!
//! The event comes first, the table row right after (the two cannot share a transaction:
//! the event goes through the event store's own). A crash between them leaves an event whose
//! key was never shown to anyone and never works; a revocation whose table write was lost is
//! finished by retrying it (the aggregate then answers "not found", and the row is revoked
//! all the same).

use colloquy_domain::user::{UserCommand, UserError, API_KEY_NAME_MAX};
use colloquy_domain::values;
use colloquy_infra::secrets;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::command_service::CommandError;
use crate::errors::UseCaseError;
use crate::users::UserAccepted;
use crate::Commands;

/// Every API key starts with this, so that people and secret scanners recognise one.
pub const API_KEY_PREFIX: &str = "ck_";

/// How often a key's `last_used_at` is written at most (a key in a busy loop must not turn
/// every request into a write).
const LAST_USED_EVERY_SECS: f64 = 60.0;

/// A new API key: the only answer that ever holds the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewApiKey {
    /// The key's id (to list and revoke it).
    pub key_id: Uuid,
    /// Its name.
    pub name: String,
    /// The secret: `Authorization: Bearer <key>` on `/v1/...`. Shown this once.
    pub key: String,
    /// Its last four characters.
    pub hint: String,
    /// When it was made.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The User aggregate's version after the key was recorded.
    pub version: i64,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("key_id", &self.key_id)
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// A live API key as its owner sees it in a list (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyView {
    /// The key's id.
    pub key_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its last four characters.
    pub hint: String,
    /// When it was made.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was last used (to the minute); `null` if never.
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Who an API key speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyHolder {
    /// The user.
    pub user_id: Uuid,
    /// The key.
    pub key_id: Uuid,
}

/// The live key whose secret is `key`, of an active account.
async fn holder_of(pool: &PgPool, key: &str) -> Result<Option<ApiKeyHolder>, sqlx::Error> {
    let row: Option<(Uuid, Uuid, bool)> = sqlx::query_as(
        "SELECT k.user_id, k.key_id,
                k.last_used_at IS NULL OR k.last_used_at < now() - make_interval(secs => $2)
           FROM api_keys k
           JOIN user_credentials c ON c.user_id = k.user_id
          WHERE k.key_sha256 = $1 AND k.revoked_at IS NULL AND c.deactivated_at IS NULL",
    )
    .bind(secrets::sha256(key).as_slice())
    .bind(LAST_USED_EVERY_SECS)
    .fetch_optional(pool)
    .await?;
    let Some((user_id, key_id, stale)) = row else { return Ok(None) };
    if stale {
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE key_id = $1").bind(key_id).execute(pool).await?;
    }
    Ok(Some(ApiKeyHolder { user_id, key_id }))
}

impl Commands {
    /// Makes an API key for the caller. Not idempotent by key on purpose (a recorded answer
    /// would keep the secret): a retried request makes a second key; revoke the unused one.
    #[instrument(skip_all, fields(user_id = %caller.user))]
    pub async fn create_api_key(&self, caller: &Caller, name: String) -> Result<NewApiKey, UseCaseError<UserError>> {
        let key = secrets::new_secret(API_KEY_PREFIX);
        let hint = key[key.len() - 4..].to_string();
        let key_id = Uuid::new_v4();
        // The name as the aggregate keeps it (it refuses what does not pass here).
        let stored_name = values::name_text(&name, API_KEY_NAME_MAX).unwrap_or_default();
        let command = UserCommand::CreateApiKey { key_id, name, hint: hint.clone() };
        let committed = self.users.execute(&caller.user.to_string(), command, &caller.meta).await?;
        let (name, created_at) = (stored_name, chrono::Utc::now());
        sqlx::query(
            "INSERT INTO api_keys (key_id, user_id, key_sha256, name, hint, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(key_id)
        .bind(caller.user)
        .bind(secrets::sha256(&key).as_slice())
        .bind(&name)
        .bind(&hint)
        .bind(created_at)
        .execute(&self.pool)
        .await?;
        tracing::info!(user_id = %caller.user, %key_id, "API key created.");
        Ok(NewApiKey { key_id, name, key, hint, created_at, version: committed.version })
    }

    /// The caller's live API keys, newest first.
    pub async fn list_api_keys(&self, user: Uuid) -> Result<Vec<ApiKeyView>, UseCaseError<UserError>> {
        Ok(sqlx::query_as(
            "SELECT key_id, name, hint, created_at, last_used_at FROM api_keys
              WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, key_id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes one of the caller's API keys: refused from the next request on.
    #[instrument(skip_all, fields(user_id = %caller.user, %key_id))]
    pub async fn revoke_api_key(&self, caller: &Caller, key_id: Uuid) -> Result<UserAccepted, UseCaseError<UserError>> {
        let command = UserCommand::RevokeApiKey { key_id };
        let revoke_row = || {
            sqlx::query(
                "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .bind(key_id)
            .bind(caller.user)
            .execute(&self.pool)
        };
        match self.users.execute(&caller.user.to_string(), command, &caller.meta).await {
            Ok(committed) => {
                revoke_row().await?;
                tracing::info!(user_id = %caller.user, %key_id, "API key revoked.");
                Ok(UserAccepted { version: committed.version })
            }
            Err(CommandError::Rejected(UserError::ApiKeyNotFound)) => {
                // The event of an earlier attempt committed and its row write was lost.
                if revoke_row().await?.rows_affected() == 1 {
                    let (_, version) = self.users.current_state(&caller.user.to_string()).await?;
                    return Ok(UserAccepted { version });
                }
                Err(UseCaseError::rejected(UserError::ApiKeyNotFound))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Who the API key `key` speaks for: a live key of an active account, else `None`.
    pub async fn api_key_holder(&self, key: &str) -> Result<Option<ApiKeyHolder>, sqlx::Error> {
        if !key.starts_with(API_KEY_PREFIX) {
            return Ok(None);
        }
        holder_of(&self.pool, key).await
    }
}
