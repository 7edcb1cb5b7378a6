-- Ends the statement that calls it with an error (SQLSTATE CQ001, the message saying why),
-- which rolls back everything the statement did.
--
-- An append in one statement (`infra/src/event_append.rs`) can carry a guard: a change
-- that must happen with the events or not at all, such as a quota reservation
-- (`commands/src/quotas.rs`). When the guard does not hold, or the events could not all be
-- appended, the statement calls this, and the counters it raised go back with the events
-- it did not append. It runs only then, so its interpreter costs nothing on the way that
-- commits.
CREATE FUNCTION colloquy_refuse(reason text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'CQ001', MESSAGE = reason;
END
$$;
