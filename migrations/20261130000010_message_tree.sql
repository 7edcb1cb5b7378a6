-- Conversations become trees of messages (regenerate, edit, branches): every message has a
-- parent, and the conversation has an active leaf.

-- Conversation snapshots from before the aggregate tracked its active leaf would load
-- without one; replaying the events gives it.
DELETE FROM snapshots WHERE aggregate_type = 'Conversation';

-- A regeneration request names the reply to come; a worker starting it looks the request
-- up by that id.
CREATE INDEX events_requested_reply_id
    ON events (aggregate_id, (payload -> event_type ->> 'reply_id'))
    WHERE aggregate_type = 'Conversation' AND event_type = 'ReplyRequested';

-- The read model: each message's parent (a reply's is the message it answers), the message
-- it is an edit of, and since when it is the active leaf (the conversation's active leaf is
-- its row with the highest `leaf_since`).
ALTER TABLE rm_messages
    ADD COLUMN parent_id  uuid,
    ADD COLUMN edit_of    uuid,
    ADD COLUMN leaf_since bigint;

-- Rows written before: conversations had no branches, so a user message follows the row
-- before it, a reply answers its message, and the newest row is the leaf.
UPDATE rm_messages m SET parent_id = CASE
        WHEN m.role = 'assistant' THEN m.in_reply_to
        ELSE (SELECT p.message_id FROM rm_messages p
               WHERE p.conversation_id = m.conversation_id AND p.sequence < m.sequence
               ORDER BY p.sequence DESC LIMIT 1)
    END,
    leaf_since = m.sequence;

CREATE INDEX rm_messages_children ON rm_messages (conversation_id, parent_id, sequence);
CREATE INDEX rm_messages_leaf ON rm_messages (conversation_id, leaf_since DESC) WHERE leaf_since IS NOT NULL;

-- A reply's prompt quotes the replies on its path with the text they ended with: looked up
-- by reply id among the ends of replies.
CREATE INDEX events_reply_end_id
    ON events (aggregate_id, (payload -> event_type ->> 'reply_id'))
    WHERE aggregate_type = 'Conversation' AND event_type IN ('ReplyCompleted', 'ReplyFailed', 'ReplyCancelled');
