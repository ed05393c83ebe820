"""Poison rows: a row the parent cannot run fails alone, at once, and every other task flows.

Plain SQL is a supported producer, so a row may hold anything. These tests
feed the loop such rows through the in-memory store and check the loop's
decision: the row fails with a clear ``last_error`` that never echoes its
options, no child is handed it, and the innocent task next to it completes.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from supervisor.lifecycle import MAX_ATTEMPTS_LIMIT, MAX_OPTIONS_BYTES, Failure, Status
from supervisor.protocol import TaskMessage
from supervisor.store.base import TaskRow
from supervisor.store.memory import MemoryStore
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import Loop


def poke(loop: Loop, task_id: int, **fields: Any) -> None:
    """Write a row as a plain-SQL producer could, past every check a producer makes."""
    store = loop.store
    with store._lock:
        store._tasks[task_id] = attrs.evolve(store._tasks[task_id], **fields)


def run_all(loop: Loop, rounds: int = 6) -> None:
    """Claim, dispatch, complete whatever a child is handed, write, repeat."""
    for _ in range(rounds):
        loop.cycle()
        for child in loop.busy():
            child.say_done()
        loop.step()
    loop.turn()


def sent_ids(loop: Loop) -> list[int]:
    return [m.id for c in loop.children() for m in c.heard() if isinstance(m, TaskMessage)]


def assert_failed_alone(loop: Loop, poison: int, innocent: int, words: str) -> TaskRow:
    row = loop.row(poison)
    assert row.status is Status.FAILED, row
    assert row.failure is Failure.ERROR
    assert row.last_error is not None and words in row.last_error
    assert poison not in sent_ids(loop), "a row the parent cannot run went to a child"
    assert loop.row(innocent).status is Status.COMPLETED
    return row


def test_options_over_the_limit_fail_at_claim_without_reaching_a_child(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1)
    [poison] = loop.enqueue(options="\x01" * (MAX_OPTIONS_BYTES + 1))
    [innocent] = loop.enqueue()
    run_all(loop)
    row = assert_failed_alone(loop, poison, innocent, "1 MiB")
    assert "\x01" not in (row.last_error or "")
    assert row.attempts == 1


def test_a_type_the_database_matched_loosely_fails_alone(
    make_loop: MakeLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MariaDB's PAD SPACE collation matches ``'echo '`` to ``'echo'``: imitate it."""
    loop = make_loop(workers=1)
    real = MemoryStore._claimable

    def padded(self: MemoryStore, types: set[str], now: Any) -> list[TaskRow]:
        return real(self, {*types, *(t + " " for t in types)}, now)

    monkeypatch.setattr(MemoryStore, "_claimable", padded)
    [poison] = loop.enqueue(type="echo ")
    [innocent] = loop.enqueue()
    run_all(loop)
    row = assert_failed_alone(loop, poison, innocent, "no handler for type 'echo '")
    assert row.attempts == 1


def test_attempts_beyond_max_attempts_fail_instead_of_running(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [poison] = loop.enqueue()
    poke(loop, poison, attempts=7, max_attempts=3)
    [innocent] = loop.enqueue()
    run_all(loop)
    assert_failed_alone(loop, poison, innocent, "max_attempts")


def test_a_huge_max_attempts_is_clamped_at_claim(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    poke(loop, task_id, max_attempts=4_294_967_295)
    loop.cycle()
    [child] = loop.busy()
    assert child.task().max_attempts == MAX_ATTEMPTS_LIMIT


def test_a_dispatch_that_keeps_failing_counts_its_attempts_and_ends(
    make_loop: MakeLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that is gone when its task is sent: the attempt counts, so the task cannot loop."""
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(max_attempts=3)
    for _ in range(12):
        for child in loop.children():
            monkeypatch.setattr(child, "send", lambda message: False)
        loop.advance(1.0)
        loop.cycle()
        for child in loop.children():
            if child.exit_status is None and not child.reaped:
                child.say_ready()
        loop.step()
        loop.turn()
        if loop.row(task_id).status is Status.FAILED:
            break
    row = loop.row(task_id)
    assert row.status is Status.FAILED, row
    assert (row.failure, row.attempts) == (Failure.PANIC, 3)
