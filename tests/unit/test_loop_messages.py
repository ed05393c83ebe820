"""What children say: progress (throttled), reports on tasks they do not hold, broken lines."""

from __future__ import annotations

from supervisor.lifecycle import Failure, Status
from supervisor.protocol import DoneMessage
from tests.unit.conftest import MakeLoop


def test_progress_is_written_at_most_once_a_second_per_task(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    child.say_progress(10)
    loop.step()
    loop.turn()
    assert loop.row(task_id).progress_pct == 10
    child.say_progress(20)
    child.say_progress(30)
    loop.step()
    loop.advance(0.5)
    loop.turn()
    assert loop.row(task_id).progress_pct == 10
    loop.advance(0.25)
    loop.turn()
    assert loop.row(task_id).progress_pct == 10, "not yet a second since the last write"
    loop.advance(0.25)
    loop.turn()
    assert loop.row(task_id).progress_pct == 30  # the latest value, once
    assert loop.store.calls["progress"] == 2


def test_a_report_on_a_task_the_child_does_not_hold_is_ignored(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.child(0).say(DoneMessage(id=task_id + 100))
    loop.step()
    assert loop.child(0).running is not None
    assert loop.logged("child reported on a task it does not hold; ignored")


def test_a_malformed_line_kills_the_child_and_records_a_panic(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    child.say_raw(b"this is not json\n")
    loop.step()
    assert child.kills == 1
    loop.step()
    assert loop.child(0) is not child
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.failure) == (Status.FAILED, Failure.PANIC)
    assert row.last_error is not None
    assert row.last_error.startswith("child sent a malformed message")


def test_a_child_that_closes_its_socket_is_watched_until_it_exits(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    child = loop.child(0)
    child.peer.shutdown(2)  # SHUT_RDWR: EOF for the parent, the process lives on
    loop.step()
    assert loop.child(0) is child
    child.exit(0)
    loop.step()
    assert loop.child(0) is not child
