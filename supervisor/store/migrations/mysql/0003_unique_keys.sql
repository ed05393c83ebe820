-- Version 3: unique keys. At most one live (queued or running) task per (type, unique_key).
--
-- MySQL has no partial index, so live_unique_key holds the key only while the task is
-- live (NULL otherwise, and a unique index admits any number of NULLs): once the task
-- ends (completed, failed or cancelled) its key is free again. The database enforces it,
-- so a plain-SQL producer meets the same rule (error 1062).
ALTER TABLE tasks
    ADD COLUMN unique_key VARCHAR(255) NULL AFTER concurrency_key,
    ADD COLUMN live_unique_key VARCHAR(255)
        GENERATED ALWAYS AS (IF(status IN ('queued', 'running'), unique_key, NULL)) VIRTUAL
        AFTER unique_key,
    ADD UNIQUE KEY tasks_unique_live (type, live_unique_key);
