-- Conversation decisions ask the event store whether a message id is taken (instead of
-- keeping every id in the aggregate, which would make long conversations slow to load).
CREATE INDEX events_message_id
    ON events (aggregate_id, (payload -> event_type ->> 'message_id'))
    WHERE aggregate_type = 'Conversation';
