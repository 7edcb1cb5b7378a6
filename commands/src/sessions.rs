//! Login sessions and their tokens: the tables `auth_sessions`, `refresh_tokens` and
//! `revoked_access_tokens`, and the use cases over them (sign in, refresh, log out, and the
//! check every authenticated request makes).
//!
//! A login opens a session: the family of refresh tokens it starts. Access tokens (JWTs,
//! issued by the API) name their session in the `sid` claim. A refresh token is a random
//! secret of which only the SHA-256 is stored; refreshing uses it up and issues the next one
//! of the same session. Presenting a used refresh token again means two parties hold the
//! family (one of them stole it): the whole session is revoked, so every access and refresh
//! token of it is refused from then on.
//!
//! All of this is in PostgreSQL. Whatever caches refusals in front of it (the API's Redis
//! markers) is only a cache: with it gone, [`Commands::access_allowed`] still refuses.

use colloquy_domain::user::UserStatus;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::secrets;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use crate::access_checks::AccessChecks;
use crate::errors::{Failure, UseCaseError};
use crate::users::LoginRejection;
use crate::Commands;

/// Every refresh token starts with this, so it cannot be mistaken for an access token
/// (a JWT) by a person or a secret scanner.
pub const REFRESH_TOKEN_PREFIX: &str = "crt_";

/// Expired rows removed per table whenever a session is opened; keeps the tables small
/// without a job of their own.
const PURGE_BATCH: i64 = 100;

/// A session a sign-in or a refresh granted: whose, which, and its new refresh token.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionGrant {
    /// The user.
    pub user_id: Uuid,
    /// The session (the `sid` of its access tokens).
    pub session_id: Uuid,
    /// The refresh token: shown to the client once, stored only as a hash.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

impl std::fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGrant")
            .field("user_id", &self.user_id)
            .field("session_id", &self.session_id)
            .field("refresh_token", &"<redacted>")
            .field("refresh_expires_in", &self.refresh_expires_in)
            .finish()
    }
}

/// Why a refresh was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RefreshRejection {
    /// Unknown, expired or revoked token, or a deactivated account (deliberately one answer).
    #[error("the refresh token is invalid, expired or revoked")]
    Invalid,
    /// The token was used before: its whole session is now revoked.
    #[error("the refresh token was already used; its session is revoked")]
    Reused,
}

/// What presenting a refresh token did.
enum Rotation {
    Rotated(SessionGrant),
    Invalid,
    Reused,
}

/// What the session check asks about an access token (already verified: signature, expiry,
/// claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionToken {
    /// Its user (`sub`).
    pub user_id: Uuid,
    /// Its session (`sid`).
    pub session_id: Uuid,
    /// Its id (`jti`).
    pub jti: Uuid,
}

/// The session tables.
#[derive(Clone)]
pub struct Sessions {
    pool: PgPool,
    refresh_ttl_secs: u64,
}

/// A new refresh token and the hash stored for it.
fn new_refresh_token() -> (String, Vec<u8>) {
    let token = secrets::new_secret(REFRESH_TOKEN_PREFIX);
    let hash = hash_token(&token);
    (token, hash)
}

fn hash_token(token: &str) -> Vec<u8> {
    secrets::sha256(token).to_vec()
}

impl Sessions {
    /// The tables on `pool`; refresh tokens live `refresh_ttl_secs`.
    pub fn new(pool: PgPool, refresh_ttl_secs: u64) -> Self {
        Self { pool, refresh_ttl_secs: refresh_ttl_secs.max(1) }
    }

    /// Records a refresh token of `session_id` (its hash only), valid for the refresh TTL.
    async fn insert_refresh_token(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        hash: &[u8],
        session_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3))",
        )
        .bind(hash)
        .bind(session_id)
        .bind(self.ttl())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    fn ttl(&self) -> f64 {
        self.refresh_ttl_secs as f64
    }

    /// Opens a session for `user_id` with its first refresh token.
    pub async fn open(&self, user_id: Uuid) -> Result<SessionGrant, sqlx::Error> {
        let session_id = Uuid::new_v4();
        let (refresh_token, hash) = new_refresh_token();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO auth_sessions (session_id, user_id, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3))",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(self.ttl())
        .execute(&mut *tx)
        .await?;
        self.insert_refresh_token(&mut tx, &hash, session_id).await?;
        tx.commit().await?;
        if let Err(e) = self.purge_expired(PURGE_BATCH).await {
            tracing::warn!(error = ?e, "Could not purge expired sessions.");
        }
        Ok(SessionGrant { user_id, session_id, refresh_token, refresh_expires_in: self.refresh_ttl_secs })
    }

    /// Uses up `token` and issues the next one of its session; a used token revokes the
    /// session instead. Concurrent presentations of one token are serialised by the row
    /// lock: exactly one rotates, the others count as reuse.
    async fn rotate(&self, token: &str) -> Result<Rotation, sqlx::Error> {
        if !token.starts_with(REFRESH_TOKEN_PREFIX) {
            return Ok(Rotation::Invalid);
        }
        let hash = hash_token(token);
        let mut tx = self.pool.begin().await?;
        let row: Option<(Uuid, Uuid, bool, bool, bool, bool)> = sqlx::query_as(
            "SELECT r.session_id, s.user_id, r.used_at IS NOT NULL, r.expires_at <= now(),
                    s.revoked_at IS NOT NULL, c.user_id IS NULL OR c.deactivated_at IS NOT NULL
               FROM refresh_tokens r
               JOIN auth_sessions s ON s.session_id = r.session_id
               LEFT JOIN user_credentials c ON c.user_id = s.user_id
              WHERE r.token_hash = $1
                FOR UPDATE OF r, s",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session_id, user_id, used, expired, revoked, deactivated)) = row else {
            return Ok(Rotation::Invalid);
        };
        if used {
            sqlx::query(
                "UPDATE auth_sessions
                    SET revoked_at = coalesce(revoked_at, now()),
                        revoked_reason = coalesce(revoked_reason, 'refresh_token_reused')
                  WHERE session_id = $1",
            )
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::warn!(%user_id, %session_id, "A used refresh token was presented again; session revoked.");
            return Ok(Rotation::Reused);
        }
        if expired || revoked || deactivated {
            return Ok(Rotation::Invalid);
        }
        let (refresh_token, next) = new_refresh_token();
        sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        self.insert_refresh_token(&mut tx, &next, session_id).await?;
        sqlx::query("UPDATE auth_sessions SET expires_at = now() + make_interval(secs => $2) WHERE session_id = $1")
            .bind(session_id)
            .bind(self.ttl())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Rotation::Rotated(SessionGrant {
            user_id,
            session_id,
            refresh_token,
            refresh_expires_in: self.refresh_ttl_secs,
        }))
    }

    /// Revokes the session `session_id` of `user_id` and, by its id, the access token `jti`
    /// (expiring at `access_expires_at`, seconds since the epoch), in one statement.
    pub async fn revoke(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        jti: Uuid,
        access_expires_at: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH session AS (
                 UPDATE auth_sessions
                    SET revoked_at = coalesce(revoked_at, now()), revoked_reason = coalesce(revoked_reason, 'logout')
                  WHERE session_id = $1 AND user_id = $2)
             INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($3, to_timestamp($4)) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(jti)
        .bind(access_expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether an access token of `user_id`, session `session_id`, id `jti` may be used:
    /// the account is registered and not deactivated, the session exists, is the user's and
    /// is not revoked, and the token itself is not revoked. One query of primary-key lookups.
    pub async fn access_allowed(&self, user_id: Uuid, session_id: Uuid, jti: Uuid) -> Result<bool, sqlx::Error> {
        let allowed = self.access_allowed_many(&[SessionToken { user_id, session_id, jti }]).await?;
        Ok(allowed.first().copied().unwrap_or(false))
    }

    /// [`access_allowed`](Self::access_allowed) for several tokens in one statement (the
    /// checks of concurrent requests, gathered by [`AccessChecks`]):
    /// one answer per token, in their order.
    pub async fn access_allowed_many(&self, tokens: &[SessionToken]) -> Result<Vec<bool>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (
                 SELECT 1
                   FROM auth_sessions s
                   JOIN user_credentials c ON c.user_id = s.user_id
                  WHERE s.session_id = t.session_id AND s.user_id = t.user_id
                    AND s.revoked_at IS NULL AND c.deactivated_at IS NULL
                    AND NOT EXISTS (SELECT 1 FROM revoked_access_tokens r WHERE r.jti = t.jti))
               FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) WITH ORDINALITY AS t(session_id, user_id, jti, n)
              ORDER BY t.n",
        )
        .bind(tokens.iter().map(|t| t.session_id).collect::<Vec<_>>())
        .bind(tokens.iter().map(|t| t.user_id).collect::<Vec<_>>())
        .bind(tokens.iter().map(|t| t.jti).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await
    }

    /// Removes up to `batch` expired rows of each table (a session expires with its newest
    /// refresh token, which outlives every access token it issued). Answers the rows removed.
    pub async fn purge_expired(&self, batch: i64) -> Result<u64, sqlx::Error> {
        let mut removed = 0;
        for statement in [
            "DELETE FROM revoked_access_tokens WHERE jti IN
                 (SELECT jti FROM revoked_access_tokens WHERE expires_at < now() LIMIT $1)",
            "DELETE FROM refresh_tokens WHERE token_hash IN
                 (SELECT token_hash FROM refresh_tokens WHERE expires_at < now() LIMIT $1)",
            "DELETE FROM auth_sessions WHERE session_id IN
                 (SELECT session_id FROM auth_sessions WHERE expires_at < now() LIMIT $1)",
        ] {
            removed += sqlx::query(statement).bind(batch).execute(&self.pool).await?.rows_affected();
        }
        Ok(removed)
    }
}

impl Commands {
    /// Checks an address and password ([`Commands::login`]) and opens a session.
    #[instrument(skip_all)]
    pub async fn sign_in(&self, email: &str, password: String) -> Result<SessionGrant, UseCaseError<LoginRejection>> {
        let user_id = self.login(email, password).await?;
        let grant = self.sessions.open(user_id).await?;
        tracing::info!(%user_id, session_id = %grant.session_id, "Signed in.");
        Ok(grant)
    }

    /// Exchanges a refresh token for the next one of its session (the API issues a new
    /// access token with it). A token used before revokes its session.
    #[instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str) -> Result<SessionGrant, UseCaseError<RefreshRejection>> {
        let grant = match self.sessions.rotate(refresh_token).await? {
            Rotation::Rotated(grant) => grant,
            Rotation::Invalid => return Err(UseCaseError::rejected(RefreshRejection::Invalid)),
            Rotation::Reused => return Err(UseCaseError::rejected(RefreshRejection::Reused)),
        };
        // The account's deactivation is recorded next to its credentials only after the
        // event committed (see `deactivate`); a crash in between would leave it unrecorded.
        // The event store is the truth: check it here, and record what is missing, so
        // such an account's tokens last at most one access-token lifetime.
        let (user, _) = self
            .users
            .current_state(&grant.user_id.to_string())
            .await
            .map_err(|e| UseCaseError::from_command(e.map_rejection(|_| RefreshRejection::Invalid)))?;
        if !matches!(user.status, UserStatus::Active) {
            self.credentials.mark_deactivated(grant.user_id).await?;
            return Err(UseCaseError::rejected(RefreshRejection::Invalid));
        }
        Ok(grant)
    }

    /// Logs out: revokes the session `session_id` (every token of it) and the access token
    /// `jti` (expiring at `access_expires_at`, seconds since the epoch), durably.
    #[instrument(skip_all, fields(%user_id, %session_id))]
    pub async fn logout(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        jti: Uuid,
        access_expires_at: i64,
    ) -> Result<(), Failure> {
        self.sessions.revoke(user_id, session_id, jti, access_expires_at).await?;
        tracing::info!("Signed out.");
        Ok(())
    }

    /// Whether an access token (already verified: signature, expiry, claims) may still be
    /// used. See [`Sessions::access_allowed`].
    pub async fn access_allowed(&self, user_id: Uuid, session_id: Uuid, jti: Uuid) -> Result<bool, Failure> {
        Ok(self.sessions.access_allowed(user_id, session_id, jti).await?)
    }

    /// A checker that answers the session checks of concurrent requests with one statement
    /// (see [`AccessChecks`]), started on the current
    /// runtime: the one that owns this pool. At most `lanes` statements run at once.
    pub fn access_checks(&self, lanes: usize, metrics: Metrics) -> AccessChecks {
        AccessChecks::spawn(self.sessions.clone(), lanes, metrics)
    }
}
