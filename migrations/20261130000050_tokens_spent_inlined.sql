-- tokens_spent as a set-returning SQL function (RETURNS TABLE), which the planner inlines
-- into the calling statement. The first version, with OUT parameters, was not inlinable:
-- every call planned its body afresh, about 0.28 ms on every posted message, and more than
-- the message's own insert into the event store. Inlined, the caller's prepared statement
-- keeps one plan. That plan is still invalidated when a rebuild switches `rm_usage` over,
-- so the live table is always the one read.
DROP FUNCTION tokens_spent(uuid, date);

CREATE FUNCTION tokens_spent(owner uuid, on_day date)
RETURNS TABLE (today bigint, this_month bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(input_tokens + output_tokens) FILTER (WHERE day = on_day), 0)::bigint,
           coalesce(sum(input_tokens + output_tokens), 0)::bigint
      FROM rm_usage
     WHERE owner_id = owner AND day BETWEEN date_trunc('month', on_day)::date AND on_day
$$;
