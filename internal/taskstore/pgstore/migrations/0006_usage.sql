-- 6. Quotas and tombstone privacy.
--
-- size is the bytes of a task's source image (Activate). usage holds, per owner, its tasks that are not
-- deleted and their sizes, for the master's quotas; its row goes once the owner keeps nothing. It is not
-- the owners table: owners are written by every claim and join the turn when their first task becomes
-- claimable, usage changes only when a task is created, activated or deleted. Creates are counted by the
-- turn's insert trigger; updates by a row trigger whose WHEN leaves out every update but an activation, a
-- delete or a change of owner (claims, sweeps and reports never call it): those change one task a
-- statement, so there is no pile of row versions to avoid.
--
-- A tombstone keeps no owner (delete sets it to ''): the turn trigger counts only tasks whose owner stays,
-- and the usage trigger moves a task's claimable count when its owner changes. Tombstones of the past lose
-- their owner here; tasks stored before have size 0 (their size was never told to the database).
ALTER TABLE tasks ADD COLUMN size bigint NOT NULL DEFAULT 0;
UPDATE tasks SET owner = '' WHERE state = 5 AND owner <> '';

CREATE TABLE usage (
    owner text   PRIMARY KEY,
    tasks bigint NOT NULL,
    bytes bigint NOT NULL
);
INSERT INTO usage (owner, tasks, bytes)
    SELECT owner, count(*), 0 FROM tasks WHERE state <> 5 GROUP BY owner;
DELETE FROM owners WHERE queued = 0 AND owner NOT IN (SELECT owner FROM usage);

CREATE OR REPLACE FUNCTION tasks_count_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Owners seen for the first time (a task created pending, now activated) join the turn last.
    INSERT INTO owners (owner, queued, served)
        SELECT owner, 0, nextval('owners_served') FROM (
            SELECT DISTINCT n.owner FROM old_tasks AS b JOIN new_tasks AS n USING (id)
            WHERE b.owner = n.owner AND (b.state = 0 AND NOT b.pending AND b.retry_at IS NULL)
                <> (n.state = 0 AND NOT n.pending AND n.retry_at IS NULL)) AS fresh
        ORDER BY owner
    ON CONFLICT (owner) DO NOTHING;
    UPDATE owners AS o SET
        queued = o.queued + c.delta,
        served = CASE WHEN c.claimed THEN nextval('owners_served') ELSE o.served END
    FROM (
        SELECT n.owner,
            sum(CASE WHEN n.state = 0 AND NOT n.pending AND n.retry_at IS NULL THEN 1 ELSE -1 END) AS delta,
            bool_or(n.state = 1) AS claimed
        FROM old_tasks AS b JOIN new_tasks AS n USING (id)
        WHERE b.owner = n.owner AND (b.state = 0 AND NOT b.pending AND b.retry_at IS NULL)
            <> (n.state = 0 AND NOT n.pending AND n.retry_at IS NULL)
        GROUP BY n.owner) AS c
    WHERE o.owner = c.owner;
    RETURN NULL;
END
$$;

-- A create counts its task in its owner's usage in the statement trigger that counts it in the turn,
-- usage first (see below); over the transition table, so that a statement inserting many tasks of one
-- owner writes its usage row once.
CREATE OR REPLACE FUNCTION tasks_count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage AS u (owner, tasks, bytes)
        SELECT owner, count(*), sum(size) FROM new_tasks WHERE state <> 5
        GROUP BY owner ORDER BY owner
    ON CONFLICT (owner) DO UPDATE SET tasks = u.tasks + EXCLUDED.tasks, bytes = u.bytes + EXCLUDED.bytes;
    INSERT INTO owners AS o (owner, queued, served)
        SELECT owner, count(*), nextval('owners_served') FROM new_tasks
        WHERE state = 0 AND NOT pending AND retry_at IS NULL
        GROUP BY owner ORDER BY owner
    ON CONFLICT (owner) DO UPDATE SET queued = o.queued + EXCLUDED.queued;
    RETURN NULL;
END
$$;

-- tasks_usage_updated takes a task out of its old owner's usage (unless it was a tombstone) and into its
-- new owner's (unless it is one), moves its claimable count when its owner changes (a delete: the turn
-- trigger counts only tasks whose owner stays), and forgets an owner left with nothing, in the turn too
-- (its queued count is 0 then: a claimable task is kept). It locks usage rows before owners rows, as
-- every statement does (the turn triggers run after the row triggers), so that statements never wait
-- on each other in a circle.
CREATE FUNCTION tasks_usage_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    gone boolean := false;
BEGIN
    IF OLD.state <> 5 THEN
        UPDATE usage SET tasks = tasks - 1, bytes = bytes - OLD.size WHERE owner = OLD.owner;
        DELETE FROM usage WHERE owner = OLD.owner AND tasks <= 0;
        gone := FOUND;
    END IF;
    IF NEW.state <> 5 THEN
        INSERT INTO usage AS u (owner, tasks, bytes) VALUES (NEW.owner, 1, NEW.size)
        ON CONFLICT (owner) DO UPDATE SET tasks = u.tasks + 1, bytes = u.bytes + EXCLUDED.bytes;
    END IF;
    IF OLD.owner <> NEW.owner THEN
        IF OLD.state = 0 AND NOT OLD.pending AND OLD.retry_at IS NULL THEN
            UPDATE owners SET queued = queued - 1 WHERE owner = OLD.owner;
        END IF;
        IF NEW.state = 0 AND NOT NEW.pending AND NEW.retry_at IS NULL THEN
            INSERT INTO owners AS o (owner, queued, served) VALUES (NEW.owner, 1, nextval('owners_served'))
            ON CONFLICT (owner) DO UPDATE SET queued = o.queued + 1;
        END IF;
    END IF;
    IF gone THEN
        DELETE FROM owners WHERE owner = OLD.owner AND queued = 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_usage_updated AFTER UPDATE OF state, owner, size ON tasks
    FOR EACH ROW WHEN (OLD.owner <> NEW.owner OR (OLD.state = 5) <> (NEW.state = 5) OR OLD.size <> NEW.size)
    EXECUTE FUNCTION tasks_usage_updated();
