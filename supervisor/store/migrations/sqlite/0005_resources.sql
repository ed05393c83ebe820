-- Version 5: resource limits and accounting, and a running task's stack on demand.
--
-- failure 'memory': the task's child went over its handler's MAX_RSS and was killed
-- (terminal, like a panic). cpu_s, peak_rss_bytes, wall_s: what the LAST attempt used
-- (CPU of the child's tree, its peak resident memory, its wall-clock time), written with
-- its outcome. stack, stack_at: the last stack taken of the task's child;
-- stack_requested_at: an operator asked for one (`supervisor stack ID`).
--
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt (inside the
-- migration's one transaction), its rows copied with their ids and the AUTOINCREMENT
-- high-water mark carried over, as version 2 did.
CREATE TABLE tasks_v5 (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    type               TEXT    NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
    status             TEXT    NOT NULL DEFAULT 'queued'
                       CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    task_options       TEXT,
    priority           INTEGER NOT NULL DEFAULT 0,
    attempts           INTEGER NOT NULL DEFAULT 0,
    max_attempts       INTEGER CHECK (max_attempts BETWEEN 1 AND 100),
    timeout_s          REAL    CHECK (timeout_s > 0),
    concurrency_key    TEXT    CHECK (length(concurrency_key) BETWEEN 1 AND 255),
    progress_pct       INTEGER NOT NULL DEFAULT 0 CHECK (progress_pct BETWEEN 0 AND 100),
    failure            TEXT    CHECK (failure IN ('error', 'panic', 'timeout', 'expired', 'lost',
                                                  'attempt_timeout', 'memory')),
    last_error         TEXT,
    claimed_by         TEXT,
    created_at         TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    run_at             TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    deadline_at        TEXT    NOT NULL
                       DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now', '+3600 seconds')),
    started_at         TEXT,
    completed_at       TEXT,
    lease_expires_at   TEXT,
    updated_at         TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    unique_key         TEXT    CHECK (length(unique_key) BETWEEN 1 AND 255),
    cpu_s              REAL,
    peak_rss_bytes     INTEGER,
    wall_s             REAL,
    stack              TEXT,
    stack_at           TEXT,
    stack_requested_at TEXT
);

INSERT INTO tasks_v5 (id, type, status, task_options, priority, attempts, max_attempts,
                      timeout_s, concurrency_key, progress_pct, failure, last_error,
                      claimed_by, created_at, run_at, deadline_at, started_at, completed_at,
                      lease_expires_at, updated_at, unique_key)
SELECT id, type, status, task_options, priority, attempts, max_attempts,
       timeout_s, concurrency_key, progress_pct, failure, last_error,
       claimed_by, created_at, run_at, deadline_at, started_at, completed_at,
       lease_expires_at, updated_at, unique_key
FROM tasks;

DELETE FROM sqlite_sequence WHERE name = 'tasks_v5';
INSERT INTO sqlite_sequence (name, seq) SELECT 'tasks_v5', seq FROM sqlite_sequence WHERE name = 'tasks';

DROP TABLE tasks;
ALTER TABLE tasks_v5 RENAME TO tasks;

CREATE INDEX tasks_claim ON tasks (status, priority, id, type, run_at, deadline_at);
CREATE INDEX tasks_deadline ON tasks (status, deadline_at);
CREATE INDEX tasks_lease ON tasks (status, lease_expires_at);
CREATE INDEX tasks_finished ON tasks (status, completed_at);
CREATE INDEX tasks_type_status ON tasks (type, status, created_at);
CREATE UNIQUE INDEX tasks_unique_live ON tasks (type, unique_key)
WHERE status IN ('queued', 'running') AND unique_key IS NOT NULL;
