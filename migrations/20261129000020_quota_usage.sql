-- Per-user quota counters: write-side state, like user_credentials (not a read model: a
-- use case reserves here, atomically, before its command runs, and gives back what a
-- refused or failed command did not use).
--
-- `quota` names the quota (`conversations`, `messages_per_day`, `stored_bytes`); `period`
-- is '' for quotas that never reset and the UTC day (YYYY-MM-DD) for daily ones.
CREATE TABLE user_quota_usage
(
    user_id uuid   NOT NULL,
    quota   text   NOT NULL,
    period  text   NOT NULL,
    used    bigint NOT NULL CHECK (used >= 0),
    PRIMARY KEY (user_id, quota, period)
);

-- Start from what is already stored, so existing users' counters are right from the start.
-- Text lengths are measured on the JSON text of the value (an upper bound of its bytes;
-- nothing is un-escaped, so a stored NUL escape cannot fail the migration).

INSERT INTO user_quota_usage (user_id, quota, period, used)
SELECT (s.payload -> 'ConversationStarted' ->> 'owner_id')::uuid, 'conversations', '', count(*)
  FROM events s
 WHERE s.aggregate_type = 'Conversation' AND s.sequence = 1 AND s.event_type = 'ConversationStarted'
   AND NOT EXISTS (SELECT 1 FROM events d
                    WHERE d.aggregate_type = 'Conversation' AND d.aggregate_id = s.aggregate_id
                      AND d.event_type = 'ConversationDeleted')
 GROUP BY 1;

INSERT INTO user_quota_usage (user_id, quota, period, used)
SELECT (s.payload -> 'ConversationStarted' ->> 'owner_id')::uuid, 'stored_bytes', '', sum(octet_length(f.v::text))
  FROM events s
  JOIN events e ON e.aggregate_type = s.aggregate_type AND e.aggregate_id = s.aggregate_id
 CROSS JOIN LATERAL (VALUES (e.payload -> e.event_type -> 'title'),
                            (e.payload -> e.event_type -> 'system_prompt'),
                            (e.payload -> e.event_type -> 'content')) AS f(v)
 WHERE s.aggregate_type = 'Conversation' AND s.sequence = 1 AND s.event_type = 'ConversationStarted'
   AND json_typeof(f.v) = 'string'
 GROUP BY 1;

INSERT INTO user_quota_usage (user_id, quota, period, used)
SELECT (s.payload -> 'ConversationStarted' ->> 'owner_id')::uuid, 'messages_per_day',
       to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*)
  FROM events s
  JOIN events e ON e.aggregate_type = s.aggregate_type AND e.aggregate_id = s.aggregate_id
 WHERE s.aggregate_type = 'Conversation' AND s.sequence = 1 AND s.event_type = 'ConversationStarted'
   AND e.event_type = 'UserMessagePosted'
   AND e.recorded_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
 GROUP BY 1;
