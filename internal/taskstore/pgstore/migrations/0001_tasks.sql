-- 1. The task table, its gap-free id counter and the wake-up function.
--
-- Times come from the store's clock, never from now(), so tests can drive lease expiry; NULL means
-- "zero time". The partial indexes hold only the rows the hot statements look for, so claiming,
-- sweeping lapsed leases and counting stay cheap however many finished tasks accumulate.

-- Ids are consecutive from 0 with no gaps: Create takes the next one from this single row in its own
-- transaction, so a rolled-back Create gives its id back (a sequence would not), and concurrent
-- Creates, from any number of instances, queue on the row lock.
CREATE TABLE task_ids (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_id   bigint NOT NULL
);
INSERT INTO task_ids (next_id) VALUES (0);

-- Every write of a claim, a finish or a lease renewal touches an indexed column, so none is a HOT
-- update; vacuuming after 2% rather than 20% of the table changed keeps dead entries from piling up
-- at the head of the small queue indexes once the table holds millions of finished tasks.
CREATE TABLE tasks (
    id           bigint      PRIMARY KEY,
    state        smallint    NOT NULL CHECK (state BETWEEN 0 AND 3),
    pending      boolean     NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL,
    token        bigint      NOT NULL DEFAULT 0,
    op           text        NOT NULL DEFAULT '',
    error        text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    lease_until  timestamptz
) WITH (autovacuum_vacuum_scale_factor = 0.02);

-- Claim walks this in id order with FOR UPDATE SKIP LOCKED.
CREATE INDEX tasks_claimable ON tasks (id) WHERE state = 0 AND NOT pending;
-- Claim's sweep of lapsed leases, and Counts' in-progress part.
CREATE INDEX tasks_lease ON tasks (lease_until) WHERE state = 1;
-- ExpirePending: the few uploads still waiting.
CREATE INDEX tasks_pending ON tasks (created_at) WHERE pending AND state < 2;
-- Counts tells failed from finished without reading the table: failed tasks are few.
CREATE INDEX tasks_failed ON tasks (id) WHERE state = 3;

-- tasks_wake tells the other instances' Watch that a task became claimable, when claimable is true,
-- and returns claimable. Statements call it in RETURNING, where the new row is known; NOTIFY is
-- delivered at commit and folds repeats within a transaction into one.
CREATE FUNCTION tasks_wake(claimable boolean, channel text, origin text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF claimable THEN
        PERFORM pg_notify(channel, origin);
    END IF;
    RETURN claimable;
END
$$;
