"""The store contract for stacks on demand and the owner's per-poll read of its running rows.

Every rule runs on SQLite, MariaDB and the memory store (the ``store`` fixture).
"""

from __future__ import annotations

import pytest

from supervisor.lifecycle import Status
from supervisor.store import Store, TaskControl
from tests.store.test_contract import (
    CLOCK_STEP_S,
    claim_one,
    db_now,
    elapse,
    enqueue,
    row,
    take_over,
)

STACK = 'Thread 0x01 (most recent call first):\n  File "h.py", line 3 in wait_for_the_disk'


def test_a_stack_request_on_a_running_task_is_recorded_with_the_database_time(
    store: Store,
) -> None:
    task_id = enqueue(store)
    claim = claim_one(store)
    now = db_now(store)
    request = store.request_stack(task_id)
    assert request.before is Status.RUNNING
    assert request.claimed_by == claim.owner == "A"
    assert request.requested_at is not None
    assert row(store, task_id).stack_requested_at == request.requested_at
    assert abs((request.requested_at - now).total_seconds()) < 5


@pytest.mark.parametrize("state", ["queued", "completed", "cancelled"])
def test_a_stack_request_on_a_task_that_does_not_run_changes_nothing(
    store: Store, state: str
) -> None:
    task_id = enqueue(store)
    if state != "queued":
        claim = claim_one(store)
        assert store.complete(claim) if state == "completed" else store.cancel(task_id).applied
    before = row(store, task_id)
    request = store.request_stack(task_id)
    assert (request.before, request.requested_at) == (Status(state), None)
    assert row(store, task_id) == before


def test_a_stack_request_on_an_unknown_task_finds_nothing(store: Store) -> None:
    request = store.request_stack(424242)
    assert (request.before, request.requested_at, request.claimed_by) == (None, None, None)


def test_record_stack_answers_the_request_fenced_by_owner_and_attempt(store: Store) -> None:
    task_id = enqueue(store)
    claim = claim_one(store)
    request = store.request_stack(task_id)
    assert request.requested_at is not None
    elapse(store, CLOCK_STEP_S * 2)
    assert store.record_stack(claim, STACK, status=Status.RUNNING)
    task = row(store, task_id)
    assert (task.stack, task.stack_requested_at) == (STACK, None)
    assert task.stack_at is not None and task.stack_at >= request.requested_at
    assert task.status is Status.RUNNING, "a stack changes nothing of the attempt"
    assert store.complete(claim)


def test_record_stack_of_a_lost_attempt_loses(store: Store) -> None:
    takeover = take_over(store, "B")
    assert not store.record_stack(takeover.stale, STACK, status=Status.RUNNING)
    assert row(store, takeover.current.id).stack is None


def test_record_stack_of_a_cancelled_attempt_needs_the_cancelled_status(store: Store) -> None:
    """The stack taken as a cancelled task is killed lands in the cancelled row, not elsewhere."""
    task_id = enqueue(store)
    claim = claim_one(store)
    assert store.cancel(task_id).applied
    assert not store.record_stack(claim, STACK, status=Status.RUNNING)
    assert store.record_stack(claim, STACK, status=Status.CANCELLED)
    task = row(store, task_id)
    assert (task.status, task.stack) == (Status.CANCELLED, STACK)
    other = enqueue(store)
    running = claim_one(store)
    assert running.id == other
    assert not store.record_stack(running, STACK, status=Status.CANCELLED)


def test_task_controls_read_the_rows_control_state_by_id(store: Store) -> None:
    takeover = take_over(store, "B")
    for _ in range(3):
        enqueue(store)
    held, wanted, cancelled = store.claim("A", ["t"], 10, 60.0)
    request = store.request_stack(wanted.id)
    assert store.cancel(cancelled.id).applied
    ids = [takeover.current.id, held.id, wanted.id, cancelled.id, 987654]
    controls = {c.id: c for c in store.task_controls(ids)}
    assert set(controls) == set(ids) - {987654}, "a missing row is left out"
    assert controls[held.id] == TaskControl(
        id=held.id, status=Status.RUNNING, claimed_by="A", attempts=1, stack_requested_at=None
    )
    assert controls[wanted.id].stack_requested_at == request.requested_at
    assert (controls[cancelled.id].status, controls[cancelled.id].claimed_by) == (
        Status.CANCELLED,
        "A",
    )
    taken = controls[takeover.current.id]
    assert (taken.claimed_by, taken.attempts) == ("B", takeover.current.attempt)
    assert store.task_controls([]) == []


def test_a_request_left_unanswered_by_an_attempt_is_not_the_next_attempts(store: Store) -> None:
    """The attempt ended (a retry) before its supervisor answered: the next claim clears the
    request, so the next owner does not take a stack nobody asked of its attempt."""
    task_id = enqueue(store)
    claim = claim_one(store)
    assert store.request_stack(task_id).requested_at is not None
    assert store.requeue(claim, 0.0, "RuntimeError: try again")
    assert row(store, task_id).stack_requested_at is not None, "unanswered while queued"
    claim_one(store)
    assert row(store, task_id).stack_requested_at is None
