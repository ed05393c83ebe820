"""Attempts with a stand-in pool and link: which claims are dispatched, which go back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from supervisor.attempts import Attempts
from supervisor.lifecycle import Backoff
from supervisor.records import Claim
from supervisor.results import PendingResult
from supervisor.workers import ChildState, Running

LEASE_S = 3.0


class FakeChild:
    def __init__(self) -> None:
        self.pid = 4242
        self.state = ChildState.IDLE
        self.running: Running | None = None
        self.sent: list[Any] = []

    def start(self, running: Running) -> None:
        self.state, self.running = ChildState.BUSY, running

    def send(self, message: Any) -> bool:
        self.sent.append(message)
        return True


class FakePool:
    def __init__(self, children: list[FakeChild]) -> None:
        self.children = children

    def idle(self) -> list[FakeChild]:
        return [c for c in self.children if c.state is ChildState.IDLE]

    def busy(self) -> list[FakeChild]:
        return [c for c in self.children if c.state is ChildState.BUSY]


class FakeLink:
    def __init__(self) -> None:
        self.submitted: list[PendingResult] = []

    def submit(self, result: PendingResult) -> None:
        self.submitted.append(result)


class FakeTelemetry:
    def dispatched(self, claim: Claim, pid: int) -> None:
        pass


def claim(task_id: int) -> Claim:
    return Claim(
        id=task_id, type="t", options=None, attempt=1, max_attempts=3, owner="A", remaining_s=60
    )


def test_a_claim_held_past_a_heartbeat_interval_is_refunded_not_run() -> None:
    """A supervisor stopped past its lease wakes with a claim it never dispatched.

    The lease may have run out and the task be running elsewhere: running it
    here as well would execute it twice. It goes back (fenced) instead.
    """
    now = [100.0]
    child = FakeChild()
    link = FakeLink()
    attempts = Attempts(
        pool=FakePool([child]),  # type: ignore[arg-type]
        link=link,  # type: ignore[arg-type]
        telemetry=FakeTelemetry(),  # type: ignore[arg-type]
        backoff=Backoff(),
        handlers=lambda: {"t": Path("t.py")},
        policies=dict,
        fresh_s=LEASE_S / 3,
        clock=lambda: now[0],
    )
    attempts.claimed((claim(1),), claimed_at=now[0] - 5.0)  # claimed, then SIGSTOP for 5 s
    assert child.state is ChildState.IDLE and not child.sent
    assert [(r.claim.id, r.refund) for r in link.submitted] == [(1, True)]

    attempts.claimed((claim(2),), claimed_at=now[0] - 0.01)
    assert child.running is not None and child.running.claim.id == 2
    assert len(link.submitted) == 1
