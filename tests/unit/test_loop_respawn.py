"""Children that die: replaced at once, unless they die before ``ready`` (then with backoff)."""

from __future__ import annotations

import signal

from supervisor.lifecycle import Failure, Status
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import STACK_TEXT


def test_a_child_that_dies_before_ready_is_respawned_after_half_a_second_then_doubling(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, ready=False)
    for delay in (0.5, 1.0, 2.0, 4.0):
        dying = loop.child(0)
        dying.exit(1)
        died_at = loop.clock()
        loop.step()
        assert 0 not in loop.sup.pool.children  # not at once
        assert loop.sup.pool.next_due() == died_at + delay
        loop.advance(delay - 0.01)
        loop.step()
        assert 0 not in loop.sup.pool.children
        loop.advance(0.01)
        loop.step()
        assert loop.spawner.spawned_at[-1] == (0, died_at + delay)
    assert loop.metric("supervisor_child_restarts_total", reason="startup_failed") == 4


def test_a_child_that_became_ready_resets_the_backoff(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, ready=False)
    for _ in range(3):
        loop.child(0).exit(1)
        loop.step()
        loop.advance_to(loop.sup.pool.next_due() or 0.0)
        loop.step()
    loop.child(0).say_ready()
    loop.step()
    loop.child(0).exit(1)
    loop.step()
    assert loop.sup.pool.next_due() is None  # replaced at once
    assert 0 in loop.sup.pool.children
    loop.child(0).exit(1)
    died_at = loop.clock()
    loop.step()
    assert loop.sup.pool.next_due() == died_at + 0.5


def test_the_backoff_is_capped(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, ready=False)
    delays = []
    for _ in range(10):
        loop.child(0).exit(1)
        died_at = loop.clock()
        loop.step()
        due = loop.sup.pool.next_due()
        assert due is not None
        delays.append(due - died_at)
        loop.advance_to(due)
        loop.step()
    assert delays[-1] == 30.0
    assert delays == sorted(delays)


def test_a_child_that_cannot_be_spawned_is_retried_with_backoff(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, start=False)
    loop.spawner.failures = 2
    loop.start(ready=False)
    assert loop.sup.pool.children == {}
    loop.advance(0.5)
    loop.step()
    assert loop.sup.pool.children == {}
    loop.advance(1.0)
    loop.step()
    assert list(loop.sup.pool.children) == [0]


def test_an_idle_child_that_dies_is_replaced_at_once(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2)
    gone = loop.child(1)
    gone.exit(by=signal.SIGSEGV)
    loop.step()
    assert loop.child(1) is not gone
    assert loop.logged("idle child died; replacing it")
    assert loop.metric("supervisor_child_restarts_total", reason="died_idle") == 1


def test_a_child_that_dies_mid_task_is_recorded_as_a_panic_with_its_crash_stack(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(max_attempts=3)
    loop.cycle()
    child = loop.child(0)
    child.say_progress(30)
    child.dump_path.write_text(STACK_TEXT)  # faulthandler's crash dump
    child.exit(by=signal.SIGKILL)  # not sent by the parent: the OOM killer
    loop.step()
    assert loop.child(0) is not child  # replaced at once
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.failure, row.progress_pct) == (Status.FAILED, Failure.PANIC, 30)
    assert row.last_error is not None
    assert row.last_error.startswith("panic: child process was killed by SIGKILL")
    assert "possibly out of memory" in row.last_error
    assert STACK_TEXT in row.last_error
    loop.step()
    assert loop.metric("supervisor_child_restarts_total", reason="panic") == 1


def test_a_report_written_just_before_the_exit_is_read_first(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.child(0).say_done()
    loop.child(0).exit(0)
    loop.step()
    loop.turn()
    assert loop.row(task_id).status is Status.COMPLETED


def test_a_long_report_written_just_before_the_exit_is_read_whole(make_loop: MakeLoop) -> None:
    # Longer than several socket reads: all of it is read before the child is reaped, or the
    # handler's error would be lost and the attempt recorded as a panic.
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.child(0).say_error("ValueError: " + "x" * 150_000, permanent=True)
    loop.child(0).exit(0)
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.failure) == (Status.FAILED, Failure.ERROR)
