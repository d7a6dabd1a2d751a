-- 5. Retention: ClaimExpired walks the settled tasks (finished, failed, cancelled) by when they
-- settled, and holds a batch for one sweeper until sweep_until so that other sweepers, on any instance,
-- skip it.
ALTER TABLE tasks ADD COLUMN sweep_until timestamptz;
CREATE INDEX tasks_settled ON tasks (finished_at) WHERE state IN (2, 3, 4);
