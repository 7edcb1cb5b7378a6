-- API keys for the OpenAI-compatible routes (`/v1/...`). Like the session tables, this is
-- the durable record of which credential may still be used; the User's `ApiKeyCreated` and
-- `ApiKeyRevoked` events are the audit trail (they never hold the key or its hash). A key is
-- a random secret shown once; only its SHA-256 is kept, so a copy of this table lets nobody
-- in.
CREATE TABLE api_keys
(
    key_id       uuid PRIMARY KEY,
    user_id      uuid        NOT NULL,
    key_sha256   bytea       NOT NULL UNIQUE,
    name         text        NOT NULL,
    -- the key's last four characters, to tell keys apart in a list
    hint         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- written at most once a minute per key (see commands/src/api_keys.rs)
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id, created_at);

-- Where a conversation came from: `app` (started through the REST API), `import` (from an
-- export) or `api` (a chat completion asked through the OpenAI-compatible API).
ALTER TABLE rm_conversations ADD COLUMN origin text NOT NULL DEFAULT 'app';
UPDATE rm_conversations c
   SET origin = 'import'
  FROM events e
 WHERE e.aggregate_type = 'Conversation'
   AND e.aggregate_id = c.conversation_id::text
   AND e.event_type = 'ConversationImported';
