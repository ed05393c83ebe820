-- The complete current schema for MySQL 8.0.13+ / MariaDB 10.6+, for creating a NEW
-- database by hand (`mysql app < schema.sql`; idempotent: safe to run again). It equals
-- the result of every migration under migrations/mysql/ (a test proves it) and records
-- their versions, so a supervisor finds nothing to migrate. To upgrade a database that
-- already holds tasks, run `python -m supervisor migrate` (or just start a supervisor).
--
-- A plain  INSERT INTO tasks (type, task_options) VALUES ('resize', '{"path": "a.png"}')
-- is a complete enqueue: the handler's policy (else 3 attempts), run now, deadline one
-- hour after creation. Times come from the database clock (NOW(6)) in the server's time
-- zone; every comparison is made by the server, so supervisors on skewed hosts agree.

CREATE TABLE IF NOT EXISTS tasks (
    id               BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT,
    type             VARCHAR(64)      NOT NULL,
    status           ENUM('queued', 'running', 'completed', 'failed', 'cancelled')
                                      NOT NULL DEFAULT 'queued',
    task_options     MEDIUMTEXT       NULL,
    priority         INT              NOT NULL DEFAULT 0,
    attempts         INT UNSIGNED     NOT NULL DEFAULT 0,
    -- NULL: the handler's MAX_ATTEMPTS, else 3; the claim writes the effective value.
    max_attempts     INT UNSIGNED     NULL DEFAULT NULL,
    -- The per-attempt limit in seconds; NULL: the handler's TIMEOUT, else none.
    timeout_s        DOUBLE           NULL,
    -- Tasks sharing a key count against their handler's CONCURRENCY_PER_KEY together.
    concurrency_key  VARCHAR(255)     NULL,
    -- At most one live (queued or running) task per (type, unique_key): live_unique_key
    -- holds the key only while the task is live, and a unique index admits many NULLs.
    unique_key       VARCHAR(255)     NULL,
    live_unique_key  VARCHAR(255)
        GENERATED ALWAYS AS (IF(status IN ('queued', 'running'), unique_key, NULL)) VIRTUAL,
    progress_pct     TINYINT UNSIGNED NOT NULL DEFAULT 0,
    failure          ENUM('error', 'panic', 'timeout', 'expired', 'lost', 'attempt_timeout',
                          'memory') NULL,
    last_error       TEXT             NULL,
    claimed_by       VARCHAR(255)     NULL,
    created_at       DATETIME(6)      NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    run_at           DATETIME(6)      NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    deadline_at      DATETIME(6)      NOT NULL DEFAULT (CURRENT_TIMESTAMP(6) + INTERVAL 1 HOUR),
    started_at       DATETIME(6)      NULL,
    completed_at     DATETIME(6)      NULL,
    lease_expires_at DATETIME(6)      NULL,
    updated_at       DATETIME(6)      NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                                      ON UPDATE CURRENT_TIMESTAMP(6),
    -- What the last attempt used: CPU of the child's tree, peak resident memory, wall time.
    cpu_s              DOUBLE           NULL,
    peak_rss_bytes     BIGINT UNSIGNED  NULL,
    wall_s             DOUBLE           NULL,
    -- The last stack taken of the task's running child, and an operator's pending request.
    stack              MEDIUMTEXT       NULL,
    stack_at           DATETIME(6)      NULL,
    stack_requested_at DATETIME(6)      NULL,
    PRIMARY KEY (id),
    -- The claim reads this index in ORDER BY order (status = 'queued', then
    -- priority, id) and filters type/run_at/deadline_at inside it: no filesort,
    -- and SKIP LOCKED only ever touches rows it is about to take.
    KEY tasks_claim (status, priority, id, type, run_at, deadline_at),
    KEY tasks_deadline (status, deadline_at),
    KEY tasks_lease (status, lease_expires_at),
    KEY tasks_finished (status, completed_at),
    -- Also where a claim of a type with a concurrency limit counts its running tasks.
    KEY tasks_type_status (type, status, created_at),
    UNIQUE KEY tasks_unique_live (type, live_unique_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The registry of supervisors: claimed_by is traced to a host and pid here, and
-- `status` lists the live fleet. A row is alive until expires_at (refreshed by
-- every heartbeat); dead rows are swept a day later.
CREATE TABLE IF NOT EXISTS supervisors (
    id           VARCHAR(255)  NOT NULL,
    host         VARCHAR(255)  NOT NULL,
    pid          INT UNSIGNED  NOT NULL,
    workers      INT UNSIGNED  NOT NULL,
    version      VARCHAR(32)   NOT NULL,
    started_at   DATETIME(6)   NOT NULL,
    heartbeat_at DATETIME(6)   NOT NULL,
    expires_at   DATETIME(6)   NOT NULL,
    PRIMARY KEY (id),
    KEY supervisors_expires (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- What the fleet knows about a task type: whether an operator paused it, and the policy
-- its handler file declares (written by each supervisor that has the file, at start and
-- on reload; declared_by names the last one). A claim of a type with a concurrency limit
-- locks the type's row here, so claims of that type are serialised across the fleet
-- while every other type claims without it.
CREATE TABLE IF NOT EXISTS task_types (
    type                VARCHAR(64)   NOT NULL,
    paused              TINYINT(1)    NOT NULL DEFAULT 0,
    paused_at           DATETIME(6)   NULL,
    max_attempts        INT UNSIGNED  NULL,
    backoff             VARCHAR(255)  NULL,
    timeout_s           DOUBLE        NULL,
    concurrency         INT UNSIGNED  NULL,
    concurrency_per_key INT UNSIGNED  NULL,
    -- A handler's SCHEDULE, and the newest slot fired (UTC): a slot fires only by moving
    -- this mark forward under the row's lock, so each slot fires once, fleet-wide.
    schedule            VARCHAR(255)  NULL,
    schedule_last_slot  DATETIME(6)   NULL,
    declared_by         VARCHAR(255)  NULL,
    declared_at         DATETIME(6)   NULL,
    PRIMARY KEY (type)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Which migrations are applied, and when.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INT UNSIGNED  NOT NULL,
    name       VARCHAR(255)  NOT NULL,
    applied_at DATETIME(6)   NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Each version is recorded only when the tables really have its shape and the version
-- before it is recorded, so a version is never claimed for a table this file did not make.
INSERT IGNORE INTO schema_migrations (version, name) VALUES (1, 'initial');
INSERT IGNORE INTO schema_migrations (version, name)
SELECT 2, 'scheduling_control' FROM schema_migrations WHERE version = 1 AND EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = 'tasks' AND column_name = 'timeout_s');
INSERT IGNORE INTO schema_migrations (version, name)
SELECT 3, 'unique_keys' FROM schema_migrations WHERE version = 2 AND EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = 'tasks' AND column_name = 'unique_key');
INSERT IGNORE INTO schema_migrations (version, name)
SELECT 4, 'schedules' FROM schema_migrations WHERE version = 3 AND EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = 'task_types' AND column_name = 'schedule');
INSERT IGNORE INTO schema_migrations (version, name)
SELECT 5, 'resources' FROM schema_migrations WHERE version = 4 AND EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = 'tasks' AND column_name = 'stack');
