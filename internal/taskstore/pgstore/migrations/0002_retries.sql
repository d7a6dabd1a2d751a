-- 2. Transient failures (Retry) and idempotent creates (CreateOnce).
--
-- A task handed back after a transient failure waits until retry_at: the claimable index leaves it out
-- until Claim's sweep clears a due retry_at, so claims still walk one index in id order, and the retry
-- index holds the few waiting tasks that the sweep and Counts look for. retries counts those failures;
-- they are not attempts. idem_key is the idempotency key a task was created with: the unique index
-- makes concurrent creates with one key collide, so that they create one task.
--
-- Adding columns with constant defaults rewrites nothing; rebuilding the claimable index reads the
-- table once.
ALTER TABLE tasks
    ADD COLUMN retry_at timestamptz,
    ADD COLUMN retries  integer NOT NULL DEFAULT 0,
    ADD COLUMN idem_key text;

DROP INDEX tasks_claimable;
CREATE INDEX tasks_claimable ON tasks (id) WHERE state = 0 AND NOT pending AND retry_at IS NULL;
CREATE INDEX tasks_retry ON tasks (retry_at) WHERE retry_at IS NOT NULL;
CREATE UNIQUE INDEX tasks_idem ON tasks (idem_key) WHERE idem_key IS NOT NULL;
