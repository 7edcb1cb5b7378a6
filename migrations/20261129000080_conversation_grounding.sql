-- The Conversation aggregate now keeps `grounded` (on from the start for kind `knowledge`).
-- Snapshots written before it would load with `grounded = false`, which is wrong for
-- knowledge conversations: drop them, so the next load replays the events (and writes a new
-- snapshot). Snapshots are a cache of the events; nothing is lost.
DELETE FROM snapshots WHERE aggregate_type = 'Conversation';
