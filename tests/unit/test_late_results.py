"""A result that arrives once the parent has asked for the stack is a timeout, never a success.

The stack-dump signal (SIGUSR1, STACK_LEAD_S before the deadline) interrupts a
handler blocked in a C call such as libc ``sleep()``, which then returns early:
its ``done`` is a product of the supervisor's own signal, not of the handler
finishing its work in time.
"""

from __future__ import annotations

from supervisor.lifecycle import STACK_LEAD_S, Failure, Status
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import STACK_TEXT, Loop


def _at_stack_request(make_loop: MakeLoop) -> tuple[Loop, int, float]:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(budget_s=10)
    deadline = loop.clock() + 10
    loop.cycle()
    loop.advance_to(deadline - STACK_LEAD_S)
    loop.step()
    assert loop.child(0).stack_requests == 1
    return loop, task_id, deadline


def test_a_done_after_the_stack_request_is_recorded_as_timeout(make_loop: MakeLoop) -> None:
    loop, task_id, _ = _at_stack_request(make_loop)
    child = loop.child(0)
    child.say_done()
    loop.step()
    assert child.kills == 1
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.failure) == (Status.FAILED, Failure.TIMEOUT)
    assert row.last_error is not None and STACK_TEXT in row.last_error


def test_an_error_after_the_stack_request_is_recorded_as_timeout_not_retried(
    make_loop: MakeLoop,
) -> None:
    loop, task_id, _ = _at_stack_request(make_loop)
    child = loop.child(0)
    child.say_error("InterruptedError: [Errno 4] Interrupted system call")
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.failure) == (Status.FAILED, Failure.TIMEOUT)


def test_a_done_just_before_the_stack_request_still_completes(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(budget_s=10)
    deadline = loop.clock() + 10
    loop.cycle()
    loop.advance_to(deadline - STACK_LEAD_S - 0.001)
    loop.child(0).say_done()
    loop.step()
    loop.turn()
    assert loop.row(task_id).status is Status.COMPLETED
