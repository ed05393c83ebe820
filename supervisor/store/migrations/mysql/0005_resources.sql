-- Version 5: resource limits and accounting, and a running task's stack on demand.
--
-- failure 'memory': the task's child went over its handler's MAX_RSS and was killed
-- (terminal, like a panic: the same input would do it again). Appending to an ENUM and
-- adding NULL columns at the end are metadata-only changes (instant) on MySQL 8 and
-- MariaDB 10.4+, so this migration does not rewrite a large table.
--
-- cpu_s, peak_rss_bytes, wall_s: what the LAST attempt used (user + system CPU of the
-- child's tree, its peak resident memory, its wall-clock time), written with its outcome.
-- stack, stack_at: the last stack taken of the task's child (`supervisor stack ID`, a
-- cancel of a running task); stack_requested_at: an operator asked for one, and the
-- supervisor holding the task answers within a poll interval by writing stack and stack_at.
ALTER TABLE tasks
    MODIFY failure ENUM('error', 'panic', 'timeout', 'expired', 'lost', 'attempt_timeout',
                        'memory') NULL,
    ADD COLUMN cpu_s DOUBLE NULL,
    ADD COLUMN peak_rss_bytes BIGINT UNSIGNED NULL,
    ADD COLUMN wall_s DOUBLE NULL,
    ADD COLUMN stack MEDIUMTEXT NULL,
    ADD COLUMN stack_at DATETIME(6) NULL,
    ADD COLUMN stack_requested_at DATETIME(6) NULL;
