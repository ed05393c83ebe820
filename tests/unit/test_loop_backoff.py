"""Retries: a handler's error is requeued with the configured backoff; the last attempt fails."""

from __future__ import annotations

from datetime import timedelta

from supervisor.lifecycle import Backoff, Failure, Status
from tests.unit.conftest import MakeLoop


def test_a_handler_error_is_requeued_with_the_configured_backoff_and_the_last_attempt_fails(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, backoff=Backoff((0.0, 5.0, 60.0)))
    [task_id] = loop.enqueue(max_attempts=3)

    loop.cycle()
    loop.child(0).say_error("ValueError: no such file")
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.attempts) == (Status.QUEUED, 1)
    assert row.run_at == loop.db_clock() + timedelta(seconds=5)  # the delay before attempt 2
    assert row.last_error is not None and row.last_error.startswith("ValueError: no such file")

    loop.advance(4.9)
    loop.cycle()
    assert loop.busy() == []  # not before its time
    loop.poll()
    assert loop.child(0).task().attempt == 2

    loop.child(0).say_error("ValueError: still no file")
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.attempts) == (Status.QUEUED, 2)
    assert row.run_at == loop.db_clock() + timedelta(seconds=60)  # the delay before attempt 3

    loop.advance(60)
    loop.poll()
    assert loop.child(0).task().attempt == 3
    loop.child(0).say_error("ValueError: gave up")
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.failure, row.attempts) == (Status.FAILED, Failure.ERROR, 3)
    assert row.last_error is not None and row.last_error.startswith("ValueError: gave up")
    loop.step()  # the loop learns what was recorded
    assert loop.metric("tasks_processed_total", type="echo", outcome="retried") == 2
    assert loop.metric("tasks_processed_total", type="echo", outcome="error") == 1


def test_the_last_delay_repeats_for_attempts_beyond_the_backoff_list(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, backoff=Backoff((0.0, 7.0)))
    [task_id] = loop.enqueue(max_attempts=5)
    for attempt in (1, 2, 3):
        loop.advance(7)
        loop.poll()
        assert loop.child(0).task().attempt == attempt
        loop.child(0).say_error()
        loop.step()
        loop.turn()
        assert loop.row(task_id).run_at == loop.db_clock() + timedelta(seconds=7)


def test_a_permanent_error_fails_the_task_without_a_retry(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(max_attempts=3)
    loop.cycle()
    loop.child(0).say_error("PermanentError: no path given", permanent=True)
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.failure, row.attempts) == (Status.FAILED, Failure.ERROR, 1)


def test_a_handler_error_is_logged_by_exception_type_only(make_loop: MakeLoop) -> None:
    """The message may quote the task's options; only the row's last_error holds it."""
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(max_attempts=2, options='{"secret": "hunter2"}')
    loop.cycle()
    loop.child(0).say_error("KeyError: hunter2")
    loop.step()
    loop.turn()
    loop.step()
    [retrying] = loop.logged("task failed; retrying")
    assert (retrying["task_id"], retrying["error"]) == (task_id, "KeyError")
    assert not any("hunter2" in repr(entry) for entry in loop.logs)
