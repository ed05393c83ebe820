-- Every statement the SQLite backend runs. Named blocks, loaded once by queries.py.
-- "now" below is the database clock: strftime('%Y-%m-%d %H:%M:%f', 'now') in UTC;
-- SQLite returns the same 'now' for every use within one statement.
-- Fenced writes match only while the attempt is still this owner's:
--   id = :id AND status = 'running' AND claimed_by = :owner AND attempts = :attempt

-- name: tables
SELECT name FROM sqlite_master WHERE type = 'table'

-- name: applied_migrations
SELECT version FROM schema_migrations

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
)

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES (:version, :name)

-- name: enqueue
INSERT INTO tasks (type, task_options, priority, max_attempts, timeout_s, concurrency_key,
                   unique_key, run_at, deadline_at)
VALUES (
    :type, :options, :priority, :max_attempts, :timeout_s, :concurrency_key, :unique_key,
    strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || :delay_s || ' seconds'),
    strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || (:delay_s + :budget_s) || ' seconds')
)
-- A live task holding the same (type, unique_key) makes this insert nothing (the partial
-- unique index tasks_unique_live); the caller then reads that task's id (live_unique).
ON CONFLICT DO NOTHING

-- name: live_unique
SELECT id FROM tasks
WHERE type = :type AND unique_key = :unique_key AND status IN ('queued', 'running')

-- name: claim_batch
UPDATE tasks
SET status = 'running',
    attempts = attempts + 1,
    claimed_by = :owner,
    -- Policy: the claimer's defaults by type (:defaults, JSON {type: [max_attempts, timeout_s]})
    -- fill what the row leaves NULL, and stay written; a value the producer set wins.
    max_attempts = COALESCE(
        max_attempts,
        (SELECT json_extract(value, '$[0]') FROM json_each(:defaults) WHERE key = tasks.type),
        3),
    timeout_s = COALESCE(
        timeout_s,
        (SELECT json_extract(value, '$[1]') FROM json_each(:defaults) WHERE key = tasks.type)),
    progress_pct = 0,
    stack_requested_at = NULL,  -- a request of an earlier attempt is not this one's to answer
    started_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    lease_expires_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || :lease_s || ' seconds'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id IN (
    SELECT id FROM tasks INDEXED BY tasks_claim
    WHERE status = 'queued'
      AND type IN (SELECT value FROM json_each(:types))
      AND run_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')
      AND deadline_at > strftime('%Y-%m-%d %H:%M:%f', 'now')
    ORDER BY priority, id
    LIMIT :limit
)
-- Rows may hold anything (plain SQL is a supported producer): text is returned as bytes, so
-- one non-UTF-8 value cannot fail the fetch (and with it every claim); options over the size
-- limit are not read at all; an unparseable deadline gives remaining_s NULL. The parent
-- fails such a row alone (sql.row_to_claim).
RETURNING id, CAST(type AS BLOB) AS type, typeof(task_options) AS options_kind,
          length(CAST(task_options AS BLOB)) AS options_bytes,
          CASE WHEN length(CAST(task_options AS BLOB)) <= :max_options_bytes
               THEN CAST(task_options AS BLOB) END AS task_options,
          attempts, max_attempts, timeout_s, CAST(priority AS INTEGER) AS priority,
          (julianday(deadline_at) - julianday('now')) * 86400.0 AS remaining_s

-- name: probe
SELECT 1 AS found
FROM tasks INDEXED BY tasks_claim
WHERE status = 'queued'
  AND type IN (SELECT value FROM json_each(:types))
  AND run_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')
  AND deadline_at > strftime('%Y-%m-%d %H:%M:%f', 'now')
LIMIT 1

-- name: running_by_key
-- The claim runs in BEGIN IMMEDIATE, which serialises every writer of the file: the count
-- and the claim that follows it cannot interleave with another supervisor's claim.
-- The (type, status) range of tasks_type_status holds only the type's running rows (a few,
-- at most the fleet's workers); their keys are read from the rows. An index that held the
-- key too would be written at every status change of every task, for this one read.
SELECT CAST(concurrency_key AS BLOB) AS concurrency_key, COUNT(*) AS count
FROM tasks INDEXED BY tasks_type_status
WHERE type = :type AND status = 'running'
GROUP BY concurrency_key

-- name: claim_candidates
-- What claim_batch would take, read first when a type with a concurrency limit is among
-- the claimed types: the store keeps the limits, then claims the chosen ids with claim_ids.
-- Keys already full are not even read: no_full_keys is true when there are none.
SELECT id, CAST(priority AS INTEGER) AS priority, type,
       CAST(concurrency_key AS BLOB) AS concurrency_key
FROM tasks INDEXED BY tasks_claim
WHERE status = 'queued'
  AND type IN (SELECT value FROM json_each(:types))
  AND run_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')
  AND deadline_at > strftime('%Y-%m-%d %H:%M:%f', 'now')
  AND (:no_full_keys OR concurrency_key IS NULL
       OR concurrency_key NOT IN (SELECT value FROM json_each(:full_keys)))
ORDER BY priority, id
LIMIT :limit

-- name: probe_limited
-- probe for one type with a concurrency limit that has room: is a task of a key with a
-- free slot runnable?
SELECT 1 AS found
FROM tasks INDEXED BY tasks_claim
WHERE status = 'queued'
  AND type = :type
  AND run_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')
  AND deadline_at > strftime('%Y-%m-%d %H:%M:%f', 'now')
  AND (:no_full_keys OR concurrency_key IS NULL
       OR concurrency_key NOT IN (SELECT value FROM json_each(:full_keys)))
LIMIT 1

-- name: claim_ids
-- claim_batch for ids chosen by the store (see claim_candidates): the same SET and RETURNING.
UPDATE tasks
SET status = 'running',
    attempts = attempts + 1,
    claimed_by = :owner,
    max_attempts = COALESCE(
        max_attempts,
        (SELECT json_extract(value, '$[0]') FROM json_each(:defaults) WHERE key = tasks.type),
        3),
    timeout_s = COALESCE(
        timeout_s,
        (SELECT json_extract(value, '$[1]') FROM json_each(:defaults) WHERE key = tasks.type)),
    progress_pct = 0,
    stack_requested_at = NULL,  -- a request of an earlier attempt is not this one's to answer
    started_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    lease_expires_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || :lease_s || ' seconds'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'queued'
RETURNING id, CAST(type AS BLOB) AS type, typeof(task_options) AS options_kind,
          length(CAST(task_options AS BLOB)) AS options_bytes,
          CASE WHEN length(CAST(task_options AS BLOB)) <= :max_options_bytes
               THEN CAST(task_options AS BLOB) END AS task_options,
          attempts, max_attempts, timeout_s, CAST(priority AS INTEGER) AS priority,
          (julianday(deadline_at) - julianday('now')) * 86400.0 AS remaining_s

-- name: progress
UPDATE tasks
SET progress_pct = :pct, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND status = 'running' AND claimed_by = :owner AND attempts = :attempt

-- name: complete
UPDATE tasks
SET status = 'completed', failure = NULL, last_error = NULL, progress_pct = 100,
    lease_expires_at = NULL,
    completed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    cpu_s = :cpu_s, peak_rss_bytes = :peak_rss_bytes, wall_s = :wall_s
WHERE id = :id AND status = 'running' AND claimed_by = :owner AND attempts = :attempt

-- name: complete_many
-- :usage is a JSON array of {i: id, a: attempt, c: cpu_s, r: peak_rss_bytes, w: wall_s} (a
-- figure not measured is left out: NULL): each row's fence and figures, read once and joined
-- on the primary key. The unary + on status keeps the planner off the status index: it would
-- visit every running row and scan the array for each, where this looks each entry up by id.
UPDATE tasks
SET status = 'completed', failure = NULL, last_error = NULL, progress_pct = 100,
    lease_expires_at = NULL,
    completed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    cpu_s = used.u_cpu_s, peak_rss_bytes = used.u_peak_rss_bytes, wall_s = used.u_wall_s
FROM (
    SELECT json_extract(value, '$.i') AS u_id, json_extract(value, '$.a') AS u_attempt,
           json_extract(value, '$.c') AS u_cpu_s, json_extract(value, '$.r') AS u_peak_rss_bytes,
           json_extract(value, '$.w') AS u_wall_s
    FROM json_each(:usage)
) AS used
WHERE tasks.id = used.u_id AND tasks.attempts = used.u_attempt
  AND +status = 'running' AND claimed_by = :owner
RETURNING id

-- name: fail
UPDATE tasks
SET status = 'failed', failure = :failure, last_error = :error,
    lease_expires_at = NULL,
    completed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    cpu_s = :cpu_s, peak_rss_bytes = :peak_rss_bytes, wall_s = :wall_s
WHERE id = :id AND status = 'running' AND claimed_by = :owner AND attempts = :attempt

-- name: requeue
UPDATE tasks
SET status = 'queued', last_error = :error, claimed_by = NULL, lease_expires_at = NULL,
    run_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || :delay_s || ' seconds'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    cpu_s = :cpu_s, peak_rss_bytes = :peak_rss_bytes, wall_s = :wall_s
WHERE id = :id AND status = 'running' AND claimed_by = :owner AND attempts = :attempt

-- name: refund
UPDATE tasks
SET status = 'queued', attempts = attempts - 1, claimed_by = NULL, lease_expires_at = NULL,
    started_at = NULL, progress_pct = 0,
    run_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND status = 'running' AND claimed_by = :owner AND attempts = :attempt

-- name: renew_leases
UPDATE tasks
SET lease_expires_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || :lease_s || ' seconds'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE status = 'running' AND claimed_by = :owner
  AND (id, attempts) IN (
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:fences)
  )
RETURNING id

-- name: cancelled_claims
-- Which of this owner's lost attempts an operator cancelled: cancel keeps claimed_by and
-- attempts, while a rescue clears claimed_by and a new claim bumps attempts.
SELECT id FROM tasks
WHERE status = 'cancelled' AND claimed_by = :owner
  AND (id, attempts) IN (
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:fences)
  )

-- name: rescue_lost
UPDATE tasks
SET status = 'failed', failure = 'lost',
    last_error = 'lease of ' || coalesce(claimed_by, '?') || ' expired on the last attempt',
    lease_expires_at = NULL,
    completed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id IN (
    SELECT id FROM tasks
    WHERE status = 'running'
      AND (lease_expires_at IS NULL OR lease_expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now'))
      AND attempts >= COALESCE(max_attempts, 3)
    LIMIT :limit
)
RETURNING type

-- name: rescue_requeue
UPDATE tasks
SET status = 'queued',
    last_error = 'lease of ' || coalesce(claimed_by, '?') || ' expired; attempt counted',
    claimed_by = NULL, lease_expires_at = NULL,
    run_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id IN (
    SELECT id FROM tasks
    WHERE status = 'running'
      AND (lease_expires_at IS NULL OR lease_expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now'))
      AND attempts < COALESCE(max_attempts, 3)
    LIMIT :limit
)

-- name: expire_overdue
UPDATE tasks
SET status = 'failed', failure = 'expired',
    last_error = 'deadline passed before the task was dispatched',
    completed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id IN (
    SELECT id FROM tasks
    WHERE status = 'queued' AND deadline_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')
    LIMIT :limit
)
RETURNING type

-- name: utc_now
SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now

-- name: schedule_row
INSERT INTO task_types (type, schedule) VALUES (:type, :schedule)
ON CONFLICT (type) DO UPDATE SET schedule = excluded.schedule

-- name: schedule_mark
SELECT schedule_last_slot FROM task_types WHERE type = :type

-- name: schedule_advance
UPDATE task_types SET schedule_last_slot = :slot WHERE type = :type

-- name: type_paused
SELECT paused FROM task_types WHERE type = :type

-- name: set_paused
-- Every SET expression reads the old row: a second pause keeps the first's time.
INSERT INTO task_types (type, paused, paused_at)
VALUES (:type, :paused, CASE WHEN :paused THEN strftime('%Y-%m-%d %H:%M:%f', 'now') END)
ON CONFLICT (type) DO UPDATE SET
    paused_at = CASE WHEN excluded.paused
                     THEN CASE WHEN paused THEN paused_at
                               ELSE strftime('%Y-%m-%d %H:%M:%f', 'now') END END,
    paused = excluded.paused

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
WHERE task.id = :id AND holder.status IN ('queued', 'running')

-- name: status_of
SELECT status FROM tasks WHERE id = :id

-- name: cancel
UPDATE tasks
SET status = 'cancelled', failure = NULL, lease_expires_at = NULL,
    last_error = 'cancelled by an operator',
    completed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND status IN ('queued', 'running')

-- name: retry
UPDATE tasks
SET status = 'queued', failure = NULL, attempts = 0, progress_pct = 0,
    claimed_by = NULL, lease_expires_at = NULL, started_at = NULL, completed_at = NULL,
    deadline_at = strftime('%Y-%m-%d %H:%M:%f', 'now',
        '+' || ((julianday(deadline_at) - julianday(created_at)) * 86400.0) || ' seconds'),
    run_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND status IN ('failed', 'cancelled')

-- name: prune
DELETE FROM tasks
WHERE id IN (
    SELECT id FROM tasks
    WHERE status IN ('completed', 'failed', 'cancelled')
      AND completed_at < strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || :older_than_s || ' seconds')
    LIMIT :limit
)

-- name: counts
-- A queued task waits from its run_at (a delayed one is not waiting before it is due; the
-- caller clamps a future run_at to 0); any other from its creation. julianday() of text that
-- is no date (a zero date a plain INSERT left) is NULL, which min() skips.
SELECT type, status, count(*) AS count,
       (julianday('now')
        - min(julianday(CASE WHEN status = 'queued' THEN run_at ELSE created_at END)))
       * 86400.0 AS oldest_age_s
FROM tasks
GROUP BY type, status
ORDER BY type, status

-- name: live_counts
-- The queue-depth gauge and the web page: only queued and running rows, so its cost follows
-- the live queue. Ages count from run_at, as in counts (for a running task, from when it
-- became due), which the claim index holds.
SELECT type, status, count(*) AS count,
       (julianday('now') - julianday(min(run_at))) * 86400.0 AS oldest_age_s
FROM tasks
WHERE status IN ('queued', 'running')
GROUP BY type, status
ORDER BY type, status

-- name: get
SELECT * FROM tasks WHERE id = :id

-- name: ping
SELECT 1

-- name: register_supervisor
INSERT INTO supervisors (id, host, pid, workers, version, started_at, heartbeat_at, expires_at)
VALUES (
    :id, :host, :pid, :workers, :version,
    strftime('%Y-%m-%d %H:%M:%f', 'now'),
    strftime('%Y-%m-%d %H:%M:%f', 'now'),
    strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || :ttl_s || ' seconds')
)
ON CONFLICT (id) DO UPDATE SET
    workers = excluded.workers,
    heartbeat_at = excluded.heartbeat_at,
    expires_at = excluded.expires_at

-- name: deregister_supervisor
DELETE FROM supervisors WHERE id = :id

-- name: list_supervisors
SELECT id, host, pid, workers, version, started_at, heartbeat_at,
       expires_at > strftime('%Y-%m-%d %H:%M:%f', 'now') AS alive
FROM supervisors
ORDER BY host, started_at

-- name: forget_supervisors
DELETE FROM supervisors
WHERE expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || :dead_s || ' seconds')

-- name: declared_by_other
-- Another live supervisor's declaration of this type, read before it is replaced (a warning).
SELECT t.max_attempts, t.backoff, t.timeout_s, t.concurrency, t.concurrency_per_key,
       t.declared_by
FROM task_types t JOIN supervisors s ON s.id = t.declared_by
WHERE t.type = :type AND t.declared_by <> :me
  AND s.expires_at > strftime('%Y-%m-%d %H:%M:%f', 'now')

-- name: declare_type
-- The policy columns and who declared them; an operator's pause is never touched.
INSERT INTO task_types (type, max_attempts, backoff, timeout_s, concurrency, concurrency_per_key,
                        declared_by, declared_at)
VALUES (:type, :max_attempts, :backoff, :timeout_s, :concurrency, :concurrency_per_key,
        :me, strftime('%Y-%m-%d %H:%M:%f', 'now'))
ON CONFLICT (type) DO UPDATE SET
    max_attempts = excluded.max_attempts,
    backoff = excluded.backoff,
    timeout_s = excluded.timeout_s,
    concurrency = excluded.concurrency,
    concurrency_per_key = excluded.concurrency_per_key,
    declared_by = excluded.declared_by,
    declared_at = excluded.declared_at

-- name: find_tasks
-- The web page's listings and the bulk commands' pages. Every condition is off when its
-- parameter is NULL. Newest first by rowid: a keyset page (id < before) costs the same on
-- every page; min_id bounds how far back one page may look, however rare the matches. INSTR is case-sensitive, as on MySQL (LIKE would not be, here).
SELECT id, type, status, failure, attempts, max_attempts, progress_pct, claimed_by,
       unique_key, substr(last_error, 1, :error_head) AS error_head,
       created_at, started_at, completed_at, deadline_at
FROM tasks
WHERE (:type IS NULL OR type = :type)
  AND (:any_status = 1 OR status IN (SELECT value FROM json_each(:statuses_json)))
  AND (:failure IS NULL OR failure = :failure)
  AND (:since IS NULL OR coalesce(completed_at, created_at) >= :since)
  AND (:until IS NULL OR coalesce(completed_at, created_at) < :until)
  AND (:error_match IS NULL OR instr(last_error, :error_match) > 0)
  AND (:before_id IS NULL OR id < :before_id)
  AND (:min_id IS NULL OR id >= :min_id)
ORDER BY id DESC
LIMIT :limit

-- name: count_tasks
SELECT count(*) AS count
FROM tasks
WHERE (:type IS NULL OR type = :type)
  AND (:any_status = 1 OR status IN (SELECT value FROM json_each(:statuses_json)))
  AND (:failure IS NULL OR failure = :failure)
  AND (:since IS NULL OR coalesce(completed_at, created_at) >= :since)
  AND (:until IS NULL OR coalesce(completed_at, created_at) < :until)
  AND (:error_match IS NULL OR instr(last_error, :error_match) > 0)

-- name: finished_counts
SELECT type, status, count(*) AS count
FROM tasks
WHERE status IN ('completed', 'failed', 'cancelled')
  AND completed_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || :within_s || ' seconds')
GROUP BY type, status
ORDER BY type, status

-- name: retry_many
-- The bulk form of retry, for tasks without a unique key (those go one by one, see retry).
UPDATE tasks
SET status = 'queued', failure = NULL, attempts = 0, progress_pct = 0,
    claimed_by = NULL, lease_expires_at = NULL, started_at = NULL, completed_at = NULL,
    deadline_at = strftime('%Y-%m-%d %H:%M:%f', 'now',
        '+' || ((julianday(deadline_at) - julianday(created_at)) * 86400.0) || ' seconds'),
    run_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id IN (SELECT value FROM json_each(:ids_json))
  AND status IN ('failed', 'cancelled') AND unique_key IS NULL

-- name: cancel_many
UPDATE tasks
SET status = 'cancelled', failure = NULL, lease_expires_at = NULL,
    last_error = 'cancelled by an operator',
    completed_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id IN (SELECT value FROM json_each(:ids_json)) AND status IN ('queued', 'running')

-- name: request_stack
-- An operator asks for a running task's stack; the supervisor holding it answers within a
-- poll interval (task_controls), writing stack and stack_at (record_stack).
UPDATE tasks
SET stack_requested_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND status = 'running'

-- name: stack_request_of
-- Read in the request's own transaction: the value it wrote, before any answer clears it.
SELECT status, claimed_by, stack_requested_at FROM tasks WHERE id = :id

-- name: task_controls
-- What operators changed on the rows a supervisor runs: read by primary key, once per poll
-- interval while it runs any (a cancel, a rescue, a stack request).
SELECT id, status, claimed_by, attempts, stack_requested_at FROM tasks
WHERE id IN (SELECT value FROM json_each(:ids_json))

-- name: record_stack
-- Fenced like every worker's write, with the status the attempt is in: 'running' for a stack
-- on demand, 'cancelled' for the stack taken just before a cancelled task's child is killed
-- (a cancel keeps claimed_by and attempts).
UPDATE tasks
SET stack = :stack, stack_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
    stack_requested_at = NULL, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = :id AND status = :status AND claimed_by = :owner AND attempts = :attempt
