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

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
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

/// A period of the token quotas (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenPeriod {
    /// The day.
    Day,
    /// The calendar month.
    Month,
}

/// The user has spent a period's tokens: no provider call until the period resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("the token quota of the {} is spent ({used} of {limit} tokens); it resets at {resets_at}",
    match period { TokenPeriod::Day => "day", TokenPeriod::Month => "month" })]
pub struct TokenQuotaExceeded {
    /// Which quota.
    pub period: TokenPeriod,
    /// Its limit.
    pub limit: u64,
    /// Tokens spent in the period so far.
    pub used: u64,
    /// When the period ends and the quota is whole again.
    pub resets_at: DateTime<Utc>,
}

/// Whether tokens spent `today` and `this_month` (as of `now`) leave anything of `limits`.
pub fn token_check(
    limits: &QuotaSettings,
    now: DateTime<Utc>,
    today: u64,
    this_month: u64,
) -> Option<TokenQuotaExceeded> {
    let day = now.date_naive();
    let midnight = |d: NaiveDate| d.and_time(NaiveTime::MIN).and_utc();
    if this_month >= limits.tokens_per_month {
        let next_month = match day.month() {
            12 => NaiveDate::from_ymd_opt(day.year() + 1, 1, 1),
            m => NaiveDate::from_ymd_opt(day.year(), m + 1, 1),
        };
        return Some(TokenQuotaExceeded {
            period: TokenPeriod::Month,
            limit: limits.tokens_per_month,
            used: this_month,
            resets_at: next_month.map_or(now, midnight),
        });
    }
    if today >= limits.tokens_per_day {
        return Some(TokenQuotaExceeded {
            period: TokenPeriod::Day,
            limit: limits.tokens_per_day,
            used: today,
            resets_at: day.succ_opt().map_or(now, midnight),
        });
    }
    None
}

/// Why a reservation was not made.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// A quota would be exceeded.
    #[error(transparent)]
    Exceeded(QuotaExceeded),
    /// The command would make a model answer, and the user has spent a period's tokens.
    #[error(transparent)]
    TokensSpent(TokenQuotaExceeded),
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

/// Reserves every charge's amount in one prepared statement: an upsert whose `WHERE` is
/// evaluated on the locked, current row, so concurrent reservations cannot overshoot, with
/// rows written in the order given (sorted by quota) so two reservations cannot deadlock.
/// It answers the charges it counted, with their periods; a charge missing from the answer
/// would have exceeded its limit.
///
/// A command that will make a model answer (`$6`) first has the tokens its user spent today
/// and this month (`tokens_spent`, the usage ledger) checked against their limits (`$8`,
/// `$9`) in the same statement: if either is spent, nothing is reserved. Every answered row
/// carries the two sums (null when not asked for); with nothing reserved, one row of nulls
/// is answered (and the sums, when asked for).
///
/// A user's counter row is a hot spot: every command of theirs updates it, and concurrent
/// ones queue on its lock. So the lock is held as briefly as possible: one round trip, one
/// statement whose plan the session keeps (an earlier PL/pgSQL function, `reserve_quota`,
/// cost a fifth of PostgreSQL's CPU under load in its interpreter and SPI; 2026-11-30), and
/// a commit that does not wait for the WAL to reach the disk. Durability is unchanged: a
/// reservation is kept only for a command whose events then commit, and that synchronous
/// commit flushes the WAL up to and past the reservation's commit record. A crash can lose
/// only reservations of commands that never committed, which would have been given back.
/// (`set_config(..., true)` lasts to the end of this statement's own transaction.)
const RESERVE: &str = "
    WITH spent AS (
        SELECT s.today, s.this_month FROM tokens_spent($1, $7) s WHERE $6
    ), tokens_left AS (
        SELECT NOT EXISTS (SELECT 1 FROM spent WHERE spent.this_month >= $9 OR spent.today >= $8) AS ok
    ), no_flush_wait AS (
        SELECT set_config('synchronous_commit', 'off', true)
    ), reserved AS (
        INSERT INTO user_quota_usage AS u (user_id, quota, period, used)
        SELECT $1, w.quota, CASE WHEN w.daily THEN to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') ELSE '' END,
               w.amount
          FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::boolean[]) WITH ORDINALITY
               AS w(quota, amount, lim, daily, n)
         WHERE w.amount <= w.lim AND (SELECT ok FROM tokens_left)
         ORDER BY w.n
        ON CONFLICT (user_id, quota, period) DO UPDATE SET used = u.used + EXCLUDED.used
         WHERE u.used + EXCLUDED.used
               <= (SELECT l.lim FROM unnest($2::text[], $4::bigint[]) AS l(quota, lim) WHERE l.quota = EXCLUDED.quota)
        RETURNING u.quota, u.period
    )
    SELECT r.quota, r.period, s.today, s.this_month
      FROM no_flush_wait
      LEFT JOIN reserved r ON true
      LEFT JOIN spent s ON true";

/// A row [`RESERVE`] answers: a quota counted and its period (both null when nothing was
/// reserved), then the tokens spent today and this month (null
/// when the command spends none).
type ReservedRow = (Option<String>, Option<String>, Option<i64>, Option<i64>);

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
        self.reserve_checked(user, charges, false).await
    }

    /// Like [`reserve`](Self::reserve), for a command that will make a model answer: when
    /// `user` has spent the day's or the month's tokens ([`tokens_exhausted`](Self::tokens_exhausted)),
    /// nothing is reserved and the error says which. Checked and reserved in one call.
    pub async fn reserve_spending_tokens(&self, user: Uuid, charges: &[Charge]) -> Result<Reservation, ReserveError> {
        self.reserve_checked(user, charges, true).await
    }

    async fn reserve_checked(
        &self,
        user: Uuid,
        charges: &[Charge],
        spends_tokens: bool,
    ) -> Result<Reservation, ReserveError> {
        // One lock order for every transaction (by quota), so concurrent reservations of
        // several quotas cannot deadlock.
        let mut charges: Vec<Charge> = charges.iter().copied().filter(|c| c.amount > 0).collect();
        charges.sort_by_key(|c| c.quota);
        // One row per quota (a statement may not update a row twice).
        charges.dedup_by(|later, first| {
            let same = later.quota == first.quota;
            if same {
                first.amount += later.amount;
            }
            same
        });
        let mut held = Vec::with_capacity(charges.len());
        if charges.is_empty() {
            if spends_tokens {
                if let Some(spent) = self.tokens_exhausted(user).await? {
                    return Err(ReserveError::TokensSpent(spent));
                }
            }
            return Ok(Reservation { pool: self.pool.clone(), user, held });
        }
        let now = Utc::now();
        let limits: Vec<i64> = charges.iter().map(|c| c.quota.limit(&self.limits)).collect();
        let tokens = |limit: u64| i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<ReservedRow> = sqlx::query_as(RESERVE)
            .bind(user)
            .bind(charges.iter().map(|c| c.quota.name()).collect::<Vec<_>>())
            .bind(charges.iter().map(|c| c.amount).collect::<Vec<_>>())
            .bind(&limits)
            .bind(charges.iter().map(|c| c.quota.daily()).collect::<Vec<_>>())
            .bind(spends_tokens)
            .bind(now.date_naive())
            .bind(tokens(self.limits.tokens_per_day))
            .bind(tokens(self.limits.tokens_per_month))
            .fetch_all(&self.pool)
            .await?;
        let counted: Vec<(String, String)> =
            rows.iter().filter_map(|(quota, period, ..)| Some((quota.clone()?, period.clone()?))).collect();
        if spends_tokens {
            let spent = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or_default();
            let (today, this_month) = rows.first().map_or((0, 0), |(_, _, t, m)| (spent(*t), spent(*m)));
            if let Some(exceeded) = token_check(&self.limits, now, today, this_month) {
                // The function reserved nothing then; should it ever disagree, nothing stays.
                give_back_all(&self.pool, user, &held_all(&charges, &counted)).await?;
                return Err(ReserveError::TokensSpent(exceeded));
            }
        }
        for (charge, limit) in charges.iter().zip(&limits) {
            match counted.iter().find(|(quota, _)| quota == charge.quota.name()) {
                Some((_, period)) => held.push((charge.quota, period.clone(), charge.amount)),
                None => {
                    // All or nothing: what was counted is given back (only ever at a limit).
                    give_back_all(&self.pool, user, &held_all(&charges, &counted)).await?;
                    let limit = u64::try_from(*limit).unwrap_or_default();
                    return Err(ReserveError::Exceeded(QuotaExceeded { quota: charge.quota, limit }));
                }
            }
        }
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

    /// Whether `user` may still spend tokens now: `Some` names the token quota (day or
    /// month) they have spent. Read from the usage ledger (`tokens_spent`, over the `usage`
    /// read model), so calls still running count once their reply has ended: a user can go
    /// past a quota by the calls already under way, never start one after it is spent.
    pub async fn tokens_exhausted(&self, user: Uuid) -> Result<Option<TokenQuotaExceeded>, sqlx::Error> {
        let now = Utc::now();
        let (today, this_month): (i64, i64) = sqlx::query_as("SELECT today, this_month FROM tokens_spent($1, $2)")
            .bind(user)
            .bind(now.date_naive())
            .fetch_one(&self.pool)
            .await?;
        let spent = |n: i64| u64::try_from(n).unwrap_or_default();
        Ok(token_check(&self.limits, now, spent(today), spent(this_month)))
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

/// The charges the reservation statement counted, with their periods.
fn held_all(charges: &[Charge], counted: &[(String, String)]) -> Vec<(Quota, String, i64)> {
    charges
        .iter()
        .filter_map(|c| {
            counted.iter().find(|(q, _)| q == c.quota.name()).map(|(_, period)| (c.quota, period.clone(), c.amount))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap_or_default()
    }

    #[test]
    fn a_spent_quota_names_its_reset() {
        let limits = QuotaSettings { tokens_per_day: 100, tokens_per_month: 1_000, ..QuotaSettings::default() };
        let now = at("2026-12-31T15:00:00Z");
        assert_eq!(token_check(&limits, now, 99, 500), None);
        let day = token_check(&limits, now, 100, 500).map(|e| (e.period, e.resets_at));
        assert_eq!(day, Some((TokenPeriod::Day, at("2027-01-01T00:00:00Z"))));
        // The month's limit wins when both are spent; December rolls over into January.
        let month = token_check(&limits, now, 150, 1_000).map(|e| (e.period, e.used, e.resets_at));
        assert_eq!(month, Some((TokenPeriod::Month, 1_000, at("2027-01-01T00:00:00Z"))));
        let june = token_check(&limits, at("2026-06-10T08:00:00Z"), 0, 1_200).map(|e| e.resets_at);
        assert_eq!(june, Some(at("2026-07-01T00:00:00Z")));
    }
}
