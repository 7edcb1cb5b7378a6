-- Login sessions, refresh tokens and revoked access tokens: the durable record of who may
-- still use a token. Redis only caches refusals; every authenticated request asks these
-- tables (primary-key lookups, one query), so a flushed or unreachable Redis refuses a
-- revoked token all the same.

-- An account's deactivation, recorded next to its credentials once `UserDeactivated` is
-- committed (see commands/src/users.rs for the window between the two).
ALTER TABLE user_credentials ADD COLUMN deactivated_at timestamptz;
UPDATE user_credentials c
   SET deactivated_at = e.recorded_at
  FROM events e
 WHERE e.aggregate_type = 'User'
   AND e.aggregate_id = c.user_id::text
   AND e.event_type = 'UserDeactivated';

-- One row per login: the family of refresh tokens that login started. Access tokens name
-- theirs in the `sid` claim; revoking the session refuses all of them at once.
CREATE TABLE auth_sessions
(
    session_id     uuid PRIMARY KEY,
    user_id        uuid        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- The expiry of the family's newest refresh token (the session cannot outlive it).
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    -- `logout`, `refresh_token_reused`, `deactivated`.
    revoked_reason text
);
CREATE INDEX auth_sessions_user_id ON auth_sessions (user_id);
CREATE INDEX auth_sessions_expires_at ON auth_sessions (expires_at);

-- Refresh tokens are random secrets; only their SHA-256 is stored. A used token stays
-- until it expires, so that presenting it again is recognised as reuse.
CREATE TABLE refresh_tokens
(
    token_hash bytea PRIMARY KEY,
    session_id uuid        NOT NULL REFERENCES auth_sessions (session_id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_session_id ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);

-- Access tokens revoked one by one (logout), kept until they would have expired anyway.
CREATE TABLE revoked_access_tokens
(
    jti        uuid PRIMARY KEY,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_access_tokens_expires_at ON revoked_access_tokens (expires_at);
