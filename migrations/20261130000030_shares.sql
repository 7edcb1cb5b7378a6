-- Read-only links to conversations (projection `shares`). A link is found by the SHA-256 of
-- its token (the token itself is never stored); it shows the path that ended at `leaf_id`
-- when it was made, as of conversation version `version`.
CREATE TABLE rm_shares (
    share_id        uuid        PRIMARY KEY,
    conversation_id uuid        NOT NULL,
    owner_id        uuid        NOT NULL,
    token_sha256    text        NOT NULL UNIQUE,
    title           text        NOT NULL,
    version         bigint      NOT NULL,
    leaf_id         uuid,
    created_at      timestamptz NOT NULL,
    -- set by a revoke or by the conversation's deletion
    revoked_at      timestamptz
);
CREATE INDEX rm_shares_conversation ON rm_shares (conversation_id, created_at);
