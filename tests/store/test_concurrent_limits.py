"""Concurrency limits under real contention: several claimers, each its own process and connection.

Four worker processes (two on SQLite) claim from one table as supervisors do:
completions of the tasks they held ride with their next claim
(``complete_and_claim``), each task is held a few milliseconds, and every claim
passes the handlers' policies. Meanwhile the test process samples the table
from its own connection, over and over, until every task is completed: the
running count of each limited type (and of each key) is *read from the table*
throughout the run, never inferred from what the workers report.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import random
import sqlite3
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs
import pymysql
import pytest

from supervisor.dsn import MysqlDsn, SqliteDsn, parse_dsn
from supervisor.lifecycle import Status
from supervisor.policy import HandlerPolicy
from supervisor.store import NewTask, open_store

POLICIES = {
    "lim": HandlerPolicy(concurrency=2),
    "perkey": HandlerPolicy(concurrency_per_key=1),
    "both": HandlerPolicy(concurrency=3, concurrency_per_key=1),
}
TYPES = ("both", "free", "lim", "perkey")
KEYS = ("k0", "k1", "k2", "k3", "k4", None)
PER_TYPE = 120
HELD_AT_MOST = 4  # each worker runs up to this many tasks at once
HOLD_S = (0.001, 0.008)
RUN_TIMEOUT_S = 90.0

# One consistent read of the live rows: by type, key and status.
LIVE = (
    "SELECT type, concurrency_key, status, COUNT(*) AS n FROM tasks"
    " WHERE status IN ('queued', 'running') GROUP BY type, concurrency_key, status"
)


@attrs.frozen(kw_only=True)
class WorkerReport:
    owner: str
    claimed: list[int]
    completed: list[int]
    error: str | None


def work(dsn: str, owner: str, barrier: Any, done: Any, results: Any) -> None:
    """A worker process: claim, hold each task a few ms, complete it with the next claim."""
    claimed: list[int] = []
    completed: list[int] = []
    error = None
    try:
        store = open_store(parse_dsn(dsn))
        store.ping()
        barrier.wait(timeout=30)
        held: list[tuple[Any, float]] = []
        while True:
            now = time.monotonic()
            due = [claim for claim, until in held if until <= now]
            held = [(claim, until) for claim, until in held if until > now]
            won, claims = store.complete_and_claim(
                due, owner, TYPES, HELD_AT_MOST - len(held), 60.0, policies=POLICIES
            )
            completed.extend(won)
            claimed.extend(c.id for c in claims)
            held += [(c, now + random.uniform(*HOLD_S)) for c in claims]
            if not held and done.is_set():
                break
            if not claims:
                time.sleep(0.001)
        store.close()
    except BaseException:  # noqa: BLE001 - every escape is reported to the test, which fails on it
        error = traceback.format_exc()
    report = WorkerReport(owner=owner, claimed=claimed, completed=completed, error=error)
    results.put(attrs.asdict(report))


@contextlib.contextmanager
def sampler(dsn: str) -> Iterator[Any]:
    """A connection of the test's own, in autocommit (each read sees the latest commits)."""
    parsed = parse_dsn(dsn)
    if isinstance(parsed, SqliteDsn):
        conn: Any = sqlite3.connect(parsed.path, isolation_level=None, timeout=10)
    else:
        assert isinstance(parsed, MysqlDsn)
        conn = pymysql.connect(
            host=parsed.host,
            port=parsed.port,
            user=parsed.user,
            password=parsed.password or "",
            database=parsed.database,
            autocommit=True,
        )
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    try:
        yield conn
    finally:
        conn.close()


def live_rows(conn: Any) -> list[tuple[str, str | None, str, int]]:
    if isinstance(conn, sqlite3.Connection):
        return [tuple(r) for r in conn.execute(LIVE).fetchall()]  # type: ignore[misc]
    with conn.cursor() as cursor:
        cursor.execute(LIVE)
        return [tuple(r) for r in cursor.fetchall()]


@attrs.define
class Peaks:
    """The most running tasks seen in one sample: per type, and per (type, key)."""

    samples: int = 0
    by_type: Counter[str] = attrs.field(factory=Counter)
    by_key: Counter[tuple[str, str]] = attrs.field(factory=Counter)

    def add(self, rows: list[tuple[str, str | None, str, int]]) -> None:
        self.samples += 1
        running: Counter[str] = Counter()
        for task_type, key, status, count in rows:
            if status != "running":
                continue
            running[task_type] += count
            if key is not None:
                pair = (task_type, key)
                self.by_key[pair] = max(self.by_key[pair], count)
        for task_type, count in running.items():
            self.by_type[task_type] = max(self.by_type[task_type], count)


def run_and_sample(dsn: str, workers: int) -> tuple[Peaks, list[WorkerReport]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    done = ctx.Event()
    results = ctx.Queue()
    processes = [
        ctx.Process(target=work, args=(dsn, f"worker-{n}", barrier, done, results))
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    peaks = Peaks()
    reports: list[WorkerReport] = []
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        with sampler(dsn) as conn:
            while time.monotonic() < deadline:
                rows = live_rows(conn)
                peaks.add(rows)
                if not rows:
                    break
        done.set()
        for _ in processes:
            try:
                remaining = max(0.1, deadline - time.monotonic())
                reports.append(WorkerReport(**results.get(timeout=remaining)))
            except queue.Empty:
                pytest.fail(f"only {len(reports)} of {workers} workers reported in time")
    finally:
        done.set()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    return peaks, reports


def check_limits_hold_under_contention(dsn: str, workers: int) -> None:
    store = open_store(parse_dsn(dsn))
    store.migrate()
    try:
        ids = store.enqueue_many(
            [
                NewTask(type=task_type, concurrency_key=KEYS[n % len(KEYS)])
                for n in range(PER_TYPE)
                for task_type in TYPES
            ]
        )
        peaks, reports = run_and_sample(dsn, workers)
        errors = [f"{r.owner}:\n{r.error}" for r in reports if r.error]
        assert not errors, "\n".join(errors)

        # The limits, as sampled from the table throughout the run.
        assert peaks.samples >= 20, f"only {peaks.samples} samples: the run proves little"
        assert peaks.by_type["lim"] == 2, peaks.by_type  # reached, never exceeded
        assert peaks.by_type["both"] <= 3, peaks.by_type
        per_key = ("perkey", "both")
        over = {pair: n for pair, n in peaks.by_key.items() if pair[0] in per_key and n > 1}
        assert not over, f"more than one task of a key ran at once: {over}"
        assert peaks.by_key["perkey", "k0"] == 1, "a key's one slot was never used"
        assert peaks.by_type["free"] > 2, "the type without limits was held back"

        # Nothing over a limit was failed or lost: every task ran once and completed.
        claims = Counter(i for r in reports for i in r.claimed)
        assert sorted(claims) == sorted(ids)
        assert max(claims.values()) == 1
        assert sorted(i for r in reports for i in r.completed) == sorted(ids)
        counts = store.counts()
        assert {(c.status, c.count) for c in counts} == {(Status.COMPLETED, PER_TYPE)}
    finally:
        store.close()


@pytest.mark.mysql
@pytest.mark.timeout(180)
def test_four_mysql_claimers_never_run_more_than_the_limits(mysql_dsn: str) -> None:
    check_limits_hold_under_contention(mysql_dsn, workers=4)


@pytest.mark.timeout(180)
def test_two_sqlite_claimers_never_run_more_than_the_limits(sqlite_dsn: str) -> None:
    check_limits_hold_under_contention(sqlite_dsn, workers=2)
