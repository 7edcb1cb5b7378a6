-- Each claim of an Idempotency-Key gets its own id, so a request whose claim was taken over
-- (it was abandoned: the client disconnected, the process died) can no longer record or
-- release the key its successor now holds.
ALTER TABLE idempotency_keys ADD COLUMN claim_id uuid NOT NULL DEFAULT gen_random_uuid();
