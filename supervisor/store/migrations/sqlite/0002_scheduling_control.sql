-- Version 2: policy declared by handler files, concurrency limits, pause and resume.
--
-- max_attempts NULL: "the handler's MAX_ATTEMPTS, else 3"; timeout_s: the per-attempt
-- limit (TIMEOUT); concurrency_key: tasks sharing a key count against
-- CONCURRENCY_PER_KEY together. SQLite cannot change a column's constraints in place,
-- so the table is rebuilt (inside the migration's one transaction) and its rows copied
-- with their ids; the AUTOINCREMENT high-water mark is carried over, so an id is never
-- handed out twice.
CREATE TABLE tasks_v2 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    type             TEXT    NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
    status           TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    task_options     TEXT,
    priority         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER CHECK (max_attempts BETWEEN 1 AND 100),
    timeout_s        REAL    CHECK (timeout_s > 0),
    concurrency_key  TEXT    CHECK (length(concurrency_key) BETWEEN 1 AND 255),
    progress_pct     INTEGER NOT NULL DEFAULT 0 CHECK (progress_pct BETWEEN 0 AND 100),
    failure          TEXT    CHECK (failure IN ('error', 'panic', 'timeout', 'expired', 'lost',
                                                'attempt_timeout')),
    last_error       TEXT,
    claimed_by       TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    run_at           TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    deadline_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now', '+3600 seconds')),
    started_at       TEXT,
    completed_at     TEXT,
    lease_expires_at TEXT,
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

INSERT INTO tasks_v2 (id, type, status, task_options, priority, attempts, max_attempts,
                      progress_pct, failure, last_error, claimed_by, created_at, run_at,
                      deadline_at, started_at, completed_at, lease_expires_at, updated_at)
SELECT id, type, status, task_options, priority, attempts, max_attempts,
       progress_pct, failure, last_error, claimed_by, created_at, run_at,
       deadline_at, started_at, completed_at, lease_expires_at, updated_at
FROM tasks;

DELETE FROM sqlite_sequence WHERE name = 'tasks_v2';
INSERT INTO sqlite_sequence (name, seq) SELECT 'tasks_v2', seq FROM sqlite_sequence WHERE name = 'tasks';

DROP TABLE tasks;
ALTER TABLE tasks_v2 RENAME TO tasks;

CREATE INDEX tasks_claim ON tasks (status, priority, id, type, run_at, deadline_at);
CREATE INDEX tasks_deadline ON tasks (status, deadline_at);
CREATE INDEX tasks_lease ON tasks (status, lease_expires_at);
CREATE INDEX tasks_finished ON tasks (status, completed_at);
CREATE INDEX tasks_type_status ON tasks (type, status, created_at);

-- What the fleet knows about a task type: whether an operator paused it, and the policy
-- its handler file declares (written by each supervisor that has the file, at start and
-- on reload; declared_by names the last one).
CREATE TABLE task_types (
    type                TEXT    PRIMARY KEY,
    paused              INTEGER NOT NULL DEFAULT 0,
    paused_at           TEXT,
    max_attempts        INTEGER,
    backoff             TEXT,
    timeout_s           REAL,
    concurrency         INTEGER,
    concurrency_per_key INTEGER,
    declared_by         TEXT,
    declared_at         TEXT
);
