//! Per-user quotas: conversations, messages per UTC day, and bytes of stored text.
//!
//! Counters live in `user_quota_usage` (write-side state, like the credentials). A use case
//! hands the command service a [`QuotaGuard`] for what its command will use, and the
//! command's events are appended in the same statement that raises the counters,
//! all-or-nothing (`used + n <= limit`, checked on the locked row). So concurrent requests
//! can never take a user past a limit, and only commands whose events commit count: one the
//! aggregate refuses never reaches the counters. Commands run inside the Idempotency-Key's
//! first run: a replayed answer consumes nothing.
//!
//! Anything that stores text (files, when they land) adds a [`Charge`] of
//! [`Quota::StoredBytes`].

use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
use colloquy_infra::event_append::AppendGuard;
use colloquy_infra::settings::QuotaSettings;
use serde::{Deserialize, Serialize};
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool};
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

/// Why a command was refused for its quotas, or could not be counted.
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
    turns: Arc<[tokio::sync::Mutex<()>]>,
}

/// Stripes of [`Quotas::turn`]: users share one only by their id's hash.
const TURNS: usize = 1024;

/// What a command will use of its user's quotas, reserved in the statement that appends the
/// command's events (an [`AppendGuard`]): the counters rise with the events or not at all.
///
/// Each charge is an upsert of the user's counter row whose `WHERE` is evaluated on the
/// locked, current row (`used + amount <= limit`), so concurrent commands cannot take a user
/// past a limit. Rows are written in one order (by quota) so two commands cannot deadlock. A
/// charge the upsert did not count would have exceeded its limit: the refusal names the
/// first such quota, and `colloquy_refuse` rolls back the charges that were counted and the
/// events with them.
///
/// A command that will make a model answer first has the tokens its user spent today and
/// this month (`tokens_spent`, the usage ledger) checked against their limits in the same
/// statement: if either is spent, nothing is reserved and the refusal carries the two sums.
///
/// The counter rows stay locked until the append commits, WAL flush included, so one user's
/// concurrent commands take turns there; on one instance they take turns before that, in
/// [`Quotas::turn`] (bench/README.md, eleventh round).
pub struct QuotaGuard {
    user: Uuid,
    charges: Vec<Charge>,
    limits: QuotaSettings,
    spends_tokens: bool,
    now: DateTime<Utc>,
}

/// The guard's expressions, parameters from `$first`: `$first` user, `+1..+4` quotas,
/// amounts, limits and whether each is daily, `+5` whether tokens are checked, `+6` the day,
/// `+7` and `+8` the tokens per day and month.
fn guard_ctes(first: usize) -> String {
    let p = |n: usize| format!("${}", first + n);
    let (user, quotas, amounts, limits, daily) = (p(0), p(1), p(2), p(3), p(4));
    let (spends, day, per_day, per_month) = (p(5), p(6), p(7), p(8));
    format!(
        "wanted AS (
             SELECT w.quota, w.amount, w.lim, w.daily, w.n
               FROM unnest({quotas}::text[], {amounts}::bigint[], {limits}::bigint[], {daily}::boolean[])
                    WITH ORDINALITY AS w(quota, amount, lim, daily, n)
         ), spent AS (
             SELECT s.today, s.this_month FROM tokens_spent({user}, {day}::date) s WHERE {spends}::boolean
         ), tokens_left AS (
             SELECT NOT EXISTS (SELECT 1 FROM spent WHERE spent.this_month >= {per_month}::bigint
                                                       OR spent.today >= {per_day}::bigint) AS ok
         ), reserved AS (
             INSERT INTO user_quota_usage AS u (user_id, quota, period, used)
             SELECT {user}::uuid, w.quota,
                    CASE WHEN w.daily THEN to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') ELSE '' END, w.amount
               FROM wanted w
              WHERE w.amount <= w.lim AND (SELECT ok FROM tokens_left)
              ORDER BY w.n
             ON CONFLICT (user_id, quota, period) DO UPDATE SET used = u.used + EXCLUDED.used
              WHERE u.used + EXCLUDED.used <= (SELECT l.lim FROM wanted l WHERE l.quota = EXCLUDED.quota)
             RETURNING u.quota
         )"
    )
}

/// Null when every charge was counted; otherwise `tokens <today> <this month>` when the
/// tokens are spent, or `quota <name>` for the first charge (by quota) not counted.
const GUARD_REFUSAL: &str = "
    CASE WHEN NOT (SELECT ok FROM tokens_left)
         THEN (SELECT 'tokens ' || s.today || ' ' || s.this_month FROM spent s)
         ELSE (SELECT 'quota ' || w.quota FROM wanted w
                WHERE w.quota NOT IN (SELECT r.quota FROM reserved r) ORDER BY w.n LIMIT 1)
    END";

impl AppendGuard for QuotaGuard {
    fn ctes(&self, first: usize) -> String {
        guard_ctes(first)
    }

    fn refusal(&self) -> &str {
        GUARD_REFUSAL
    }

    fn bind(&self, args: &mut PgArguments) -> Result<(), BoxDynError> {
        let tokens = |limit: u64| i64::try_from(limit).unwrap_or(i64::MAX);
        args.add(self.user)?;
        args.add(self.charges.iter().map(|c| c.quota.name()).collect::<Vec<_>>())?;
        args.add(self.charges.iter().map(|c| c.amount).collect::<Vec<_>>())?;
        args.add(self.charges.iter().map(|c| c.quota.limit(&self.limits)).collect::<Vec<_>>())?;
        args.add(self.charges.iter().map(|c| c.quota.daily()).collect::<Vec<_>>())?;
        args.add(self.spends_tokens)?;
        args.add(self.now.date_naive())?;
        args.add(tokens(self.limits.tokens_per_day))?;
        args.add(tokens(self.limits.tokens_per_month))?;
        Ok(())
    }
}

impl QuotaGuard {
    /// What the guard's refusal `reason` means to the caller.
    pub fn refused(&self, reason: &str) -> ReserveError {
        let unexplained = || ReserveError::Database(sqlx::Error::Protocol(format!("unknown quota refusal: {reason}")));
        if let Some(sums) = reason.strip_prefix("tokens ") {
            let mut sums = sums.split(' ').map(|n| n.parse::<u64>().ok());
            let (Some(Some(today)), Some(Some(this_month))) = (sums.next(), sums.next()) else {
                return unexplained();
            };
            return token_check(&self.limits, self.now, today, this_month)
                .map_or_else(unexplained, ReserveError::TokensSpent);
        }
        let quota = reason.strip_prefix("quota ").and_then(|name| self.charges.iter().find(|c| c.quota.name() == name));
        match quota {
            Some(charge) => ReserveError::Exceeded(QuotaExceeded {
                quota: charge.quota,
                limit: u64::try_from(charge.quota.limit(&self.limits)).unwrap_or_default(),
            }),
            None => unexplained(),
        }
    }
}

const GIVE_BACK: &str = "
    UPDATE user_quota_usage SET used = greatest(used - $4, 0)
     WHERE user_id = $1 AND quota = $2 AND period = $3";

impl Quotas {
    /// Counters on `pool`, checked against `limits`.
    pub fn new(pool: PgPool, limits: QuotaSettings) -> Self {
        let turns = (0..TURNS).map(|_| tokio::sync::Mutex::new(())).collect();
        Self { pool, limits, turns }
    }

    /// Waits for `user`'s turn on this instance to run a command with a [`QuotaGuard`],
    /// which is theirs while the returned guard lives. The guard's counter rows are locked
    /// from its statement's update to its commit, WAL flush included, so a user's charged
    /// commands take turns in PostgreSQL anyway. Waiting there, each would hold a pooled
    /// connection, and their upserts would keep colliding on the rows (every release wakes
    /// a waiter that rechecks and may wait again). Waiting here holds nothing: with one
    /// user sending from 32 connections, PostgreSQL sees at most one of their commands per
    /// instance (bench/README.md, eleventh round).
    pub async fn turn(&self, user: Uuid) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = (user.as_u128() % self.turns.len() as u128) as usize;
        self.turns[stripe].lock().await
    }

    /// The pool the counters are on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The configured limits.
    pub fn limits(&self) -> QuotaSettings {
        self.limits
    }

    /// The guard that reserves `charges` for `user` with a command's events, or `None`
    /// when there is nothing to reserve or check. `spends_tokens`: the command will make a
    /// model answer, and is refused when `user` has spent the day's or the month's tokens.
    pub fn guard(&self, user: Uuid, charges: &[Charge], spends_tokens: bool) -> Option<QuotaGuard> {
        // One lock order for every statement (by quota), so concurrent reservations of
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
        (spends_tokens || !charges.is_empty()).then(|| QuotaGuard {
            user,
            charges,
            limits: self.limits,
            spends_tokens,
            now: Utc::now(),
        })
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

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_users_turns_come_one_at_a_time_and_other_users_do_not_wait() {
        let pool = PgPool::connect_lazy("postgres://127.0.0.1/unused").unwrap_or_else(|e| panic!("{e}"));
        let quotas = Quotas::new(pool, QuotaSettings::default());
        let (ada, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let ada_first = quotas.turn(ada).await;
        assert!(quotas.turn(ada).now_or_never().is_none(), "Ada's second command waits for her first");
        assert!(quotas.turn(bob).now_or_never().is_some(), "Bob does not wait for Ada");
        drop(ada_first);
        assert!(quotas.turn(ada).now_or_never().is_some(), "her next one goes once the first is done");
    }

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
