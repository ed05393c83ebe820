-- Version 4: recurring schedules. A handler's SCHEDULE is recorded with its type, and
-- schedule_last_slot marks the newest slot fired (in UTC): a supervisor fires a slot only
-- by moving this mark forward under the row's lock, so each slot fires once, fleet-wide.
ALTER TABLE task_types
    ADD COLUMN schedule VARCHAR(255) NULL AFTER concurrency_per_key,
    ADD COLUMN schedule_last_slot DATETIME(6) NULL AFTER schedule;
