-- Write-side state that is not event-sourced on purpose.

-- Credentials never enter the event log. The unique e-mail doubles as the guard that makes
-- concurrent registrations with one address have exactly one winner.
CREATE TABLE user_credentials
(
    user_id       uuid PRIMARY KEY,
    email         text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Responses to commands sent with an Idempotency-Key, replayed for a repeated request.
CREATE TABLE idempotency_keys
(
    user_id       uuid        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    -- NULL while the first request is still being handled.
    status_code   smallint,
    response_body jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
