-- 4. Cancelled tasks (state 4) and deleted tasks' tombstones (state 5).
--
-- A deleted task keeps its row, stripped of what the client gave, so that ids stay consecutive (Counts'
-- total stays the id counter), a repeated delete is told from one of an id that never existed, and a
-- worker that still holds the task is refused. Both kinds are few next to finished tasks: an index of
-- them lets Counts leave them out of the finished without reading the table.
ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check CHECK (state BETWEEN 0 AND 5);
CREATE INDEX tasks_gone ON tasks (state) WHERE state >= 4;
