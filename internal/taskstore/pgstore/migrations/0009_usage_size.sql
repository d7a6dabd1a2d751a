-- 9. A task's size changing alone (an activate) moves its owner's bytes in one statement, instead of
-- taking the task out of usage and putting it back, which on the way forgot the owner of a sole task (a
-- pending upload) in the turn too, so that it joined the turn last as if new.
CREATE OR REPLACE FUNCTION tasks_usage_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    gone boolean := false;
BEGIN
    IF OLD.owner = NEW.owner AND (OLD.state = 5) = (NEW.state = 5) THEN
        IF NEW.state <> 5 THEN
            UPDATE usage SET bytes = bytes + NEW.size - OLD.size WHERE owner = NEW.owner;
        END IF;
        RETURN NULL;
    END IF;
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
