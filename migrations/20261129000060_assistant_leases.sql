-- Replies being answered: the assistant worker that took a reply holds its lease and renews
-- it while it streams. A lease that expired belongs to a worker that stopped mid-reply; any
-- other worker takes it over and ends the reply (failed, partial text kept), so no reply
-- stays "started" forever. A row lives from before ReplyStarted until after the reply's
-- final event.
CREATE TABLE assistant_leases
(
    reply_id        uuid        PRIMARY KEY,
    conversation_id uuid        NOT NULL,
    owner_id        uuid        NOT NULL,
    worker          text        NOT NULL,
    expires_at      timestamptz NOT NULL
);
CREATE INDEX assistant_leases_expiry ON assistant_leases (expires_at);
