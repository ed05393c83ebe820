-- Every statement the MySQL/MariaDB backend runs. Named blocks, loaded once by queries.py.
-- Parameters are pymysql's %(name)s; a Python tuple expands to a parenthesised list.
-- Times are the database clock, NOW(6); durations arrive as integer microseconds.
-- Fenced writes match only while the attempt is still this owner's:
--   id = %(id)s AND status = 'running' AND claimed_by = %(owner)s AND attempts = %(attempt)s
-- The connection uses CLIENT_FOUND_ROWS, so the row count is rows matched, not rows changed.

-- name: session_read_committed
SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED

-- name: session_lock_wait
SET SESSION innodb_lock_wait_timeout = %(lock_wait_s)s

-- name: tables
SELECT table_name AS name FROM information_schema.tables WHERE table_schema = DATABASE()

-- name: applied_migrations
SELECT version FROM schema_migrations

-- name: migration_lock
-- Per database: supervisors of two databases on one server do not wait for each other.
SELECT GET_LOCK(CONCAT('supervisor.migrate.', DATABASE()), %(wait_s)s) AS got

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INT UNSIGNED  NOT NULL,
    name       VARCHAR(255)  NOT NULL,
    applied_at DATETIME(6)   NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s)

-- name: enqueue
INSERT INTO tasks (type, task_options, priority, max_attempts, timeout_s, concurrency_key,
                   unique_key, run_at, deadline_at)
VALUES (
    %(type)s, %(options)s, %(priority)s, %(max_attempts)s, %(timeout_s)s, %(concurrency_key)s, %(unique_key)s,
    NOW(6) + INTERVAL %(delay_us)s MICROSECOND,
    NOW(6) + INTERVAL %(total_us)s MICROSECOND
)

-- name: live_unique
-- After a duplicate-key error (1062) on tasks_unique_live: the live task holding the key.
-- A locking read sees the latest committed row even inside a caller's REPEATABLE READ
-- transaction (enqueue_in_transaction), whose snapshot may predate it.
SELECT id FROM tasks
WHERE type = %(type)s AND live_unique_key = %(unique_key)s
LOCK IN SHARE MODE

-- name: claim_select
-- Types compare as bytes: the column's PAD SPACE collation would match 'echo ' to 'echo'.
-- Options over the size limit are not read at all (the parent fails the row, alone).
SELECT id, type, OCTET_LENGTH(task_options) AS options_bytes,
       CASE WHEN OCTET_LENGTH(task_options) <= %(max_options_bytes)s
            THEN task_options END AS task_options,
       attempts + 1 AS attempts, max_attempts, timeout_s, priority,
       TIMESTAMPDIFF(MICROSECOND, NOW(6), deadline_at) / 1000000.0 AS remaining_s
FROM tasks FORCE INDEX (tasks_claim)
WHERE status = 'queued'
  AND CAST(type AS BINARY) IN %(types)s
  AND run_at <= NOW(6)
  AND deadline_at > NOW(6)
ORDER BY priority, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: probe
-- A non-locking look, in autocommit: an idle supervisor polls with this one statement and
-- opens a claim transaction (BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT) only on a hit.
SELECT 1 AS found
FROM tasks FORCE INDEX (tasks_claim)
WHERE status = 'queued'
  AND CAST(type AS BINARY) IN %(types)s
  AND run_at <= NOW(6)
  AND deadline_at > NOW(6)
LIMIT 1

-- name: lock_task_type
-- Claims of a type with a concurrency limit are serialised across the fleet on the type's
-- row, held until the claim commits. This creates the row on first use and takes its
-- exclusive lock in one statement: INSERT IGNORE then SELECT ... FOR UPDATE would take a
-- shared lock on an existing row first, and two claimers upgrading shared locks deadlock.
INSERT INTO task_types (type) VALUES (%(type)s) ON DUPLICATE KEY UPDATE type = type

-- name: running_by_key
-- A plain read under READ COMMITTED sees every claim committed before this one took the
-- type's lock. Keys compare as bytes, as types do (PAD SPACE would merge 'a ' with 'a').
-- The (type, status) range of tasks_type_status holds only the type's running rows (a few,
-- at most the fleet's workers); their keys are read from the rows. An index that held the
-- key too would be written at every status change of every task, for this one read.
SELECT CAST(concurrency_key AS BINARY) AS concurrency_key, COUNT(*) AS count
FROM tasks FORCE INDEX (tasks_type_status)
WHERE type = %(type)s AND CAST(type AS BINARY) = %(type)s AND status = 'running'
GROUP BY CAST(concurrency_key AS BINARY)

-- name: claim_select_limited
-- claim_select for one type with a concurrency limit, under that type's lock; the key
-- comes back so the store keeps CONCURRENCY_PER_KEY. Keys already full are not even read:
-- no_full_keys is true when there are none (full_keys then holds a placeholder, as an
-- empty IN () is not SQL).
SELECT id, type, OCTET_LENGTH(task_options) AS options_bytes,
       CASE WHEN OCTET_LENGTH(task_options) <= %(max_options_bytes)s
            THEN task_options END AS task_options,
       attempts + 1 AS attempts, max_attempts, timeout_s, priority,
       TIMESTAMPDIFF(MICROSECOND, NOW(6), deadline_at) / 1000000.0 AS remaining_s,
       CAST(concurrency_key AS BINARY) AS concurrency_key
FROM tasks FORCE INDEX (tasks_claim)
WHERE status = 'queued'
  AND CAST(type AS BINARY) = %(type)s
  AND run_at <= NOW(6)
  AND deadline_at > NOW(6)
  AND (%(no_full_keys)s OR concurrency_key IS NULL
       OR CAST(concurrency_key AS BINARY) NOT IN %(full_keys)s)
ORDER BY priority, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: probe_limited
-- probe for one type with a concurrency limit that has room: is a task of a key with a
-- free slot runnable? Non-locking, in autocommit, like probe.
SELECT 1 AS found
FROM tasks FORCE INDEX (tasks_claim)
WHERE status = 'queued'
  AND CAST(type AS BINARY) = %(type)s
  AND run_at <= NOW(6)
  AND deadline_at > NOW(6)
  AND (%(no_full_keys)s OR concurrency_key IS NULL
       OR CAST(concurrency_key AS BINARY) NOT IN %(full_keys)s)
LIMIT 1

-- name: claim_update
-- Run once per group of claimed rows whose types share the claimer's defaults (usually one):
-- the type's MAX_ATTEMPTS and TIMEOUT fill what the row leaves NULL, and stay written; a
-- value the producer set wins.
UPDATE tasks
SET status = 'running',
    attempts = attempts + 1,
    claimed_by = %(owner)s,
    max_attempts = COALESCE(max_attempts, %(max_attempts)s),
    timeout_s = COALESCE(timeout_s, %(timeout_s)s),
    progress_pct = 0,
    -- A stack asked for during an earlier attempt is not this one's to answer.
    stack_requested_at = NULL,
    started_at = NOW(6),
    lease_expires_at = NOW(6) + INTERVAL %(lease_us)s MICROSECOND
WHERE id IN %(ids)s AND status = 'queued'

-- name: progress
UPDATE tasks
SET progress_pct = %(pct)s
WHERE id = %(id)s AND status = 'running' AND claimed_by = %(owner)s AND attempts = %(attempt)s

-- name: complete
UPDATE tasks
SET status = 'completed', failure = NULL, last_error = NULL, progress_pct = 100,
    lease_expires_at = NULL, completed_at = NOW(6),
    cpu_s = %(cpu_s)s, peak_rss_bytes = %(peak_rss_bytes)s, wall_s = %(wall_s)s
WHERE id = %(id)s AND status = 'running' AND claimed_by = %(owner)s AND attempts = %(attempt)s

-- name: complete_many
-- Each row's figures come from %(usage)s, a JSON object {"<id>": {c: cpu_s, r: peak_rss_bytes,
-- w: wall_s}} (a figure not measured is left out: a missing path reads NULL), looked up by the
-- row's own id. One statement however many rows, with the same WHERE (and plan: the batch's
-- primary keys) as a completion without figures; a JOIN on JSON_TABLE cost 8 percent more per batch.
UPDATE tasks
SET status = 'completed', failure = NULL, last_error = NULL, progress_pct = 100,
    lease_expires_at = NULL, completed_at = NOW(6),
    cpu_s = JSON_EXTRACT(%(usage)s, CONCAT('$."', id, '".c')),
    peak_rss_bytes = JSON_EXTRACT(%(usage)s, CONCAT('$."', id, '".r')),
    wall_s = JSON_EXTRACT(%(usage)s, CONCAT('$."', id, '".w'))
WHERE id IN %(ids)s AND status = 'running' AND claimed_by = %(owner)s
  AND (id, attempts) IN %(fences)s

-- name: lock_held
-- MySQL cannot say which rows an UPDATE matched: lock the ones still held, then update those.
SELECT id FROM tasks
WHERE id IN %(ids)s AND status = 'running' AND claimed_by = %(owner)s
  AND (id, attempts) IN %(fences)s
FOR UPDATE

-- name: fail
UPDATE tasks
SET status = 'failed', failure = %(failure)s, last_error = %(error)s,
    lease_expires_at = NULL, completed_at = NOW(6),
    cpu_s = %(cpu_s)s, peak_rss_bytes = %(peak_rss_bytes)s, wall_s = %(wall_s)s
WHERE id = %(id)s AND status = 'running' AND claimed_by = %(owner)s AND attempts = %(attempt)s

-- name: requeue
UPDATE tasks
SET status = 'queued', last_error = %(error)s, claimed_by = NULL, lease_expires_at = NULL,
    run_at = NOW(6) + INTERVAL %(delay_us)s MICROSECOND,
    cpu_s = %(cpu_s)s, peak_rss_bytes = %(peak_rss_bytes)s, wall_s = %(wall_s)s
WHERE id = %(id)s AND status = 'running' AND claimed_by = %(owner)s AND attempts = %(attempt)s

-- name: refund
UPDATE tasks
SET status = 'queued', attempts = attempts - 1, claimed_by = NULL, lease_expires_at = NULL,
    started_at = NULL, progress_pct = 0, run_at = NOW(6)
WHERE id = %(id)s AND status = 'running' AND claimed_by = %(owner)s AND attempts = %(attempt)s

-- name: renew_leases
UPDATE tasks
SET lease_expires_at = NOW(6) + INTERVAL %(lease_us)s MICROSECOND
WHERE id IN %(ids)s AND status = 'running' AND claimed_by = %(owner)s
  AND (id, attempts) IN %(fences)s

-- name: still_held
SELECT id FROM tasks
WHERE id IN %(ids)s AND status = 'running' AND claimed_by = %(owner)s
  AND (id, attempts) IN %(fences)s

-- name: cancelled_claims
-- Which of this owner's lost attempts an operator cancelled: cancel keeps claimed_by and
-- attempts, while a rescue clears claimed_by and a new claim bumps attempts.
SELECT id FROM tasks
WHERE id IN %(ids)s AND status = 'cancelled' AND claimed_by = %(owner)s
  AND (id, attempts) IN %(fences)s

-- name: rescue_lost_select
SELECT id, type FROM tasks
WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < NOW(6)) AND attempts >= COALESCE(max_attempts, 3)
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: rescue_lost
-- MySQL evaluates SET left to right: last_error reads claimed_by before it is changed.
UPDATE tasks
SET status = 'failed', failure = 'lost',
    last_error = CONCAT('lease of ', COALESCE(claimed_by, '?'), ' expired on the last attempt'),
    lease_expires_at = NULL, completed_at = NOW(6)
WHERE id IN %(ids)s AND status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < NOW(6))

-- name: rescue_requeue
UPDATE tasks
SET status = 'queued',
    last_error = CONCAT('lease of ', COALESCE(claimed_by, '?'), ' expired; attempt counted'),
    claimed_by = NULL, lease_expires_at = NULL, run_at = NOW(6)
WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < NOW(6)) AND attempts < COALESCE(max_attempts, 3)
LIMIT %(limit)s

-- name: expire_overdue_select
SELECT id, type FROM tasks
WHERE status = 'queued' AND deadline_at <= NOW(6)
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: expire_overdue
UPDATE tasks
SET status = 'failed', failure = 'expired',
    last_error = 'deadline passed before the task was dispatched',
    completed_at = NOW(6)
WHERE id IN %(ids)s AND status = 'queued' AND deadline_at <= NOW(6)

-- name: utc_now
SELECT UTC_TIMESTAMP(6) AS now

-- name: schedule_row
INSERT INTO task_types (type, schedule) VALUES (%(type)s, %(schedule)s)
ON DUPLICATE KEY UPDATE schedule = VALUES(schedule)

-- name: schedule_mark
SELECT schedule_last_slot FROM task_types WHERE type = %(type)s FOR UPDATE

-- name: schedule_advance
UPDATE task_types SET schedule_last_slot = %(slot)s WHERE type = %(type)s

-- name: type_paused
SELECT paused FROM task_types WHERE type = %(type)s

-- name: set_paused
-- SET runs left to right: paused_at reads the old paused, so a second pause keeps the first's
-- time, and a resume clears it.
INSERT INTO task_types (type, paused, paused_at)
VALUES (%(type)s, %(paused)s, IF(%(paused)s, NOW(6), NULL))
ON DUPLICATE KEY UPDATE
    paused_at = IF(VALUES(paused), IF(paused, paused_at, NOW(6)), NULL),
    paused = VALUES(paused)

-- name: paused_types
SELECT type FROM task_types WHERE paused = 1

-- name: type_infos
SELECT type, paused, paused_at, max_attempts, backoff, timeout_s, concurrency,
       concurrency_per_key, declared_by, declared_at, schedule, schedule_last_slot
FROM task_types
ORDER BY type

-- name: unique_holder
-- Another live task with the same type and unique key: a retry of this one would break it.
SELECT holder.id FROM tasks task
JOIN tasks holder
  ON holder.type = task.type AND holder.unique_key = task.unique_key AND holder.id <> task.id
WHERE task.id = %(id)s AND holder.status IN ('queued', 'running')

-- name: status_of
SELECT status FROM tasks WHERE id = %(id)s

-- name: cancel
UPDATE tasks
SET status = 'cancelled', failure = NULL, lease_expires_at = NULL,
    last_error = 'cancelled by an operator', completed_at = NOW(6)
WHERE id = %(id)s AND status IN ('queued', 'running')

-- name: retry
-- deadline_at is set before created_at-based arithmetic would see a new value: SET runs left
-- to right, and only deadline_at itself changes among the columns it reads.
UPDATE tasks
SET deadline_at = NOW(6) + INTERVAL TIMESTAMPDIFF(MICROSECOND, created_at, deadline_at) MICROSECOND,
    status = 'queued', failure = NULL, attempts = 0, progress_pct = 0,
    claimed_by = NULL, lease_expires_at = NULL, started_at = NULL, completed_at = NULL,
    run_at = NOW(6)
WHERE id = %(id)s AND status IN ('failed', 'cancelled')

-- name: prune
DELETE FROM tasks
WHERE status IN ('completed', 'failed', 'cancelled')
  AND completed_at < NOW(6) - INTERVAL %(older_than_us)s MICROSECOND
LIMIT %(limit)s

-- name: counts
-- A queued task waits from its run_at (a delayed one is not waiting before it is due; the
-- caller clamps a future run_at to 0); any other from its creation. Zero dates (left by a
-- permissive INSERT) are skipped: they would make the queue's head 2,000 years old.
SELECT type, status, COUNT(*) AS count,
       TIMESTAMPDIFF(MICROSECOND,
                     MIN(CASE WHEN status = 'queued' THEN NULLIF(run_at, '0000-00-00 00:00:00')
                              ELSE NULLIF(created_at, '0000-00-00 00:00:00') END),
                     NOW(6)) / 1000000.0 AS oldest_age_s
FROM tasks
GROUP BY type, status
ORDER BY type, status

-- name: live_counts
-- The queue-depth gauge and the web page: only queued and running rows, so its cost follows
-- the live queue, not the history the table keeps until pruned. The claim index holds status,
-- type and run_at, so the read never leaves it (reading created_at from each row took 0.44 s
-- for a 90,000-row backlog, against 0.06 s). Ages count from run_at, as in counts (for a
-- running task, from when it became due).
SELECT type, status, COUNT(*) AS count,
       TIMESTAMPDIFF(MICROSECOND, MIN(run_at), NOW(6)) / 1000000.0 AS oldest_age_s
FROM tasks FORCE INDEX (tasks_claim)
WHERE status IN ('queued', 'running')
GROUP BY type, status
ORDER BY type, status

-- name: get
SELECT * FROM tasks WHERE id = %(id)s

-- name: ping
SELECT 1

-- name: register_supervisor
INSERT INTO supervisors (id, host, pid, workers, version, started_at, heartbeat_at, expires_at)
VALUES (%(id)s, %(host)s, %(pid)s, %(workers)s, %(version)s,
        NOW(6), NOW(6), NOW(6) + INTERVAL %(ttl_us)s MICROSECOND)
ON DUPLICATE KEY UPDATE
    workers = VALUES(workers),
    heartbeat_at = VALUES(heartbeat_at),
    expires_at = VALUES(expires_at)

-- name: deregister_supervisor
DELETE FROM supervisors WHERE id = %(id)s

-- name: list_supervisors
SELECT id, host, pid, workers, version, started_at, heartbeat_at,
       expires_at > NOW(6) AS alive
FROM supervisors
ORDER BY host, started_at

-- name: forget_supervisors
DELETE FROM supervisors WHERE expires_at < NOW(6) - INTERVAL %(dead_us)s MICROSECOND

-- name: declared_by_other
-- Another live supervisor's declaration of this type, read before it is replaced (a warning).
SELECT t.max_attempts, t.backoff, t.timeout_s, t.concurrency, t.concurrency_per_key,
       t.declared_by
FROM task_types t JOIN supervisors s ON s.id = t.declared_by
WHERE t.type = %(type)s AND t.declared_by <> %(me)s AND s.expires_at > NOW(6)

-- name: declare_type
-- The policy columns and who declared them; an operator's pause is never touched.
-- declared_at always changes, so a repeated declaration still counts as a changed row.
INSERT INTO task_types (type, max_attempts, backoff, timeout_s, concurrency, concurrency_per_key,
                        declared_by, declared_at)
VALUES (%(type)s, %(max_attempts)s, %(backoff)s, %(timeout_s)s, %(concurrency)s,
        %(concurrency_per_key)s, %(me)s, NOW(6))
ON DUPLICATE KEY UPDATE
    max_attempts = VALUES(max_attempts),
    backoff = VALUES(backoff),
    timeout_s = VALUES(timeout_s),
    concurrency = VALUES(concurrency),
    concurrency_per_key = VALUES(concurrency_per_key),
    declared_by = VALUES(declared_by),
    declared_at = VALUES(declared_at)

-- name: find_tasks
-- The web page's listings and the bulk commands' pages. Every condition is off when its
-- parameter is NULL (pymysql inlines the values, so the optimizer folds the dead ones away).
-- Newest first by primary key: a keyset page (id < before) costs the same on every page;
-- min_id bounds how far back one page may look, however rare the matches.
-- Types compare as bytes as well: the column's PAD SPACE collation would match 'echo '.
SELECT id, type, status, failure, attempts, max_attempts, progress_pct, claimed_by,
       unique_key, SUBSTRING(last_error, 1, %(error_head)s) AS error_head,
       created_at, started_at, completed_at, deadline_at
FROM tasks
WHERE (%(type)s IS NULL OR (type = %(type)s AND CAST(type AS BINARY) = CAST(%(type)s AS BINARY)))
  AND (%(any_status)s = 1 OR status IN %(statuses)s)
  AND (%(failure)s IS NULL OR failure = %(failure)s)
  AND (%(since)s IS NULL OR COALESCE(completed_at, created_at) >= %(since)s)
  AND (%(until)s IS NULL OR COALESCE(completed_at, created_at) < %(until)s)
  AND (%(error_match)s IS NULL OR INSTR(last_error, %(error_match)s) > 0)
  AND (%(before_id)s IS NULL OR id < %(before_id)s)
  AND (%(min_id)s IS NULL OR id >= %(min_id)s)
ORDER BY id DESC
LIMIT %(limit)s

-- name: count_tasks
SELECT COUNT(*) AS count
FROM tasks
WHERE (%(type)s IS NULL OR (type = %(type)s AND CAST(type AS BINARY) = CAST(%(type)s AS BINARY)))
  AND (%(any_status)s = 1 OR status IN %(statuses)s)
  AND (%(failure)s IS NULL OR failure = %(failure)s)
  AND (%(since)s IS NULL OR COALESCE(completed_at, created_at) >= %(since)s)
  AND (%(until)s IS NULL OR COALESCE(completed_at, created_at) < %(until)s)
  AND (%(error_match)s IS NULL OR INSTR(last_error, %(error_match)s) > 0)

-- name: finished_counts
-- One status at a time keeps each branch a range of tasks_finished (status, completed_at).
SELECT type, status, COUNT(*) AS count
FROM tasks
WHERE status IN ('completed', 'failed', 'cancelled')
  AND completed_at >= NOW(6) - INTERVAL %(within_us)s MICROSECOND
GROUP BY type, status
ORDER BY type, status

-- name: retry_many
-- The bulk form of retry, for tasks without a unique key (those go one by one, see retry).
UPDATE tasks
SET deadline_at = NOW(6) + INTERVAL TIMESTAMPDIFF(MICROSECOND, created_at, deadline_at) MICROSECOND,
    status = 'queued', failure = NULL, attempts = 0, progress_pct = 0,
    claimed_by = NULL, lease_expires_at = NULL, started_at = NULL, completed_at = NULL,
    run_at = NOW(6)
WHERE id IN %(ids)s AND status IN ('failed', 'cancelled') AND unique_key IS NULL

-- name: cancel_many
UPDATE tasks
SET status = 'cancelled', failure = NULL, lease_expires_at = NULL,
    last_error = 'cancelled by an operator', completed_at = NOW(6)
WHERE id IN %(ids)s AND status IN ('queued', 'running')

-- name: request_stack
-- An operator asks for a running task's stack; the supervisor holding it answers within a
-- poll interval (task_controls), writing stack and stack_at (record_stack).
UPDATE tasks SET stack_requested_at = NOW(6)
WHERE id = %(id)s AND status = 'running'

-- name: stack_request_of
-- Read in the request's own transaction: the value it wrote, before any answer clears it.
SELECT status, claimed_by, stack_requested_at FROM tasks WHERE id = %(id)s

-- name: task_controls
-- What operators changed on the rows a supervisor runs: read by primary key, once per poll
-- interval while it runs any (a cancel, a rescue, a stack request).
SELECT id, status, claimed_by, attempts, stack_requested_at FROM tasks WHERE id IN %(ids)s

-- name: record_stack
-- Fenced like every worker's write, with the status the attempt is in: 'running' for a stack
-- on demand, 'cancelled' for the stack taken just before a cancelled task's child is killed
-- (a cancel keeps claimed_by and attempts).
UPDATE tasks
SET stack = %(stack)s, stack_at = NOW(6), stack_requested_at = NULL
WHERE id = %(id)s AND status = %(status)s AND claimed_by = %(owner)s AND attempts = %(attempt)s
