-- 8. The upload's file name, to name the downloads ('' when the client gave none). A delete clears it.
ALTER TABLE tasks ADD COLUMN name text NOT NULL DEFAULT '';
