"""The decisions on one read of a supervisor's running rows (supervisor.controls)."""

from __future__ import annotations

from datetime import datetime

from supervisor.controls import STACK_REASK_S, StackAsks, judge
from supervisor.lifecycle import Status
from supervisor.records import Claim
from supervisor.store import TaskControl

AT = datetime(2026, 1, 1, 12, 0, 0)
LATER = datetime(2026, 1, 1, 12, 0, 5)


def claim(task_id: int, attempt: int = 1) -> Claim:
    return Claim(
        id=task_id,
        type="t",
        options=None,
        attempt=attempt,
        max_attempts=3,
        owner="A",
        remaining_s=60.0,
    )


def control(
    task_id: int,
    status: Status = Status.RUNNING,
    owner: str | None = "A",
    attempts: int = 1,
    requested: datetime | None = None,
) -> TaskControl:
    return TaskControl(
        id=task_id, status=status, claimed_by=owner, attempts=attempts, stack_requested_at=requested
    )


def test_judge_tells_ours_cancelled_rescued_retaken_and_gone_apart() -> None:
    claims = [claim(i) for i in range(1, 7)]
    rows = [
        control(1),
        control(2, requested=AT),
        control(3, Status.CANCELLED),
        control(4, Status.QUEUED, owner=None),  # rescued
        control(5, attempts=2),  # rescued and claimed again by us: a newer attempt
        # 6: gone
    ]
    verdict = judge("A", claims, rows)
    assert verdict.cancelled == {3}
    assert verdict.lost == {4, 5, 6}
    assert dict(verdict.stacks) == {2: AT}


def test_a_cancel_of_someone_elses_attempt_is_a_loss_not_our_cancel() -> None:
    verdict = judge("A", [claim(1)], [control(1, Status.CANCELLED, owner="B")])
    assert (verdict.lost, verdict.cancelled) == ({1}, frozenset())


def test_a_pending_request_is_passed_on_once_then_again_only_if_still_pending_later() -> None:
    asks = StackAsks()
    assert asks.due({1: AT}, now=0.0) == {1}
    assert asks.due({1: AT}, now=0.5) == frozenset()
    assert asks.due({1: AT}, now=STACK_REASK_S) == {1}
    assert asks.due({1: LATER}, now=STACK_REASK_S + 0.1) == {1}, "a newer request goes at once"
    assert asks.due({}, now=STACK_REASK_S + 0.2) == frozenset()
    assert asks.due({1: LATER}, now=STACK_REASK_S + 0.3) == {1}, "answered, then asked again"
