-- Reads for supervisor.testing (enqueued, assert_enqueued, the pytest plugin's drain).
-- Kept apart from mysql.sql: they serve tests, never the supervisor.

-- name: tasks_of_type
SELECT * FROM tasks WHERE type = %(type)s ORDER BY id

-- name: all_tasks
SELECT * FROM tasks ORDER BY id
