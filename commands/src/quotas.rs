//! Per-user quotas: conversations, messages per UTC day, and bytes of stored text.
//!
//! Counters live in `user_quota_usage` (write-side state, like the credentials). A use case
//! reserves what its command will use before running it, atomically and all-or-nothing
//! (`used + n <= limit`, checked and added in one statement per quota, all in one
//! transaction), and gives the reservation back if the command is refused or fails. So
//! concurrent requests can never take a user past a limit, and only accepted commands
//! count. Reservations run inside the Idempotency-Key's first run: a replayed answer
//! consumes nothing.
//!
//! Anything that stores text (files, when they land) adds a [`Charge`] of
//! [`Quota::StoredBytes`].

use colloquy_infra::settings::QuotaSettings;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// A limited resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// Conversations a user has (deleting one frees its place).
    Conversations,
    /// Messages posted in the current UTC day.
    MessagesPerDay,
    /// Bytes of text stored (titles, system prompts, messages).
    StoredBytes,
}

impl Quota {
    /// Its name in `user_quota_usage` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Conversations => "conversations",
            Self::MessagesPerDay => "messages_per_day",
            Self::StoredBytes => "stored_bytes",
        }
    }

    fn daily(self) -> bool {
        self == Self::MessagesPerDay
    }

    fn limit(self, limits: &QuotaSettings) -> i64 {
        let limit = match self {
            Self::Conversations => limits.conversations,
            Self::MessagesPerDay => limits.messages_per_day,
            Self::StoredBytes => limits.stored_bytes,
        };
        i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

/// A request that would take the user past a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{} quota exceeded (limit {limit}{})", quota.name(), if quota.daily() { " per UTC day" } else { "" })]
pub struct QuotaExceeded {
    /// Which quota.
    pub quota: Quota,
    /// Its limit.
    pub limit: u64,
}

/// What a command will use of one quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// The quota.
    pub quota: Quota,
    /// How much of it (conversations, messages or bytes).
    pub amount: i64,
}

impl Charge {
    /// `amount` of `quota`.
    pub fn new(quota: Quota, amount: usize) -> Self {
        Self { quota, amount: i64::try_from(amount).unwrap_or(i64::MAX) }
    }
}

/// Why a reservation was not made.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// A quota would be exceeded.
    #[error(transparent)]
    Exceeded(QuotaExceeded),
    /// The counters could not be read or written.
    #[error("quota counters failed")]
    Database(#[from] sqlx::Error),
}

/// The counters, with their limits.
#[derive(Clone)]
pub struct Quotas {
    pool: PgPool,
    limits: QuotaSettings,
}

/// Reserved amounts, held for one command. [`keep`](Self::keep) them when the command
/// committed, [`release`](Self::release) them when it did not; dropped without either (the
/// request was abandoned mid-way), they are given back in the background.
#[must_use = "keep or release a reservation"]
pub struct Reservation {
    pool: PgPool,
    user: Uuid,
    /// (quota, period, amount) as reserved.
    held: Vec<(Quota, String, i64)>,
}

/// Reserves one quota's `amount`; the period it was counted in, or `None` when it would
/// exceed `limit`. The `WHERE` of the upsert is evaluated on the locked, current row, so
/// concurrent reservations queue on it and none can overshoot.
const RESERVE: &str = "
    INSERT INTO user_quota_usage (user_id, quota, period, used)
    SELECT $1, $2, CASE WHEN $5 THEN to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') ELSE '' END, $3
     WHERE $3 <= $4
    ON CONFLICT (user_id, quota, period) DO UPDATE SET used = user_quota_usage.used + EXCLUDED.used
     WHERE user_quota_usage.used + EXCLUDED.used <= $4
    RETURNING period";

const GIVE_BACK: &str = "
    UPDATE user_quota_usage SET used = greatest(used - $4, 0)
     WHERE user_id = $1 AND quota = $2 AND period = $3";

impl Quotas {
    /// Counters on `pool`, checked against `limits`.
    pub fn new(pool: PgPool, limits: QuotaSettings) -> Self {
        Self { pool, limits }
    }

    /// The pool the counters are on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The configured limits.
    pub fn limits(&self) -> QuotaSettings {
        self.limits
    }

    /// Reserves every charge for `user`, or none: the first quota that would be exceeded
    /// is named in the error.
    pub async fn reserve(&self, user: Uuid, charges: &[Charge]) -> Result<Reservation, ReserveError> {
        // One lock order for every transaction (by quota), so concurrent reservations of
        // several quotas cannot deadlock.
        let mut charges: Vec<Charge> = charges.iter().copied().filter(|c| c.amount > 0).collect();
        charges.sort_by_key(|c| c.quota);
        let mut held = Vec::with_capacity(charges.len());
        if charges.is_empty() {
            return Ok(Reservation { pool: self.pool.clone(), user, held });
        }
        let mut tx = self.pool.begin().await?;
        for charge in charges {
            let limit = charge.quota.limit(&self.limits);
            let period: Option<String> = sqlx::query_scalar(RESERVE)
                .bind(user)
                .bind(charge.quota.name())
                .bind(charge.amount)
                .bind(limit)
                .bind(charge.quota.daily())
                .fetch_optional(&mut *tx)
                .await?;
            match period {
                Some(period) => held.push((charge.quota, period, charge.amount)),
                None => {
                    tx.rollback().await?;
                    let limit = u64::try_from(limit).unwrap_or_default();
                    return Err(ReserveError::Exceeded(QuotaExceeded { quota: charge.quota, limit }));
                }
            }
        }
        tx.commit().await?;
        Ok(Reservation { pool: self.pool.clone(), user, held })
    }

    /// Gives back `amount` of a quota that never resets (a deleted conversation's place).
    pub async fn give_back(&self, user: Uuid, quota: Quota, amount: i64) -> Result<(), sqlx::Error> {
        if quota.daily() {
            return Ok(());
        }
        sqlx::query(GIVE_BACK).bind(user).bind(quota.name()).bind("").bind(amount).execute(&self.pool).await?;
        Ok(())
    }

    /// What `user` has used of `quota` now (today, for daily quotas).
    pub async fn used(&self, user: Uuid, quota: Quota) -> Result<i64, sqlx::Error> {
        let used: Option<i64> = sqlx::query_scalar(
            "SELECT used FROM user_quota_usage
              WHERE user_id = $1 AND quota = $2
                AND period = CASE WHEN $3 THEN to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') ELSE '' END",
        )
        .bind(user)
        .bind(quota.name())
        .bind(quota.daily())
        .fetch_optional(&self.pool)
        .await?;
        Ok(used.unwrap_or(0))
    }
}

impl Reservation {
    /// The command committed: what was reserved stays used.
    pub fn keep(mut self) {
        self.held.clear();
    }

    /// The command was refused or failed: give everything back.
    pub async fn release(mut self) -> Result<(), sqlx::Error> {
        let held = std::mem::take(&mut self.held);
        give_back_all(&self.pool, self.user, &held).await
    }
}

async fn give_back_all(pool: &PgPool, user: Uuid, held: &[(Quota, String, i64)]) -> Result<(), sqlx::Error> {
    for (quota, period, amount) in held {
        sqlx::query(GIVE_BACK).bind(user).bind(quota.name()).bind(period).bind(*amount).execute(pool).await?;
    }
    Ok(())
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        // Abandoned between reserve and keep/release (the request's future was dropped):
        // the command may or may not have committed; give back, erring on the user's side.
        let (pool, user, held) = (self.pool.clone(), self.user, std::mem::take(&mut self.held));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = give_back_all(&pool, user, &held).await {
                    tracing::warn!(error = ?e, %user, "Could not give back an abandoned quota reservation.");
                }
            });
        }
    }
}
