-- Version 2: policy declared by handler files, concurrency limits, pause and resume.
--
-- Additive: a supervisor of version 1 keeps working beside this schema. It never
-- writes the new columns, and it leaves alone the rows it cannot read the way it
-- used to (max_attempts NULL: its claim treats them as runnable but its rescue
-- conditions compare NULL, so only a version 2 supervisor rescues them).
--
-- max_attempts NULL: "the handler's MAX_ATTEMPTS, else 3". A value a producer
-- set explicitly stays and beats the handler's. The claim writes the effective
-- value into the row, so a running row is self-describing: a supervisor that
-- lacks the handler file still rescues it correctly.
-- timeout_s: the per-attempt limit (TIMEOUT); NULL means the handler's, else none.
-- concurrency_key: tasks sharing a key count against CONCURRENCY_PER_KEY together.
ALTER TABLE tasks
    MODIFY max_attempts INT UNSIGNED NULL DEFAULT NULL,
    MODIFY failure ENUM('error', 'panic', 'timeout', 'expired', 'lost', 'attempt_timeout') NULL,
    ADD COLUMN timeout_s DOUBLE NULL AFTER max_attempts,
    ADD COLUMN concurrency_key VARCHAR(255) NULL AFTER timeout_s;

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
    declared_by         VARCHAR(255)  NULL,
    declared_at         DATETIME(6)   NULL,
    PRIMARY KEY (type)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
