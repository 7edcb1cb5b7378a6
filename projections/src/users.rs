//! The users read model (`rm_users`), and the Redis cache of each profile.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use colloquy_domain::user::UserEvent;
use colloquy_domain::User;
use colloquy_infra::event_store::StoredEvent;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projection::{aggregate_uuid, domain_event, ApplyError, Projection};

/// Projects User events into `rm_users`.
pub struct UsersProjection;

/// The projection's name.
pub const NAME: &str = "users";

/// A user's profile as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UserProfile {
    /// The id.
    pub user_id: Uuid,
    /// The e-mail address.
    pub email: String,
    /// The display name.
    pub full_name: String,
    /// `member` or `admin`.
    pub role: String,
    /// False once deactivated.
    pub active: bool,
    /// Default model for new conversations.
    pub default_model: Option<String>,
    /// Default system prompt for new conversations.
    pub system_prompt: Option<String>,
    /// The User aggregate's version this row reflects.
    pub version: i64,
    /// Registration time.
    pub registered_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

#[async_trait]
impl Projection for UsersProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn table(&self) -> &'static str {
        "rm_users"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[User::TYPE]
    }

    async fn apply(&self, conn: &mut PgConnection, table: &str, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
        let id = aggregate_uuid(e)?;
        match domain_event::<UserEvent>(e)? {
            UserEvent::UserRegistered(r) => {
                let role =
                    serde_json::to_value(r.role).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
                sqlx::query(&format!(
                    "INSERT INTO {table} (user_id, email, full_name, role, active, version, registered_at, updated_at)
                     VALUES ($1, $2, $3, $4, true, $5, $6, $6)"
                ))
                .bind(id)
                .bind(r.email.as_str())
                .bind(&r.full_name)
                .bind(role)
                .bind(e.sequence)
                .bind(e.recorded_at)
                .execute(&mut *conn)
                .await?;
            }
            UserEvent::ProfileUpdated(p) => {
                sqlx::query(&format!(
                    "UPDATE {table} SET
                        full_name = COALESCE($2, full_name),
                        default_model = CASE WHEN $3 THEN $4 ELSE default_model END,
                        system_prompt = CASE WHEN $5 THEN $6 ELSE system_prompt END,
                        version = $7, updated_at = $8
                      WHERE user_id = $1 AND version < $7"
                ))
                .bind(id)
                .bind(p.full_name)
                .bind(p.default_model.is_some())
                .bind(p.default_model.flatten())
                .bind(p.system_prompt.is_some())
                .bind(p.system_prompt.flatten())
                .bind(e.sequence)
                .bind(e.recorded_at)
                .execute(&mut *conn)
                .await?;
            }
            UserEvent::UserDeactivated(_) => {
                sqlx::query(&format!(
                    "UPDATE {table} SET active = false, version = $2, updated_at = $3 WHERE user_id = $1 AND version < $2"
                ))
                .bind(id)
                .bind(e.sequence)
                .bind(e.recorded_at)
                .execute(&mut *conn)
                .await?;
            }
            // Keys are not part of the profile (their list is the credential table's); the
            // version still moves, so that `min_version` waits end.
            UserEvent::ApiKeyCreated(_) | UserEvent::ApiKeyRevoked(_) => {
                sqlx::query(&format!("UPDATE {table} SET version = $2 WHERE user_id = $1 AND version < $2"))
                    .bind(id)
                    .bind(e.sequence)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(Some(id))
    }
}

/// The profile of `user_id`, if projected.
pub async fn find(pool: &PgPool, user_id: Uuid) -> Result<Option<UserProfile>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM rm_users WHERE user_id = $1").bind(user_id).fetch_optional(pool).await
}
