"""Several supervisors claiming from one table at once: each task is claimed exactly once.

Real OS processes (spawn, so nothing is inherited but the DSN), each with its
own store, start together on a barrier and claim in small batches until the
queue is empty, completing what they claim. Lock conflicts between them
(deadlocks, lock waits, SQLite's busy lock) must be absorbed inside the store:
any exception that escapes a worker fails the test.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import time
import traceback
from collections import Counter
from typing import Any

import attrs
import pytest

from supervisor.dsn import parse_dsn
from supervisor.lifecycle import Status
from supervisor.store import NewTask, open_store

TASKS = 2000
BATCH = 8
EMPTY_POLLS_BEFORE_STOPPING = 3
RESULT_TIMEOUT_S = 60.0
HOUSEKEEPING_EVERY = 5
PRODUCER_BATCH = 25


@attrs.frozen(kw_only=True)
class WorkerReport:
    owner: str
    claimed: list[int]
    completed: list[int]
    error: str | None


def claim_until_empty(dsn: str, owner: str, barrier: Any, produced: Any, results: Any) -> None:
    """A worker process: claim batches and complete them until the producer is done and the
    queue stays empty; sweep expired leases and overdue tasks now and then, as supervisors do."""
    claimed: list[int] = []
    completed: list[int] = []
    error = None
    try:
        store = open_store(parse_dsn(dsn))
        store.ping()
        barrier.wait(timeout=30)
        empty_polls = 0
        for round in itertools.count():
            if round % HOUSEKEEPING_EVERY == 0:
                store.rescue_expired(100)
                store.expire_overdue(100)
            claims = store.claim(owner, ["t"], BATCH, 60.0)
            if claims:
                empty_polls = 0
                claimed.extend(c.id for c in claims)
                completed.extend(store.complete_many(claims))
            elif produced.is_set():
                empty_polls += 1
                if empty_polls >= EMPTY_POLLS_BEFORE_STOPPING:
                    break
                time.sleep(0.02)
            else:
                time.sleep(0.005)
        store.close()
    except BaseException:  # noqa: BLE001 - every escape is reported to the test, which fails on it
        error = traceback.format_exc()
    report = WorkerReport(owner=owner, claimed=claimed, completed=completed, error=error)
    results.put(attrs.asdict(report))


def produce(dsn: str, count: int, barrier: Any, produced: Any, results: Any) -> None:
    """A producer process: enqueue ``count`` tasks in small batches while the workers claim."""
    ids: list[int] = []
    error = None
    try:
        store = open_store(parse_dsn(dsn))
        store.ping()
        barrier.wait(timeout=30)
        while len(ids) < count:
            size = min(PRODUCER_BATCH, count - len(ids))
            ids.extend(store.enqueue_many([NewTask(type="t") for _ in range(size)]))
        store.close()
    except BaseException:  # noqa: BLE001 - every escape is reported to the test, which fails on it
        error = traceback.format_exc()
    finally:
        produced.set()
    report = WorkerReport(owner="producer", claimed=ids, completed=[], error=error)
    results.put(attrs.asdict(report))


def run_workers(dsn: str, workers: int, produce_count: int) -> list[WorkerReport]:
    """Start ``workers`` claimers (and a producer of ``produce_count`` tasks if not 0) together."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + (1 if produce_count else 0))
    produced = ctx.Event()
    results = ctx.Queue()
    processes = [
        ctx.Process(target=claim_until_empty, args=(dsn, f"worker-{n}", barrier, produced, results))
        for n in range(workers)
    ]
    if produce_count:
        args = (dsn, produce_count, barrier, produced, results)
        processes.append(ctx.Process(target=produce, args=args))
    else:
        produced.set()
    for process in processes:
        process.start()
    reports = []
    try:
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        for _ in processes:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                reports.append(WorkerReport(**results.get(timeout=remaining)))
            except queue.Empty:
                pytest.fail(f"only {len(reports)} of {len(processes)} processes reported in time")
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    return reports


def check_each_task_claimed_and_completed_once(
    dsn: str, workers: int, *, while_producing: bool = False
) -> None:
    store = open_store(parse_dsn(dsn))
    store.migrate()
    try:
        if while_producing:
            ids = []
            reports = run_workers(dsn, workers, produce_count=TASKS)
        else:
            ids = store.enqueue_many([NewTask(type="t") for _ in range(TASKS)])
            reports = run_workers(dsn, workers, produce_count=0)
        errors = [f"{r.owner}:\n{r.error}" for r in reports if r.error]
        assert not errors, "\n".join(errors)
        ids += [i for r in reports if r.owner == "producer" for i in r.claimed]
        workers_reports = [r for r in reports if r.owner != "producer"]
        assert len(ids) == TASKS

        claims = Counter(i for r in workers_reports for i in r.claimed)
        assert sorted(claims) == sorted(ids), "some tasks were never claimed"
        twice = [i for i, n in claims.items() if n > 1]
        assert not twice, f"claimed more than once: {twice[:20]}"
        for report in workers_reports:
            assert sorted(report.completed) == sorted(report.claimed), report.owner
        if dsn.startswith("mysql"):
            # Row locks let claimers run side by side (SQLite's one write lock need not be fair).
            assert sum(1 for r in workers_reports if r.claimed) > 1, "one worker took everything"

        counts = store.counts()
        assert [(c.status, c.count) for c in counts] == [(Status.COMPLETED, TASKS)]
        for task_id in ids[:: TASKS // 50]:
            task = store.get(task_id)
            assert task is not None and task.attempts == 1
    finally:
        store.close()


@pytest.mark.mysql
def test_four_processes_claim_every_mysql_task_exactly_once(mysql_dsn: str) -> None:
    check_each_task_claimed_and_completed_once(mysql_dsn, workers=4)


@pytest.mark.mysql
def test_mysql_claims_alongside_a_producer_inserting_claim_every_task_once(
    mysql_dsn: str,
) -> None:
    """READ COMMITTED: producers' INSERTs and SKIP LOCKED claims do not deadlock each other."""
    check_each_task_claimed_and_completed_once(mysql_dsn, workers=4, while_producing=True)


def test_two_processes_claim_every_sqlite_task_exactly_once(sqlite_dsn: str) -> None:
    check_each_task_claimed_and_completed_once(sqlite_dsn, workers=2)


def test_sqlite_claims_alongside_a_producer_inserting_claim_every_task_once(
    sqlite_dsn: str,
) -> None:
    check_each_task_claimed_and_completed_once(sqlite_dsn, workers=2, while_producing=True)
