-- Idempotency keys record the use case's own answer (its result or its business
-- rejection) instead of an HTTP response, so any edge replays it the same way.
-- Successful answers carry over (their HTTP body was the result); recorded rejections do
-- not (a retry of a rejected command is rejected again and changes nothing).
ALTER TABLE idempotency_keys ADD COLUMN outcome jsonb;
UPDATE idempotency_keys SET outcome = jsonb_build_object('done', response_body) WHERE status_code < 400;
DELETE FROM idempotency_keys WHERE status_code >= 400;
ALTER TABLE idempotency_keys DROP COLUMN status_code, DROP COLUMN response_body;
