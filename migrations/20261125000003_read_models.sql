-- Read models, written only by projectors. Each can be rebuilt from the event store.

-- Per projection and aggregate, the last applied sequence: written in the same
-- transaction as the read model, it makes delivery duplicates and reordering harmless.
CREATE TABLE projection_state
(
    projection    text   NOT NULL,
    aggregate_id  text   NOT NULL,
    last_sequence bigint NOT NULL,
    PRIMARY KEY (projection, aggregate_id)
);

CREATE TABLE rm_users
(
    user_id       uuid PRIMARY KEY,
    email         text        NOT NULL,
    full_name     text        NOT NULL,
    role          text        NOT NULL,
    active        boolean     NOT NULL,
    default_model text,
    system_prompt text,
    version       bigint      NOT NULL,
    registered_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE rm_conversations
(
    conversation_id  uuid PRIMARY KEY,
    owner_id         uuid        NOT NULL,
    title            text        NOT NULL,
    kind             text        NOT NULL,
    model            text        NOT NULL,
    system_prompt    text,
    archived         boolean     NOT NULL DEFAULT false,
    message_count    bigint      NOT NULL DEFAULT 0,
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    last_activity_at timestamptz NOT NULL
);
-- Keyset pagination of one user's list, newest activity first.
CREATE INDEX rm_conversations_owner_activity
    ON rm_conversations (owner_id, archived, last_activity_at DESC, conversation_id DESC);

-- Message ids are unique within their conversation (clients may choose them).
CREATE TABLE rm_messages
(
    message_id      uuid        NOT NULL,
    conversation_id uuid        NOT NULL,
    owner_id        uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    role            text        NOT NULL,
    content         text        NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, message_id)
);
CREATE INDEX rm_messages_conversation ON rm_messages (conversation_id, sequence);
