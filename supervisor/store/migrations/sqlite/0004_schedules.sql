-- Version 4: recurring schedules. A handler's SCHEDULE is recorded with its type, and
-- schedule_last_slot marks the newest slot fired (UTC): a supervisor fires a slot only by
-- moving this mark forward inside its write transaction, so each slot fires once.
ALTER TABLE task_types ADD COLUMN schedule TEXT;
ALTER TABLE task_types ADD COLUMN schedule_last_slot TEXT;
