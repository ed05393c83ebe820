"""Lost claims: a heartbeat that finds the lease gone kills the child and writes nothing."""

from __future__ import annotations

from supervisor.lifecycle import Status
from supervisor.stacks import STACK_READ_LEAD_S
from supervisor.store.memory import CANCELLED_ERROR
from tests.unit.conftest import MakeLoop

WRITES = {"complete", "complete_many", "fail", "requeue", "refund", "progress"}


def test_a_heartbeat_that_finds_the_lease_gone_kills_the_child_and_writes_nothing(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=30)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    loop.store.cancel(task_id)  # an operator cancels it: the lease cannot be renewed

    loop.advance(10)  # one heartbeat (lease / 3)
    mark = len(loop.store.log)
    loop.turn()
    loop.step()
    loop.advance(STACK_READ_LEAD_S)  # a cancelled task's stack is read, then its child killed
    loop.step()
    assert child.kills == 1
    loop.step()
    loop.poll()
    assert not WRITES & set(loop.store.log[mark:])
    row = loop.row(task_id)
    assert (row.status, row.last_error) == (Status.CANCELLED, CANCELLED_ERROR)
    assert loop.child(0) is not child  # replaced


def test_an_operators_cancel_of_a_running_task_is_counted_and_logged_cancelled_not_lost(
    make_loop: MakeLoop,
) -> None:
    """Item 21 of issue 10: a cancel is the operator's decision, not a fault of the fleet."""
    loop = make_loop(workers=1, lease_s=30)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.store.cancel(task_id)

    loop.advance(10)  # one heartbeat (lease / 3) finds the claim gone
    loop.turn()
    loop.step()
    loop.advance(STACK_READ_LEAD_S)
    loop.step()

    assert loop.metric("tasks_processed_total", type="echo", outcome="cancelled") == 1
    assert loop.metric("tasks_processed_total", type="echo", outcome="lost") == 0
    [event] = [e for e in loop.logs if e.get("task_id") == task_id and "outcome" in e]
    assert event["outcome"] == "cancelled"


def test_a_result_of_a_task_cancelled_meanwhile_is_discarded_as_cancelled(
    make_loop: MakeLoop,
) -> None:
    """The handler finished before a heartbeat noticed the cancel: its fence lost to the cancel."""
    loop = make_loop(workers=1, lease_s=30)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.store.cancel(task_id)
    loop.child(0).say_done()
    loop.step()
    loop.turn()
    loop.step()

    assert loop.row(task_id).status is Status.CANCELLED
    assert loop.metric("tasks_processed_total", type="echo", outcome="cancelled") == 1
    assert loop.metric("tasks_processed_total", type="echo", outcome="lost") == 0
    [event] = [e for e in loop.logs if e.get("task_id") == task_id and "outcome" in e]
    assert (event["outcome"], event["would_have_been"]) == ("cancelled", "completed")


def test_a_claim_rescued_by_another_supervisor_is_given_up(make_loop: MakeLoop) -> None:
    """This supervisor stalled past its lease; another rescued and re-claimed the task."""
    loop = make_loop(workers=1, lease_s=30)
    [task_id] = loop.enqueue(max_attempts=3)
    loop.cycle()
    child = loop.child(0)
    loop.advance(31)
    assert loop.store.rescue_expired(10).requeued == 1
    [theirs] = loop.store.claim("other-supervisor", ["echo"], 1, 30)

    loop.turn()
    loop.step()
    assert child.kills == 1
    loop.step()
    loop.poll()
    row = loop.row(task_id)
    assert (row.status, row.claimed_by, row.attempts) == (Status.RUNNING, "other-supervisor", 2)
    assert loop.store.complete(theirs)
    assert loop.metric("tasks_processed_total", type="echo", outcome="lost") == 1
    assert loop.metric("tasks_processed_total", type="echo", outcome="cancelled") == 0


def test_a_result_reported_before_the_loss_was_known_loses_its_fence(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, lease_s=30)
    [task_id] = loop.enqueue(max_attempts=3)
    loop.cycle()
    loop.advance(31)
    loop.store.rescue_expired(10)
    loop.store.claim("other-supervisor", ["echo"], 1, 30)
    loop.child(0).say_done()
    loop.step()
    loop.turn()  # the heartbeat finds the claim gone; the completion is written, fenced
    loop.step()
    row = loop.row(task_id)
    assert (row.status, row.claimed_by) == (Status.RUNNING, "other-supervisor")
    [discarded] = loop.logged(
        "result discarded: the claim was lost (rescued or cancelled elsewhere)"
    )
    assert discarded["would_have_been"] == "completed"
    assert loop.metric("tasks_processed_total", type="echo", outcome="lost") == 1


def test_a_lost_claim_waiting_in_the_backlog_is_dropped(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, lease_s=30)
    [task_id] = loop.enqueue()
    loop.step()
    loop.turn()  # claimed ...
    loop.sup.handle_sighup()  # ... while the only child is being replaced
    loop.step()
    assert len(loop.sup.attempts.backlog) == 1
    loop.store.cancel(task_id)
    loop.advance(10)
    loop.turn()
    loop.step()
    assert not loop.sup.attempts.backlog
