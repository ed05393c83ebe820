"""``supervisor stack ID`` against a memory store: what it prints and when it gives up.

The real command against real supervisors is tests/e2e/test_stacks.py; here the
"supervisor" is the test, answering (or not) from within the command's sleep.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import attrs
import pytest

from supervisor.lifecycle import Status
from supervisor.records import Claim, SupervisorInfo
from supervisor.stack_cli import ask_for_stack
from supervisor.store import ManualClock, MemoryStore, NewTask

STACK = 'Current thread 0x01 (most recent call first):\n  File "h.py", line 4 in wait_for_the_disk'


class Waiting:
    """The command's clock and sleep; ``during_sleep(n)`` acts as the fleet would meanwhile."""

    def __init__(self, during_sleep: Callable[[int], None] = lambda n: None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self._during = during_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        self._during(self.sleeps)


def running_task(store: MemoryStore, owner: str = "A") -> Claim:
    store.enqueue(NewTask(type="t"))
    [claim] = store.claim(owner, ["t"], 1, 60.0)
    return claim


def ask(
    store: MemoryStore, task_id: int, waiting: Waiting, wait_s: float = 10.0
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = ask_for_stack(
        store, task_id, wait_s, out=out, err=err, clock=waiting.clock, sleep=waiting.sleep
    )
    return status, out.getvalue(), err.getvalue()


def test_prints_the_stack_its_supervisor_writes_after_the_request() -> None:
    store = MemoryStore(clock=ManualClock())
    claim = running_task(store)

    def answer(sleeps: int) -> None:
        if sleeps == 3:
            store.clock.advance(0.3)  # type: ignore[attr-defined]
            assert store.record_stack(claim, STACK, status=Status.RUNNING)

    waiting = Waiting(answer)
    assert ask(store, claim.id, waiting) == (0, STACK + "\n", "")
    assert waiting.sleeps == 3


def test_a_stack_taken_before_the_request_does_not_answer_it() -> None:
    store = MemoryStore(clock=ManualClock())
    claim = running_task(store)
    assert store.record_stack(claim, "an old stack", status=Status.RUNNING)
    store.clock.advance(1.0)  # type: ignore[attr-defined]
    status, out, err = ask(store, claim.id, Waiting(), wait_s=1.0)
    assert (status, out) == (1, "")
    assert "no stack of task" in err


def test_an_unknown_task_or_one_that_does_not_run_is_refused_at_once() -> None:
    store = MemoryStore(clock=ManualClock())
    queued = store.enqueue(NewTask(type="q"))
    waiting = Waiting()
    assert ask(store, 999, waiting) == (1, "", "supervisor: no task with id 999\n")
    status, _, err = ask(store, queued, waiting)
    assert status == 1 and f"task {queued} is queued; only a running task" in err
    assert waiting.sleeps == 0


def test_a_task_that_ends_while_waiting_is_said_to_have_ended() -> None:
    store = MemoryStore(clock=ManualClock())
    claim = running_task(store)
    waiting = Waiting(lambda sleeps: store.complete(claim) and None)
    status, _, err = ask(store, claim.id, waiting)
    assert status == 1 and "ended (completed) before its stack was taken" in err


@pytest.mark.parametrize("alive", [True, False])
def test_no_answer_within_the_wait_names_the_supervisor_holding_the_task(alive: bool) -> None:
    store = MemoryStore(clock=ManualClock())
    claim = running_task(store, owner="host:42:abc")
    info = SupervisorInfo(id="host:42:abc", host="host", pid=42, workers=1, version="t")
    store.register(info, ttl_s=60.0)
    if not alive:
        store.clock.advance(61.0)  # type: ignore[attr-defined]
    waiting = Waiting()
    status, out, err = ask(store, claim.id, waiting, wait_s=1.0)
    assert (status, out) == (1, "")
    assert "no stack of task" in err and "host:42:abc" in err
    assert (", a live supervisor" in err) is alive
    assert ("which is not a live supervisor" in err) is not alive
    assert waiting.now == pytest.approx(1.0)


def test_no_answer_for_a_running_row_nobody_holds() -> None:
    store = MemoryStore(clock=ManualClock())
    claim = running_task(store)
    row = store.get(claim.id)
    assert row is not None
    store._tasks[claim.id] = attrs.evolve(row, claimed_by=None)  # a hand-made row
    status, _, err = ask(store, claim.id, Waiting(), wait_s=0.5)
    assert status == 1 and "no supervisor holds it" in err


def test_a_task_deleted_while_waiting_is_said_to_be_gone() -> None:
    store = MemoryStore(clock=ManualClock())
    claim = running_task(store)
    status, _, err = ask(store, claim.id, Waiting(lambda n: store._tasks.pop(claim.id) and None))
    assert status == 1 and "deleted" in err
