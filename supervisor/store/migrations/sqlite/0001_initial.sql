-- Version 1: the tasks table and the supervisor registry, as the first release made them.
-- Timestamps are UTC text 'YYYY-MM-DD HH:MM:SS.SSS' from the database clock, so
-- they sort as they compare and a plain INSERT gets sound defaults.

CREATE TABLE IF NOT EXISTS tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    type             TEXT    NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
    status           TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    task_options     TEXT,
    priority         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
    progress_pct     INTEGER NOT NULL DEFAULT 0 CHECK (progress_pct BETWEEN 0 AND 100),
    failure          TEXT    CHECK (failure IN ('error', 'panic', 'timeout', 'expired', 'lost')),
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

-- The claim walks this index in ORDER BY order and filters type/run_at/deadline inside it.
CREATE INDEX IF NOT EXISTS tasks_claim ON tasks (status, priority, id, type, run_at, deadline_at);
CREATE INDEX IF NOT EXISTS tasks_deadline ON tasks (status, deadline_at);
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (status, lease_expires_at);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (status, completed_at);
CREATE INDEX IF NOT EXISTS tasks_type_status ON tasks (type, status, created_at);

-- The registry of supervisors: claimed_by is traced to a host and pid here, and
-- `status` lists the live fleet. A row is alive until expires_at (refreshed by
-- every heartbeat); dead rows are swept a day later.
CREATE TABLE IF NOT EXISTS supervisors (
    id           TEXT    PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    workers      INTEGER NOT NULL,
    version      TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    heartbeat_at TEXT    NOT NULL,
    expires_at   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS supervisors_expires ON supervisors (expires_at);
