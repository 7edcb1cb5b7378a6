-- Self-repairing projections (see docs/operations.md, "Quarantine" and "Reconciliation").

-- Aggregates a projection has set aside because one of their events could not be applied
-- (poison): later events of the aggregate are skipped for that projection, not retried,
-- until an operator clears the row (`colloquy quarantine clear`), which re-applies from
-- the event store. Written in the same transaction that records the failure.
CREATE TABLE projection_quarantine
(
    projection     text        NOT NULL,
    aggregate_id   text        NOT NULL,
    aggregate_type text        NOT NULL,
    -- The first event that could not be applied, and its id when the store has it.
    sequence       bigint      NOT NULL,
    event_id       uuid,
    reason         text        NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, aggregate_id)
);

-- How far each projection's reconciliation has compared the event store (commit order)
-- with the projection's progress, so each event is checked once, also across restarts.
CREATE TABLE projection_reconcile_checkpoint
(
    projection    text PRIMARY KEY,
    last_tx_id    xid8        NOT NULL,
    last_position bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
