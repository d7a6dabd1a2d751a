-- 7. Tombstones end: PurgeDeleted removes those deleted long enough ago, walking the index of them by
-- when they were deleted, and counts them in task_ids.purged in the same statement, so that Counts'
-- total stays the id counter. Ids come from the counter, so a missing id below it is a removed
-- tombstone and reads as one.
ALTER TABLE task_ids ADD COLUMN purged bigint NOT NULL DEFAULT 0;
CREATE INDEX tasks_deleted ON tasks (finished_at) WHERE state = 5;
