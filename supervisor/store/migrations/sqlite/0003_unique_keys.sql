-- Version 3: unique keys. At most one live (queued or running) task per (type, unique_key),
-- enforced by a partial unique index: once the task ends its key is free again.
ALTER TABLE tasks ADD COLUMN unique_key TEXT CHECK (length(unique_key) BETWEEN 1 AND 255);

CREATE UNIQUE INDEX tasks_unique_live ON tasks (type, unique_key)
WHERE status IN ('queued', 'running') AND unique_key IS NOT NULL;
