-- The usage ledger's read model (projection `usage`): per user, UTC day, provider and
-- upstream model, the provider calls made (replies and titles), their tokens, and their cost
-- by the price table the projection was built with (rebuild it to re-price).
CREATE TABLE rm_usage (
    owner_id      uuid             NOT NULL,
    day           date             NOT NULL,
    provider      text             NOT NULL,
    model         text             NOT NULL,
    calls         bigint           NOT NULL,
    input_tokens  bigint           NOT NULL,
    output_tokens bigint           NOT NULL,
    cost          double precision NOT NULL,
    -- false when some call of the row had no price in the table (it counted 0)
    priced        boolean          NOT NULL,
    PRIMARY KEY (owner_id, day, provider, model)
);

-- Tokens (prompt and generated) a user spent on a UTC day, and in that day's calendar month
-- up to it: what the token quotas are checked against before a provider call. A function,
-- so the write side asks the ledger without knowing its table (the body is parsed at each
-- call, so a rebuilt and switched-over `rm_usage` is the one read).
CREATE FUNCTION tokens_spent(owner uuid, on_day date, OUT today bigint, OUT this_month bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(input_tokens + output_tokens) FILTER (WHERE day = on_day), 0)::bigint,
           coalesce(sum(input_tokens + output_tokens), 0)::bigint
      FROM rm_usage
     WHERE owner_id = owner AND day BETWEEN date_trunc('month', on_day)::date AND on_day
$$;
