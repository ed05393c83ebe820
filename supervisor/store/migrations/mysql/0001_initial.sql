-- Version 1: the tasks table and the supervisor registry, as the first release made them.
--
-- A plain  INSERT INTO tasks (type, task_options) VALUES ('resize', '{"path": "a.png"}')
-- is a complete enqueue: 3 attempts, run now, deadline one hour after creation.
-- Times come from the database clock (NOW(6)) in the server's time zone; every
-- comparison is made by the server, so supervisors on skewed hosts agree.

CREATE TABLE IF NOT EXISTS tasks (
    id               BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT,
    type             VARCHAR(64)      NOT NULL,
    status           ENUM('queued', 'running', 'completed', 'failed', 'cancelled')
                                      NOT NULL DEFAULT 'queued',
    task_options     MEDIUMTEXT       NULL,
    priority         INT              NOT NULL DEFAULT 0,
    attempts         INT UNSIGNED     NOT NULL DEFAULT 0,
    max_attempts     INT UNSIGNED     NOT NULL DEFAULT 3,
    progress_pct     TINYINT UNSIGNED NOT NULL DEFAULT 0,
    failure          ENUM('error', 'panic', 'timeout', 'expired', 'lost') NULL,
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
    PRIMARY KEY (id),
    -- The claim reads this index in ORDER BY order (status = 'queued', then
    -- priority, id) and filters type/run_at/deadline_at inside it: no filesort,
    -- and SKIP LOCKED only ever touches rows it is about to take.
    KEY tasks_claim (status, priority, id, type, run_at, deadline_at),
    KEY tasks_deadline (status, deadline_at),
    KEY tasks_lease (status, lease_expires_at),
    KEY tasks_finished (status, completed_at),
    KEY tasks_type_status (type, status, created_at)
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
