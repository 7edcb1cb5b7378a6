-- Assistant replies (issue 7).

-- Reply ids share the message-id space of their conversation: decisions ask whether a
-- reply was started (and whether an id is taken at all) through this partial index, like
-- events_message_id for user messages. Only ReplyStarted claims an id; the reply's later
-- events repeat it.
CREATE INDEX events_reply_id
    ON events (aggregate_id, (payload -> event_type ->> 'reply_id'))
    WHERE aggregate_type = 'Conversation' AND event_type = 'ReplyStarted';

-- The messages read model shows assistant replies beside user messages. A user message
-- is complete when posted and names the reply that answers it (reply_id); an assistant
-- row is the reply itself (its message_id is the reply id), `streaming` until it ends
-- `completed`, `failed` or `cancelled`.
ALTER TABLE rm_messages
    ADD COLUMN status        text NOT NULL DEFAULT 'completed',
    ADD COLUMN reply_id      uuid,
    ADD COLUMN in_reply_to   uuid,
    ADD COLUMN model         text,
    ADD COLUMN provider      text,
    ADD COLUMN input_tokens  bigint,
    ADD COLUMN output_tokens bigint,
    ADD COLUMN finish_reason text,
    ADD COLUMN error_code    text,
    ADD COLUMN error_message text;

-- Rows written before this migration are user messages: give them their reply's id (UUID
-- v5 of the message id under the reply namespace, as colloquy_domain::reply_id_for).
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
UPDATE rm_messages
   SET reply_id = uuid_generate_v5('85c4f9a3-7410-43ca-aeba-75c7b132bd7b'::uuid, message_id::text)
 WHERE role = 'user';
