"""Deadlines: an attempt past its deadline is killed and recorded ``timeout``, its stack first."""

from __future__ import annotations

from supervisor.lifecycle import STACK_LEAD_S, Failure, Status
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import STACK_TEXT


def test_an_attempt_past_its_deadline_is_killed_and_recorded_as_timeout_with_its_stack(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(budget_s=10)
    claimed_at = loop.clock()
    loop.cycle()
    child = loop.child(0)
    deadline = claimed_at + 10
    assert child.task().remaining_s == 10
    assert loop.sup.attempts.next_due() == deadline - STACK_LEAD_S

    loop.advance_to(deadline - STACK_LEAD_S - 0.001)
    loop.step()
    assert child.stack_requests == 0
    loop.advance_to(deadline - STACK_LEAD_S)
    loop.step()
    assert child.stack_requests == 1  # STACK_LEAD_S before the kill
    assert loop.sup.attempts.next_due() == deadline

    loop.advance_to(deadline - 0.001)
    loop.step()
    assert child.kills == 0
    loop.advance_to(deadline)
    loop.step()
    assert (child.kills, child.stack_requests) == (1, 1)
    assert loop.logged("deadline reached; killing the child's tree")

    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.failure) == (Status.FAILED, Failure.TIMEOUT)
    assert row.last_error is not None
    assert row.last_error.startswith("timeout: the wall-clock budget ran out after 10.000 s")
    assert STACK_TEXT in row.last_error


def test_a_killed_child_is_replaced_at_once(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    loop.enqueue(budget_s=10)
    loop.cycle()
    killed = loop.child(0)
    loop.advance(10)
    loop.step()
    loop.step()  # its exit
    assert loop.child(0) is not killed
    assert loop.spawner.spawned_at[-1] == (0, loop.clock())
    assert loop.metric("supervisor_child_restarts_total", reason="timeout") == 1


def test_the_deadline_counts_from_the_claim_not_from_the_dispatch(make_loop: MakeLoop) -> None:
    """The budget was measured by the database when the claim was made."""
    loop = make_loop(workers=1)
    loop.enqueue(budget_s=10)
    claimed_at = loop.clock()
    loop.step()
    loop.turn()
    loop.advance(3)  # the loop takes the claim later
    loop.step()
    child = loop.child(0)
    assert child.task().remaining_s == 7
    assert child.running is not None and child.running.deadline == claimed_at + 10


def test_a_claim_whose_deadline_passed_before_dispatch_fails_as_expired(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(budget_s=1)
    loop.step()
    loop.turn()
    loop.advance(1)
    loop.step()
    assert loop.busy() == []
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.failure) == (Status.FAILED, Failure.EXPIRED)
