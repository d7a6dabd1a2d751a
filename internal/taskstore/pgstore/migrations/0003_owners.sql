-- 3. Owners take turns (fair claims).
--
-- owners holds, per owner, how many of its tasks are claimable (queued: the rows of the claimable
-- index) and the sequence number of its latest claim (served). A row trigger keeps both in the
-- statement that changes a task, whichever statement it is, under the owner row's lock. Claim walks
-- the turn index (least recently served first, among owners with work) and takes the first owner with
-- a claimable task nobody is claiming, then that owner's lowest id in the claimable index, now keyed
-- by (owner, id): index descents, however many tasks and owners wait; it steps past an owner only
-- when all of its claimable tasks are being claimed by others. Tasks created before this step belong
-- to owner ''. Creating the claimable index reads the table once.
ALTER TABLE tasks ADD COLUMN owner text NOT NULL DEFAULT '';

CREATE TABLE owners (
    owner  text   PRIMARY KEY,
    queued bigint NOT NULL,
    served bigint NOT NULL
);
CREATE SEQUENCE owners_served;
CREATE INDEX owners_turn ON owners (served, owner) WHERE queued > 0;

DROP INDEX tasks_claimable;
CREATE INDEX tasks_claimable ON tasks (owner, id) WHERE state = 0 AND NOT pending AND retry_at IS NULL;
INSERT INTO owners (owner, queued, served)
    SELECT '', count(*), 0 FROM tasks WHERE state = 0 AND NOT pending AND retry_at IS NULL;

-- The triggers count tasks in or out of their owner's queued as they become claimable or stop being
-- so, and mark an owner served when one of its tasks is claimed; an owner seen for the first time
-- joins the turn last, as if just served, so owners that waited go first. They run once per
-- statement over its transition tables and write each owner's row once: a statement that changes
-- many tasks of one owner (a sweep of lapsed leases, a bulk requeue) would otherwise pile up a version
-- of the row per task, which each next write walks. Two statements that change several owners each
-- (concurrent sweeps) may deadlock on the rows; PostgreSQL aborts one, which is a transient error.
CREATE FUNCTION tasks_count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO owners AS o (owner, queued, served)
        SELECT owner, count(*), nextval('owners_served') FROM new_tasks
        WHERE state = 0 AND NOT pending AND retry_at IS NULL
        GROUP BY owner ORDER BY owner
    ON CONFLICT (owner) DO UPDATE SET queued = o.queued + EXCLUDED.queued;
    RETURN NULL;
END
$$;

CREATE FUNCTION tasks_count_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Owners seen for the first time (a task created pending, now activated) join the turn last.
    INSERT INTO owners (owner, queued, served)
        SELECT owner, 0, nextval('owners_served') FROM (
            SELECT DISTINCT n.owner FROM old_tasks AS b JOIN new_tasks AS n USING (id)
            WHERE (b.state = 0 AND NOT b.pending AND b.retry_at IS NULL)
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
        WHERE (b.state = 0 AND NOT b.pending AND b.retry_at IS NULL)
            <> (n.state = 0 AND NOT n.pending AND n.retry_at IS NULL)
        GROUP BY n.owner) AS c
    WHERE o.owner = c.owner;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_count_inserted AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_count_inserted();
CREATE TRIGGER tasks_count_updated AFTER UPDATE ON tasks REFERENCING OLD TABLE AS old_tasks NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_count_updated();
