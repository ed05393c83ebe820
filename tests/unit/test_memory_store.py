"""What MemoryStore adds to the store contract for loop tests: the clock, outages, call counts.

The contract itself (claims, fences, sweeps...) is checked in tests/store on
every backend; these tests cover only the test controls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from supervisor.errors import StoreError, StoreUnavailable
from supervisor.lifecycle import Status
from supervisor.store import ManualClock, MemoryStore, NewTask, Rescued, SupervisorInfo

START = datetime(2030, 6, 1, 12, 0, 0)


def test_a_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(START)
    assert clock() == clock() == START
    assert clock.advance(1.5) == START + timedelta(seconds=1.5)
    assert clock() == START + timedelta(seconds=1.5)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


def test_a_lease_runs_out_when_the_test_advances_the_clock() -> None:
    """The loop test's way to simulate a stalled supervisor, without sleeping."""
    clock = ManualClock(START)
    store = MemoryStore(clock=clock)
    task_id = store.enqueue(NewTask(type="t", budget_s=100))
    [claim] = store.claim("A", ["t"], 1, lease_s=30)
    assert claim.remaining_s == 100
    clock.advance(30)
    assert store.rescue_expired(10) == Rescued(requeued=0)  # expiry is strictly after the lease
    clock.advance(0.001)
    assert store.rescue_expired(10) == Rescued(requeued=1)
    task = store.get(task_id)
    assert task is not None and task.status is Status.QUEUED
    assert not store.complete(claim)


def test_rows_are_stamped_by_the_injected_clock() -> None:
    clock = ManualClock(START)
    store = MemoryStore(clock=clock)
    task_id = store.enqueue(NewTask(type="t", delay_s=5, budget_s=60))
    task = store.get(task_id)
    assert task is not None
    assert (task.created_at, task.run_at) == (START, START + timedelta(seconds=5))
    assert task.deadline_at == START + timedelta(seconds=65)


def test_the_default_clock_is_naive_utc_like_the_sqlite_backend() -> None:
    store = MemoryStore()
    task = store.get(store.enqueue(NewTask(type="t")))
    assert task is not None
    assert task.created_at.tzinfo is None
    utc = datetime.now(UTC).replace(tzinfo=None)
    assert abs((utc - task.created_at).total_seconds()) < 5


def test_an_outage_refuses_every_call_that_reaches_the_database_and_changes_nothing() -> None:
    store = MemoryStore(clock=ManualClock(START))
    task_id = store.enqueue(NewTask(type="t"))
    [claim] = store.claim("A", ["t"], 1, lease_s=30)

    store.fail_with(StoreUnavailable("database is down"))
    with pytest.raises(StoreUnavailable, match="database is down"):
        store.complete(claim)
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.enqueue(NewTask(type="t"))
    with pytest.raises(StoreUnavailable):
        store.get(task_id)

    store.fail_with(None)
    task = store.get(task_id)
    assert task is not None and task.status is Status.RUNNING
    assert store.counts()[0].count == 1
    assert store.complete(claim)


def test_an_outage_spares_the_calls_a_real_backend_answers_without_a_query() -> None:
    """Claiming no types, completing or renewing nothing, and close never reach a database."""
    store = MemoryStore(clock=ManualClock(START))
    store.fail_with(StoreUnavailable("down"))
    assert store.claim("A", [], 5, 30) == []
    assert store.claim("A", ["t"], 0, 30) == []
    assert store.has_claimable([]) is False
    assert store.complete_many([]) == set()
    assert store.renew_leases("A", [], 30) == set()
    assert store.complete_and_claim([], "A", ["t"], 0, 30) == (set(), [])
    store.close()
    with pytest.raises(StoreUnavailable):
        store.claim("A", ["t"], 5, 30)


def test_an_outage_can_be_any_store_error_and_each_call_gets_a_fresh_one() -> None:
    store = MemoryStore()
    store.fail_with(StoreError("refused"))
    errors = []
    for _ in range(2):
        with pytest.raises(StoreError, match="refused") as caught:
            store.ping()
        assert type(caught.value) is StoreError
        errors.append(caught.value)
    assert errors[0] is not errors[1]


def test_calls_count_what_was_asked_refused_calls_included() -> None:
    store = MemoryStore(clock=ManualClock(START))
    store.enqueue(NewTask(type="t"))
    store.enqueue_many([NewTask(type="t"), NewTask(type="t")])
    claims = store.claim("A", ["t"], 10, 30)
    store.fail_with(StoreUnavailable("down"))
    with pytest.raises(StoreUnavailable):
        store.complete_many(claims)
    store.fail_with(None)
    calls = store.calls
    assert calls == {"enqueue": 1, "enqueue_many": 1, "claim": 1, "complete_many": 1}
    assert calls["fail"] == 0
    calls["fail"] = 99  # a snapshot: the store's own count is untouched
    assert store.calls["fail"] == 0


def test_complete_and_claim_is_one_call_and_refuses_another_owners_completions() -> None:
    store = MemoryStore(clock=ManualClock(START))
    for _ in range(3):
        store.enqueue(NewTask(type="t"))
    [first] = store.claim("A", ["t"], 1, 30)
    won, more = store.complete_and_claim([first], "A", ["t"], 1, 30)
    assert won == {first.id} and len(more) == 1
    with pytest.raises(ValueError, match="'B'"):
        store.complete_and_claim(more, "B", ["t"], 1, 30)
    assert store.calls["complete_and_claim"] == 2
    assert store.calls["complete_many"] == 0


def test_the_registry_uses_the_injected_clock() -> None:
    clock = ManualClock(START)
    store = MemoryStore(clock=clock)
    info = SupervisorInfo(id="h:1:a", host="h", pid=1, workers=2, version="0.1.0")
    store.register(info, ttl_s=10)
    clock.advance(11)
    [entry] = store.supervisors()
    assert (entry.started_at, entry.alive) == (START, False)
    assert store.forget_supervisors(dead_for_s=5) == 0
    clock.advance(5)
    assert store.forget_supervisors(dead_for_s=5) == 1


def test_threads_claiming_at_once_never_share_a_task() -> None:
    """One lock per method: the parent's database thread and a test thread cannot interleave."""
    store = MemoryStore()
    store.enqueue_many([NewTask(type="t") for _ in range(400)])
    taken: list[list[int]] = [[] for _ in range(4)]

    def worker(slot: list[int], owner: str) -> None:
        while claims := store.claim(owner, ["t"], 3, 30):
            slot.extend(c.id for c in claims)

    threads = [
        threading.Thread(target=worker, args=(slot, f"w{n}")) for n, slot in enumerate(taken)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [task_id for slot in taken for task_id in slot]
    assert sorted(every) == list(range(1, 401))


def test_the_memory_store_imports_no_database_driver() -> None:
    """Loop unit tests must not need sqlite3 or pymysql, nor pay for importing them."""
    code = (
        "import sys, supervisor.store.memory; "
        "print(sorted(m for m in ('sqlite3', 'pymysql') if m in sys.modules))"
    )
    # Without coverage's variables: measuring a subprocess imports sqlite3 into it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    assert out.stdout.strip() == "[]"
