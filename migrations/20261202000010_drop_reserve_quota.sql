-- The quota reservation is one prepared statement in `commands/src/quotas.rs` (`RESERVE`)
-- since 2026-11-30. The PL/pgSQL function it replaced was kept for one release, so the
-- previous release's processes could still call it during a rolling upgrade; nothing calls
-- it now.
DROP FUNCTION IF EXISTS reserve_quota(uuid, text[], bigint[], bigint[], boolean[], boolean, date, bigint, bigint);
