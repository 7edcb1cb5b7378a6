-- A quota reservation as one prepared call instead of a four-statement text sent through the
-- simple query protocol: that text was parsed and planned again on every command (an upsert
-- over `unnest` with a sub-select), a cost paid while other reservations of the same user
-- queued on the counter row. PL/pgSQL keeps the upsert's plan for the session.
--
-- Rows are written in the order given (sorted by quota by the caller), so two reservations
-- cannot deadlock; the `WHERE` of the upsert is evaluated on the locked, current row, so
-- concurrent reservations cannot overshoot. Answers the quotas counted, with their periods:
-- a quota missing from the answer would have exceeded its limit.
--
-- A command that will make a model answer (`spends_tokens`) first checks the tokens the user
-- spent today and this month (`tokens_spent`, the usage ledger) against their limits, in the
-- same call: if either is spent, nothing is reserved and the one row answered has no quota,
-- only the two sums. Every answered row carries the sums (null when not asked for).
--
-- The transaction commits without waiting for its WAL to reach the disk. Durability is
-- unchanged: a reservation is kept only for a command whose events then commit, and that
-- synchronous commit flushes the WAL up to and past the reservation's commit record. A crash
-- can lose only reservations of commands that never committed, which would have been given
-- back anyway. (`set_config(..., true)` lasts to the end of the caller's transaction: the
-- function has no SET clause that would restore it on return.)
CREATE FUNCTION reserve_quota(owner uuid, quotas text[], amounts bigint[], limits bigint[], daily boolean[],
                              spends_tokens boolean, on_day date, day_tokens bigint, month_tokens bigint)
RETURNS TABLE (quota text, period text, tokens_today bigint, tokens_this_month bigint)
LANGUAGE plpgsql AS $$
-- `quota` and `period` name both the answer's columns and the table's: the table's are meant.
#variable_conflict use_column
DECLARE
    spent_today bigint;
    spent_this_month bigint;
BEGIN
    IF spends_tokens THEN
        SELECT s.today, s.this_month INTO spent_today, spent_this_month FROM tokens_spent(owner, on_day) s;
        IF spent_this_month >= month_tokens OR spent_today >= day_tokens THEN
            RETURN QUERY SELECT NULL::text, NULL::text, spent_today, spent_this_month;
            RETURN;
        END IF;
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    INSERT INTO user_quota_usage AS u (user_id, quota, period, used)
    SELECT owner, w.quota,
           CASE WHEN w.daily THEN to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') ELSE '' END, w.amount
      FROM unnest(quotas, amounts, limits, daily) WITH ORDINALITY AS w(quota, amount, lim, daily, n)
     WHERE w.amount <= w.lim
     ORDER BY w.n
    ON CONFLICT (user_id, quota, period) DO UPDATE SET used = u.used + EXCLUDED.used
     WHERE u.used + EXCLUDED.used
           <= (SELECT l.lim FROM unnest(quotas, limits) AS l(quota, lim) WHERE l.quota = EXCLUDED.quota)
    RETURNING u.quota, u.period, spent_today, spent_this_month;
END
$$;
