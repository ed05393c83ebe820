"""Benchmark the supervisor against the database's own limit, on MySQL/MariaDB and SQLite.

A queue worker is only as good as the work it gets through, and the ceiling
for a durable queue is what the database itself can do. So every throughput
run measures two things on fresh databases, one after the other:

* the *baseline*: this process alone claims batches of ``k`` with the store's
  own claim statements and completes each batch in one statement, with no
  task execution at all. That is the most any worker on this table can reach.
* the *supervisor*: the real ``python -m supervisor`` in a subprocess, with
  ``W`` pre-started children running a handler that does nothing, draining a
  queue that a producer filled with a plain multi-row ``INSERT``.

Rates come from the database clock (first ``started_at`` to last
``completed_at``), the same way for both, so their ratio is like for like.
CPU and peak RSS of the supervisor's parent and children are sampled with
psutil while the queue drains.

Other modes:

``--pickup``     an idle supervisor; one task enqueued every 0.5 s; how long each
                 waited for pick-up (``started_at - created_at``).
``--idle``       what an idle supervisor costs: CPU and, on MySQL, statements per
                 second counted by a relay between the supervisor and the server
                 (the server's global counters also count every other client).
``--deadlines``  tasks that hang with a 1 s budget; how late after ``deadline_at``
                 the parent killed them (its log) and recorded it (``completed_at``).
                 With ``--blackhole S`` (MySQL): the database hangs for S seconds (a
                 proxy forwards nothing, closes nothing) while 20 claimed, hanging
                 tasks reach their deadlines; how late the kills were, and whether
                 the rows end ``failed/timeout`` once it answers again.
``--fresh``      the throughput run with ``--max-tasks-per-child 1``: a fresh child
                 process per task (``--fresh-tasks``, 1,000 by default).
``--peer celery`` the same no-op workload on Celery's prefork pool (``-w``
                 processes) over redis, measured the same way (see ``run_celery``),
                 interleaved with the throughput runs so one command prints both
                 systems and the baseline. Needs ``pip install -e '.[bench]'`` and a
                 redis server (``--redis-url``); exits 2 saying which is missing.

Each configuration prints one summary line. The machine is usually shared and
noisy: use ``--repeat`` and quote the spread.

Examples::

    python scripts/bench.py                                 # throughput, both backends
    python scripts/bench.py --backend mysql --repeat 3 -n 20000 -w 8 -k 8
    python scripts/bench.py --pickup --idle --deadlines -w 10
    python scripts/bench.py --backend mysql --repeat 3 --peer celery   # both systems, one run
    python scripts/bench.py --backend mysql --fresh               # a fresh process per task
    python scripts/bench.py --deadlines --blackhole 30 --backend mysql
    python scripts/bench.py --backend mysql --profile /tmp/parent   # py-spy of the parent
    python scripts/bench.py --backend mysql --count-queries   # statements per task, by name
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote

import attrs
import psutil
import pymysql

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a fresh clone runs this without installing the package
    sys.path.insert(0, str(ROOT))

from supervisor.dsn import MysqlDsn, SqliteDsn, parse_dsn  # noqa: E402
from supervisor.errors import UsageError  # noqa: E402
from supervisor.store import NewTask, open_store  # noqa: E402
from supervisor.store.queries import load_queries  # noqa: E402
from tests.e2e.tcp_proxy import TcpProxy  # noqa: E402

BACKENDS = ("mysql", "sqlite")
DEFAULT_MYSQL_DSN = "mysql://root@127.0.0.1:3306/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
NOOP, HANG = "noop", "hang"
HANDLERS = {
    NOOP: '"""Does nothing: the benchmark measures the queue, not the work."""\n\n\n'
    "def handle(task, progress):\n    return None\n",
    HANG: '"""Sleeps far past any budget the benchmark gives it, to be killed at its deadline."""\n'
    "\nimport time\n\n\ndef handle(task, progress):\n    time.sleep(60)\n",
}
INSERT_CHUNK = 500  # rows per producer INSERT (well inside SQLite's and MySQL's limits)
POLL_S = 0.2  # how often the bench looks at the queue while the supervisor drains it
SAMPLE_S = 0.1  # how often psutil samples the supervisor's process tree
KILL_MESSAGE = "deadline reached; killing the child's tree"  # the parent's log line
STALL_S = 120.0  # no progress for this long: the run is broken, stop waiting
STOP_TIMEOUT_S = 90.0
LEASE_S = 60.0
MIB = 1024 * 1024
PY_SPY = ("py-spy", "record", "--format", "raw", "--rate", "200")

# The benchmark's own SQL: a producer's plain INSERT and two status reads, kept here on
# purpose (they are the tooling, not the product); everything else goes through the store.
PRODUCER_INSERT = "INSERT INTO tasks (type, task_options) VALUES "
PENDING_SQL = "SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')"
RUNNING_HANG_SQL = f"SELECT COUNT(*) FROM tasks WHERE status = 'running' AND type = '{HANG}'"
TIMES_SQL = (
    "SELECT id, type, status, failure, created_at, started_at, completed_at, deadline_at"
    " FROM tasks ORDER BY id"
)
# How far the database clock's NOW() is ahead of UTC (SQLite's clock is UTC by the schema).
UTC_OFFSET_SQL = {
    "mysql": "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), NOW(6))",
    "sqlite": "SELECT 0",
}

# A string: pymysql's Connection is generic only to type checkers.
DbConnection: TypeAlias = "sqlite3.Connection | pymysql.connections.Connection[Any]"


class BenchError(RuntimeError):
    """A run that cannot produce a figure (the supervisor died, the queue stalled)."""


# ---------------------------------------------------------------------------- databases


@attrs.frozen(kw_only=True)
class Scratch:
    """A throwaway database: the DSN the store uses, and the URL the supervisor is given.

    The URL never holds the password; the supervisor gets it from the environment,
    as a production unit would.
    """

    backend: str
    dsn: MysqlDsn | SqliteDsn
    url: str

    def connect(self) -> DbConnection:
        """A connection of the benchmark's own, in autocommit, for the INSERT and status reads."""
        if isinstance(self.dsn, SqliteDsn):
            return sqlite3.connect(self.dsn.path, timeout=30, isolation_level=None)
        return mysql_connect(self.dsn, self.dsn.database)

    def env(self) -> dict[str, str]:
        """What the supervisor's environment needs beyond ours: the password, and the package."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if isinstance(self.dsn, MysqlDsn) and self.dsn.password:
            env["SUPERVISOR_DB_PASSWORD"] = self.dsn.password
        return env


def mysql_connect(dsn: MysqlDsn, database: str | None) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=dsn.host,
        port=dsn.port,
        user=dsn.user,
        password=dsn.password,
        database=database,
        unix_socket=dsn.unix_socket,
        autocommit=True,
        connect_timeout=dsn.connect_timeout,
    )


def mysql_url(dsn: MysqlDsn, *, host: str | None = None, port: int | None = None) -> str:
    """The DSN as text without its password (given a relay's address, pointing there)."""
    query = f"?unix_socket={dsn.unix_socket}" if dsn.unix_socket and host is None else ""
    return (
        f"mysql://{quote(dsn.user, safe='')}@{host or dsn.host}:{port or dsn.port}"
        f"/{dsn.database}{query}"
    )


@contextlib.contextmanager
def scratch(backend: str, mysql_dsn: MysqlDsn) -> Iterator[Scratch]:
    """A fresh, migrated database, removed afterwards whatever happens."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="sv_bench_") as folder:
            path = Path(folder) / "bench.db"
            yield _migrated(Scratch(backend=backend, dsn=SqliteDsn(path=str(path)), url=""))
        return
    name = f"sv_bench_{secrets.token_hex(4)}"
    admin = mysql_connect(mysql_dsn, None)
    try:
        execute(admin, f"CREATE DATABASE {name}")
        dsn = mysql_dsn.with_database(name)
        yield _migrated(Scratch(backend=backend, dsn=dsn, url=mysql_url(dsn)))
    finally:
        execute(admin, f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def _migrated(db: Scratch) -> Scratch:
    store = open_store(db.dsn)
    try:
        store.migrate()
    finally:
        store.close()
    if isinstance(db.dsn, SqliteDsn):
        return attrs.evolve(db, url=f"sqlite:///{db.dsn.path}")
    return db


def execute(conn: DbConnection, sql: str) -> list[tuple[Any, ...]]:
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def enqueue_plain(conn: DbConnection, count: int, task_type: str = NOOP) -> None:
    """What any producer in any language can do: a plain multi-row INSERT, defaults for the rest."""
    row = f"('{task_type}', '{{}}')"
    for start in range(0, count, INSERT_CHUNK):
        rows = min(INSERT_CHUNK, count - start)
        execute(conn, PRODUCER_INSERT + ",".join([row] * rows))


def pending(conn: DbConnection) -> int:
    return int(execute(conn, PENDING_SQL)[0][0])


@attrs.frozen(kw_only=True)
class TaskTimes:
    """One row's timestamps, as the database clock wrote them."""

    id: int
    type: str
    status: str
    failure: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    deadline_at: datetime


def read_times(conn: DbConnection) -> list[TaskTimes]:
    return [
        TaskTimes(
            id=int(row[0]),
            type=row[1],
            status=row[2],
            failure=row[3],
            created_at=_datetime(row[4]),
            started_at=_optional_datetime(row[5]),
            completed_at=_optional_datetime(row[6]),
            deadline_at=_datetime(row[7]),
        )
        for row in execute(conn, TIMES_SQL)
    ]


def _datetime(value: object) -> datetime:
    """pymysql returns datetimes; SQLite stores 'YYYY-MM-DD HH:MM:SS.SSS' text."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _optional_datetime(value: object) -> datetime | None:
    return None if value is None else _datetime(value)


# ---------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: always a value that was measured, also for 50 samples."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def drain_rate(rows: Sequence[TaskTimes]) -> float:
    """Completed tasks per second, from the first claim to the last completion."""
    done = [r for r in rows if r.status == "completed" and r.started_at and r.completed_at]
    if not done:
        return 0.0
    first = min(r.started_at for r in done if r.started_at)
    last = max(r.completed_at for r in done if r.completed_at)
    return len(done) / max((last - first).total_seconds(), 1e-6)


def start_latencies(rows: Sequence[TaskTimes]) -> list[float]:
    return [(r.started_at - r.created_at).total_seconds() for r in rows if r.started_at]


def outcomes(rows: Sequence[TaskTimes]) -> str:
    """``completed=49,timeout=1``: what became of the rows (failures named by their kind)."""
    counts = Counter(r.failure or r.status for r in rows)
    return ",".join(f"{name}={count}" for name, count in sorted(counts.items()))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def latency_fields(prefix: str, values: Sequence[float]) -> str:
    return (
        f"{prefix}_p50={ms(percentile(values, 50))} {prefix}_p99={ms(percentile(values, 99))}"
        f" {prefix}_max={ms(max(values, default=math.nan))}"
    )


# ---------------------------------------------------------------------------- the supervisor


class TreeUsage:
    """CPU and peak RSS of the supervisor's process tree, sampled by a thread until it exits.

    psutil sees a child only while it lives, so a child's CPU is its last sample;
    with pre-started, reused children nothing exits while the queue drains.
    """

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.parent_cpu = 0.0
        self.parent_rss_peak = 0
        self.child_rss_peak = 0
        self.child_count = 0
        self._child_cpu: dict[tuple[int, float], float] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tree-usage", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self._sample()
            except psutil.Error:
                return  # the supervisor is gone
            time.sleep(SAMPLE_S)

    def _sample(self) -> None:
        with self.root.oneshot():
            times, rss = self.root.cpu_times(), self.root.memory_info().rss
        children = []
        for child in self.root.children(recursive=True):
            with contextlib.suppress(psutil.Error), child.oneshot():
                key = (child.pid, child.create_time())
                children.append((key, child.cpu_times(), child.memory_info().rss))
        with self._lock:
            self.parent_cpu = times.user + times.system
            self.parent_rss_peak = max(self.parent_rss_peak, rss)
            self.child_count = len(children)
            for key, child_times, child_rss in children:
                self._child_cpu[key] = child_times.user + child_times.system
                self.child_rss_peak = max(self.child_rss_peak, child_rss)

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far: (parent, all children ever seen)."""
        with self._lock:
            return self.parent_cpu, sum(self._child_cpu.values())


@attrs.define(kw_only=True)
class Supervised:
    """A running ``python -m supervisor``; ``lifetime_cpu`` is filled in from wait4 at exit."""

    process: subprocess.Popen[bytes]
    usage: TreeUsage
    log_path: Path
    lifetime_cpu: float = 0.0

    def check_alive(self) -> None:
        # WNOWAIT: look without reaping, so that stop() still gets the exit's resource usage.
        if os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            raise BenchError(f"the supervisor exited early:\n{log_tail(self.log_path)}")


def write_handlers(folder: Path) -> Path:
    for task_type, source in HANDLERS.items():
        (folder / f"{task_type}.py").write_text(source)
    return folder


@contextlib.contextmanager
def supervisor(
    db: Scratch,
    workers: int,
    *,
    url: str | None = None,
    profile: Path | None = None,
    profile_idle: bool = False,
    extra: Sequence[str] = (),
) -> Iterator[Supervised]:
    """Run the real supervisor on ``db`` until the block ends; then TERM it and reap it.

    ``extra`` is appended to its command line (``--max-tasks-per-child 1``, ``--lease 90``).
    """
    with tempfile.TemporaryDirectory(prefix="sv_bench_run_") as folder:
        handlers = write_handlers(Path(folder))
        log_path = Path(folder) / "supervisor.log"
        command = [
            sys.executable, "-m", "supervisor",
            "--workers", str(workers),
            "--metrics-port", "0",
            "--log-format", "json",
            "--handlers", str(handlers),
            "--dsn", url or db.url,
            *extra,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=folder, env=db.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        run = Supervised(process=process, usage=TreeUsage(process.pid), log_path=log_path)
        spy = start_profiler(process.pid, profile, profile_idle) if profile else None
        try:
            yield run
        finally:
            run.lifetime_cpu = stop(process)
            if spy is not None:
                spy.wait(timeout=60)


def stop(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM (graceful drain), then reap with wait4: the CPU of the parent and reaped children.

    ``os.kill``, not ``Popen.send_signal``: that one polls first, and reaping
    there would lose the resource usage. Until reaped, the pid cannot be reused.
    """
    os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return rusage.ru_utime + rusage.ru_stime
        if time.monotonic() > deadline:
            os.kill(process.pid, signal.SIGKILL)
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_drained(conn: DbConnection, run: Supervised, on_poll: Callable[[int], None]) -> None:
    """Poll the count of unfinished tasks until it is zero; ``on_poll(count)`` after each look."""
    wait_until_none_left(lambda: pending(conn), run, on_poll, "")


def wait_until_none_left(
    unfinished: Callable[[], int], run: Supervised, on_poll: Callable[[int], None], who: str
) -> None:
    """Poll ``unfinished()`` until it is zero; give up when it stops moving for STALL_S."""
    last, changed_at = -1, time.monotonic()
    while True:
        count = unfinished()
        on_poll(count)
        if count == 0:
            return
        if count != last:
            last, changed_at = count, time.monotonic()
        elif time.monotonic() - changed_at > STALL_S:
            raise BenchError(f"{who}{count} tasks made no progress for {STALL_S:.0f} s")
        run.check_alive()
        time.sleep(POLL_S)


def warm_up(conn: DbConnection, run: Supervised) -> None:
    """One task through the whole path, so the figures that follow exclude start-up."""
    enqueue_plain(conn, 1)
    wait_drained(conn, run, lambda _count: None)
    time.sleep(1.0)


# ---------------------------------------------------------------------------- throughput


@attrs.frozen(kw_only=True)
class DrainWindow:
    """CPU spent by the supervisor between its first completion and an empty queue."""

    seconds: float
    tasks: int
    parent_cpu: float
    children_cpu: float


class WindowProbe:
    """Marks the CPU counters when the first completion shows up and when the queue is empty."""

    def __init__(self, usage: TreeUsage, total: int) -> None:
        self.usage, self.total = usage, total
        self.start: tuple[float, float, float, int] | None = None
        self.end: tuple[float, float, float, int] | None = None

    def __call__(self, count: int) -> None:
        if count < self.total:
            mark = (time.monotonic(), *self.usage.cpu(), count)
            if self.start is None:
                self.start = mark
            self.end = mark

    def window(self) -> DrainWindow:
        assert self.start is not None and self.end is not None
        return DrainWindow(
            seconds=self.end[0] - self.start[0],
            tasks=self.start[3] - self.end[3],
            parent_cpu=self.end[1] - self.start[1],
            children_cpu=self.end[2] - self.start[2],
        )


def run_baseline(backend: str, mysql_dsn: MysqlDsn, tasks: int, batch: int) -> float:
    """The database's own limit: claim k with the store's statements, complete them in one."""
    with scratch(backend, mysql_dsn) as db:
        conn = db.connect()
        store = open_store(db.dsn)
        try:
            enqueue_plain(conn, tasks)
            owner = f"bench-baseline:{os.getpid()}"
            while claims := store.claim(owner, [NOOP], batch, LEASE_S):
                store.complete_many(claims)
            return drain_rate(read_times(conn))
        finally:
            store.close()
            conn.close()


@attrs.frozen(kw_only=True)
class SupervisorFigures:
    statements: Counter[str] | None  # by name, over the whole run (with --count-queries)
    rate: float
    rows: list[TaskTimes]
    window: DrainWindow
    lifetime_cpu: float
    parent_rss_peak: int
    child_rss_peak: int


def run_supervisor(
    backend: str,
    args: argparse.Namespace,
    profile: Path | None,
    tasks: int,
    extra: Sequence[str] = (),
) -> SupervisorFigures:
    """The real supervisor draining a pre-filled queue of ``tasks`` no-op tasks."""
    with (
        scratch(backend, args.mysql_dsn) as db,
        QueryRelay.for_scratch(db, args.count_queries) as relay,
    ):
        conn = db.connect()
        try:
            enqueue_plain(conn, tasks)
            url = relay.url if relay else None
            with supervisor(
                db,
                args.workers,
                url=url,
                profile=profile,
                profile_idle=args.profile_idle,
                extra=extra,
            ) as run:
                probe = WindowProbe(run.usage, tasks)
                wait_drained(conn, run, probe)
            rows = read_times(conn)
        finally:
            conn.close()
    return SupervisorFigures(
        statements=relay.snapshot() if relay else None,
        rate=drain_rate(rows),
        rows=rows,
        window=probe.window(),
        lifetime_cpu=run.lifetime_cpu,
        parent_rss_peak=run.usage.parent_rss_peak,
        child_rss_peak=run.usage.child_rss_peak,
    )


def start_profiler(pid: int, path: Path, idle: bool) -> subprocess.Popen[bytes]:
    """py-spy samples the parent (collapsed stacks) and writes them when the parent exits.

    Without ``idle`` py-spy drops samples it judges idle (the epoll wait), but
    it counts a blocking read of a database reply as busy; with ``idle`` every
    sample is kept: where the parent's wall-clock time goes.
    """
    return subprocess.Popen(
        [*PY_SPY, *(["--idle"] if idle else []), "-o", str(path), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def throughput_line(
    backend: str,
    args: argparse.Namespace,
    baseline: float,
    figures: SupervisorFigures,
    *,
    tasks: int,
    label: str = "",
) -> str:
    window = figures.window
    busy = window.parent_cpu / window.seconds if window.seconds > 0 else math.nan
    per_task = window.parent_cpu / window.tasks * 1e6 if window.tasks else math.nan
    latencies = start_latencies(figures.rows)
    return (
        f"{label}backend={backend} workers={args.workers} k={args.batch} tasks={tasks}"
        f" supervisor={figures.rate:.0f}/s baseline={baseline:.0f}/s"
        f" ratio={figures.rate / baseline:.2f}"
        f" start_latency_p50={percentile(latencies, 50):.2f}s"
        f" p99={percentile(latencies, 99):.2f}s"
        f" parent_cpu={window.parent_cpu:.1f}s ({busy:.0%} of a core, {per_task:.0f}us/task)"
        f" children_cpu={window.children_cpu:.1f}s lifetime_cpu={figures.lifetime_cpu:.1f}s"
        f" parent_rss={figures.parent_rss_peak / MIB:.0f}MiB"
        f" child_rss_max={figures.child_rss_peak / MIB:.0f}MiB"
        f" outcomes={outcomes(figures.rows)}"
        + (statements_field(figures.statements, tasks) if figures.statements else "")
    )


def statements_field(statements: Counter[str], tasks: int) -> str:
    """`` statements/task=4.1 (claim_select=0.51 ...)``: the round trips each task cost."""
    detail = " ".join(f"{name}={count / tasks:.2f}" for name, count in statements.most_common())
    return f" statements/task={sum(statements.values()) / tasks:.2f} ({detail})"


def run_throughput(backend: str, args: argparse.Namespace, run: int) -> tuple[str, float, float]:
    """One repetition: the baseline, then the supervisor; its line and (supervisor, baseline)."""
    baseline = run_baseline(backend, args.mysql_dsn, args.tasks, args.batch)
    profile = Path(f"{args.profile}.{backend}.{run}.txt") if args.profile else None
    figures = run_supervisor(backend, args, profile, args.tasks)
    return (
        throughput_line(backend, args, baseline, figures, tasks=args.tasks),
        figures.rate,
        baseline,
    )


def run_fresh(backend: str, args: argparse.Namespace) -> tuple[str, float, float]:
    """Throughput with a fresh child process per task (``--max-tasks-per-child 1``).

    The same measurement as the throughput mode, on ``--fresh-tasks`` tasks:
    what a fork-exec, a handler import and a reap per task cost.
    """
    baseline = run_baseline(backend, args.mysql_dsn, args.fresh_tasks, args.batch)
    figures = run_supervisor(
        backend, args, None, args.fresh_tasks, extra=("--max-tasks-per-child", "1")
    )
    line = throughput_line(
        backend,
        args,
        baseline,
        figures,
        tasks=args.fresh_tasks,
        label="mode=fresh max_tasks_per_child=1 ",
    )
    return line, figures.rate, baseline


def spread(values: Sequence[float], fmt: str) -> str:
    """``min/median/max`` of ``values``, each formatted with ``fmt``."""
    return "/".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def spread_line(backend: str, results: Sequence[tuple[float, float]], label: str = "") -> str:
    rates = [s for s, _ in results]
    baselines = [b for _, b in results]
    ratios = [s / b for s, b in results]
    return (
        f"spread {label}backend={backend} runs={len(results)} (min/median/max)"
        f" supervisor={spread(rates, '.0f')}/s baseline={spread(baselines, '.0f')}/s"
        f" ratio={spread(ratios, '.2f')}"
    )


# ---------------------------------------------------------------------------- other modes


def run_pickup(backend: str, args: argparse.Namespace) -> str:
    """Idle queue, one task at a time: the latency a lone task sees before a child starts it."""
    with scratch(backend, args.mysql_dsn) as db:
        conn = db.connect()
        try:
            with supervisor(db, args.workers) as run:
                warm_up(conn, run)
                # Spacing drawn around the mean: a fixed spacing would arrive at the same few
                # phases of the poll timer, and the median would measure that phase.
                spacing = random.Random(args.pickup_tasks)
                for _ in range(args.pickup_tasks):
                    time.sleep(spacing.uniform(0.5, 1.5) * args.pickup_spacing)
                    enqueue_plain(conn, 1)
                wait_drained(conn, run, lambda _count: None)
            rows = read_times(conn)[1:]  # without the warm-up task
        finally:
            conn.close()
    return (
        f"mode=pickup backend={backend} workers={args.workers} tasks={len(rows)}"
        f" spacing={args.pickup_spacing}s(mean) {latency_fields('pickup', start_latencies(rows))}"
        f" outcomes={outcomes(rows)}"
    )


def run_idle(backend: str, args: argparse.Namespace) -> str:
    """An idle supervisor for a while: its CPU, and on MySQL the statements it sends."""
    with scratch(backend, args.mysql_dsn) as db, QueryRelay.for_scratch(db) as relay:
        conn = db.connect()
        try:
            with supervisor(db, args.workers, url=relay.url if relay else None) as run:
                warm_up(conn, run)
                cpu_before, seen_before = run.usage.cpu(), relay.snapshot() if relay else Counter()
                time.sleep(args.idle_seconds)
                cpu_after, seen_after = run.usage.cpu(), relay.snapshot() if relay else Counter()
        finally:
            conn.close()
    parent = (cpu_after[0] - cpu_before[0]) / args.idle_seconds
    children = (cpu_after[1] - cpu_before[1]) / args.idle_seconds
    line = (
        f"mode=idle backend={backend} workers={args.workers} seconds={args.idle_seconds:.0f}"
        f" cpu={parent + children:.2%} of a core (parent {parent:.2%}, children {children:.2%})"
    )
    if relay is None:
        return line
    seen = seen_after - seen_before
    per_s = {name: count / args.idle_seconds for name, count in seen.most_common()}
    detail = " ".join(f"{name}={rate:.1f}" for name, rate in per_s.items())
    return f"{line} statements={sum(per_s.values()):.1f}/s ({detail})"


def run_deadlines(backend: str, args: argparse.Namespace) -> str:
    """Hanging tasks with a 1 s budget, one round per ``workers``: how late was each kill.

    Two figures: ``kill_late`` when the parent logged the kill (its loop's
    precision), and ``recorded_late`` when the timeout reached the row (plus the
    write), both after ``deadline_at``.
    """
    with scratch(backend, args.mysql_dsn) as db:
        conn = db.connect()
        store = open_store(db.dsn)
        try:
            with supervisor(db, args.workers) as run:
                warm_up(conn, run)
                for start in range(0, args.deadline_tasks, args.workers):
                    count = min(args.workers, args.deadline_tasks - start)
                    store.enqueue_many([NewTask(type=HANG, budget_s=1.0)] * count)
                    wait_drained(conn, run, lambda _count: None)
                    wait_for_children(run, args.workers)
                kills = kill_times(run.log_path)
            rows = [r for r in read_times(conn) if r.type == HANG]
            lateness = deadline_lateness(rows, kills, db_utc_offset(conn, backend))
        finally:
            store.close()
            conn.close()
    return (
        f"mode=deadlines backend={backend} workers={args.workers} tasks={len(rows)} budget=1s"
        f" {latency_fields('kill_late', lateness.killed)}"
        f" {latency_fields('recorded_late', lateness.recorded)}"
        f" outcomes={outcomes(rows)}"
    )


@attrs.frozen(kw_only=True)
class Lateness:
    """Seconds after ``deadline_at``, for the rows that ended ``timeout``.

    ``killed``: when the parent logged the kill (by its clock, with time zone);
    ``recorded``: when the timeout reached the row (``completed_at``, the database clock).
    """

    killed: list[float]
    recorded: list[float]


def deadline_lateness(
    rows: Sequence[TaskTimes], kills: dict[int, datetime], utc_offset: timedelta
) -> Lateness:
    timeouts = [r for r in rows if r.failure == "timeout" and r.completed_at]
    return Lateness(
        killed=[
            (kills[r.id] - db_utc(r.deadline_at, utc_offset)).total_seconds()
            for r in timeouts
            if r.id in kills
        ],
        recorded=[
            (r.completed_at - r.deadline_at).total_seconds() for r in timeouts if r.completed_at
        ],
    )


def db_utc_offset(conn: DbConnection, backend: str) -> timedelta:
    """How far the database clock's ``NOW()`` is ahead of UTC."""
    return timedelta(microseconds=int(execute(conn, UTC_OFFSET_SQL[backend])[0][0]))


def db_utc(value: datetime, utc_offset: timedelta) -> datetime:
    """A naive timestamp the database wrote, as an aware UTC datetime."""
    return (value - utc_offset).replace(tzinfo=UTC)


def run_blackhole(args: argparse.Namespace) -> str:
    """Deadline kills while MariaDB hangs: the parent must not wait on the database to kill.

    The supervisor reaches the server through a :class:`TcpProxy`. Once it is
    warm, ``--blackhole-tasks`` hanging tasks are enqueued with budgets spread
    over one second from ``--blackhole-budget``; when all are running (claimed,
    so their children hang), the proxy is blackholed for ``--blackhole``
    seconds: connections stay open, nothing is forwarded, nothing answers.
    Every deadline falls inside it. Kill lateness is measured as in
    ``--deadlines`` (the parent's log line against ``deadline_at``);
    ``killed_in_blackhole`` counts the kills logged before the restore. After
    the restore, ``recorded_after_restore`` says how long the timeouts took to
    reach the rows, and ``timeout_rows`` how many ended ``failed/timeout``.
    """
    count = args.blackhole_tasks
    workers = max(args.workers, count)  # every hanging task must be running when it starts
    budgets = [args.blackhole_budget + i / count for i in range(count)]
    with scratch("mysql", args.mysql_dsn) as db:
        assert isinstance(db.dsn, MysqlDsn)
        if db.dsn.unix_socket:
            raise BenchError("--blackhole needs a TCP --mysql-dsn (the proxy speaks TCP)")
        conn = db.connect()
        store = open_store(db.dsn)
        lease = ("--lease", str(max(LEASE_S, 3 * args.blackhole)))  # no lease runs out meanwhile
        try:
            with (
                TcpProxy(db.dsn.host or "127.0.0.1", db.dsn.port) as proxy,
                supervisor(
                    db,
                    workers,
                    url=mysql_url(db.dsn, host=proxy.host, port=proxy.port),
                    extra=lease,
                ) as run,
            ):
                warm_up(conn, run)
                wait_for_children(run, workers)
                store.enqueue_many([NewTask(type=HANG, budget_s=b) for b in budgets])
                first_deadline = time.monotonic() + budgets[0]
                wait_running(conn, run, count, before=first_deadline - 0.2)
                proxy.blackhole()
                blackholed_at = datetime.now(UTC)
                end = time.monotonic() + args.blackhole
                while time.monotonic() < end:
                    run.check_alive()
                    time.sleep(min(POLL_S, max(0.0, end - time.monotonic())))
                restored_at = datetime.now(UTC)
                in_blackhole = kill_times(run.log_path)
                proxy.restore()
                wait_drained(conn, run, lambda _count: None)
                kills = kill_times(run.log_path)
            rows = [r for r in read_times(conn) if r.type == HANG]
            utc_offset = db_utc_offset(conn, "mysql")
        finally:
            store.close()
            conn.close()
    lateness = deadline_lateness(rows, kills, utc_offset)
    recorded = [
        (db_utc(r.completed_at, utc_offset) - restored_at).total_seconds()
        for r in rows
        if r.failure == "timeout" and r.completed_at
    ]
    deadlines_inside = sum(
        blackholed_at <= db_utc(r.deadline_at, utc_offset) <= restored_at for r in rows
    )
    killed_inside = sum(when <= restored_at for when in in_blackhole.values())
    timeout_rows = sum(r.status == "failed" and r.failure == "timeout" for r in rows)
    return (
        f"mode=deadlines blackhole={args.blackhole:g}s backend=mysql workers={workers}"
        f" tasks={len(rows)} budget={budgets[0]:g}-{budgets[-1]:g}s"
        f" deadlines_in_blackhole={deadlines_inside}/{len(rows)}"
        f" {latency_fields('kill_late', lateness.killed)}"
        f" killed_in_blackhole={killed_inside}/{len(rows)}"
        f" {latency_fields('recorded_after_restore', recorded)}"
        f" timeout_rows={timeout_rows}/{len(rows)} outcomes={outcomes(rows)}"
    )


def wait_running(conn: DbConnection, run: Supervised, count: int, before: float) -> None:
    """Wait until ``count`` hanging tasks are running; fail if that is not so by ``before``."""
    while int(execute(conn, RUNNING_HANG_SQL)[0][0]) < count:
        run.check_alive()
        if time.monotonic() > before:
            raise BenchError(
                f"the {count} hanging tasks were not all running before the first deadline"
                " (a slow machine: try a larger --blackhole-budget)"
            )
        time.sleep(0.02)


def kill_times(log_path: Path) -> dict[int, datetime]:
    """When the parent logged each deadline kill (by its own clock, with time zone), by task id."""
    kills = {}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line a child printed
        if isinstance(record, dict) and record.get("message") == KILL_MESSAGE:
            kills[int(record["task_id"])] = datetime.fromisoformat(record["time"])
    return kills


def wait_for_children(run: Supervised, workers: int) -> None:
    """Killed children are replaced; let the replacements start before the next round."""
    deadline = time.monotonic() + 30
    while run.usage.child_count < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)


# ---------------------------------------------------------------------------- peer: Celery

CELERY_TASK = "sv_bench.noop"
CELERY_APP = f'''"""The benchmark's Celery app: one no-op task that only says when it started."""

import json
import os
import time

from celery import Celery

app = Celery("sv_bench")
app.conf.update(json.loads(os.environ["SV_BENCH_CELERY_CONF"]))


@app.task(name="{CELERY_TASK}")
def noop():
    return time.time()
'''
PUBLISH_CHUNK = 1000  # task ids per EXISTS / MGET while watching the results


class PeerUnavailable(Exception):
    """The peer cannot run here: a package or the broker is missing (one line says which)."""


def check_celery(redis_url: str) -> None:
    """Fail with one line unless celery and redis(-py) import and the redis server answers."""
    try:
        import celery  # noqa: F401
        import redis
    except ImportError as exc:
        raise PeerUnavailable(
            f"--peer celery needs celery and redis (pip install -e '.[bench]'): {exc}"
        ) from None
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        raise PeerUnavailable(f"--peer celery needs a redis server at {redis_url}: {exc}") from None


def celery_conf(redis_url: str, prefix: str) -> dict[str, Any]:
    """One run's Celery settings; every key it makes in redis starts with ``prefix``."""
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "broker_transport_options": {"global_keyprefix": prefix},
        "result_backend_transport_options": {"global_keyprefix": prefix},
        "task_default_queue": f"{prefix}queue",
        "task_acks_late": True,  # acknowledged when done, like a completion write
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
    }


@attrs.frozen(kw_only=True)
class PeerFigures:
    rate: float
    outcomes: str
    window: DrainWindow
    lifetime_cpu: float
    parent_rss_peak: int
    child_rss_peak: int


def run_celery(args: argparse.Namespace) -> PeerFigures:
    """Celery's prefork pool with ``-w`` processes draining ``-n`` no-op tasks over redis.

    Measured like the supervisor's drain rate: the queue is filled first (one
    ``send_task`` per task, before any worker runs), then ``celery worker -P
    prefork -c W`` starts and drains it. Each task returns ``time.time()`` at its
    start, and the redis result backend stamps ``date_done`` when it stores the
    result; the rate is completed tasks over the first start to the last
    ``date_done``, as for the supervisor (first ``started_at`` to last
    ``completed_at``). Acknowledgement is late (after the task), results are
    stored, JSON throughout, prefetch at Celery's default. Both clocks are this
    host's. CPU and RSS of the worker's process tree are sampled as for the
    supervisor. Everything lives under a random key prefix in the redis
    database of ``--redis-url``, and exactly those keys are deleted afterwards.
    """
    import redis
    from celery import Celery

    prefix = f"sv_bench_{secrets.token_hex(4)}_"
    conf = celery_conf(args.redis_url, prefix)
    client = redis.Redis.from_url(args.redis_url)
    app = Celery("sv_bench_publisher")
    app.conf.update(conf)
    ids = [f"{prefix}{i}" for i in range(args.tasks)]
    keys = [f"{prefix}celery-task-meta-{task_id}" for task_id in ids]
    try:
        with tempfile.TemporaryDirectory(prefix="sv_bench_celery_") as folder:
            (Path(folder) / "sv_bench_celery.py").write_text(CELERY_APP)
            with app.producer_or_acquire() as producer:
                for task_id in ids:
                    app.send_task(CELERY_TASK, task_id=task_id, producer=producer)
            env = dict(os.environ, SV_BENCH_CELERY_CONF=json.dumps(conf))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH")]))
            command = [
                sys.executable, "-m", "celery", "-A", "sv_bench_celery", "worker",
                "-P", "prefork", "-c", str(args.workers), "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            log_path = Path(folder) / "celery.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
            run = Supervised(process=process, usage=TreeUsage(process.pid), log_path=log_path)
            try:
                probe = WindowProbe(run.usage, args.tasks)
                wait_results(client, keys, run, probe)
            finally:
                run.lifetime_cpu = stop(process)
        metas = [
            json.loads(value)
            for start in range(0, len(keys), PUBLISH_CHUNK)
            for value in client.mget(keys[start : start + PUBLISH_CHUNK])
            if value is not None
        ]
    finally:
        delete_prefixed(client, prefix)
        client.close()
    done = [m for m in metas if m["status"] == "SUCCESS"]
    rate = 0.0
    if done:
        first = min(float(m["result"]) for m in done)
        last = max(datetime.fromisoformat(m["date_done"]).timestamp() for m in done)
        rate = len(done) / max(last - first, 1e-6)
    counts = Counter(
        "completed" if m["status"] == "SUCCESS" else m["status"].lower() for m in metas
    )
    return PeerFigures(
        rate=rate,
        outcomes=",".join(f"{name}={n}" for name, n in sorted(counts.items())),
        window=probe.window(),
        lifetime_cpu=run.lifetime_cpu,
        parent_rss_peak=run.usage.parent_rss_peak,
        child_rss_peak=run.usage.child_rss_peak,
    )


def wait_results(
    client: Any, keys: Sequence[str], run: Supervised, on_poll: Callable[[int], None]
) -> None:
    """Poll how many results are stored until all are; ``on_poll(unfinished)`` after each look."""

    def unfinished() -> int:
        stored = sum(
            int(client.exists(*keys[start : start + PUBLISH_CHUNK]))
            for start in range(0, len(keys), PUBLISH_CHUNK)
        )
        return len(keys) - stored

    wait_until_none_left(unfinished, run, on_poll, "celery: ")


def delete_prefixed(client: Any, prefix: str) -> None:
    """Delete the keys this run made (and only those): everything under its random prefix."""
    batch = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= PUBLISH_CHUNK:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


def peer_line(args: argparse.Namespace, figures: PeerFigures) -> str:
    """The same ``key=value`` fields as the supervisor's throughput line, where they apply."""
    window = figures.window
    busy = window.parent_cpu / window.seconds if window.seconds > 0 else math.nan
    per_task = window.parent_cpu / window.tasks * 1e6 if window.tasks else math.nan
    return (
        f"mode=peer peer=celery broker=redis pool=prefork workers={args.workers}"
        f" tasks={args.tasks} celery={figures.rate:.0f}/s"
        f" parent_cpu={window.parent_cpu:.1f}s ({busy:.0%} of a core, {per_task:.0f}us/task)"
        f" children_cpu={window.children_cpu:.1f}s lifetime_cpu={figures.lifetime_cpu:.1f}s"
        f" parent_rss={figures.parent_rss_peak / MIB:.0f}MiB"
        f" child_rss_max={figures.child_rss_peak / MIB:.0f}MiB"
        f" outcomes={figures.outcomes}"
    )


# ---------------------------------------------------------------------------- query relay


class QueryRelay:
    """A TCP relay in front of MySQL that counts the commands the supervisor sends.

    The server's own counters (``SHOW GLOBAL STATUS``) count every client of a
    shared server; this counts exactly one: every client packet that starts a
    command (sequence id 0), named by the store's query it runs (or BEGIN, ...).
    """

    def __init__(self, upstream: MysqlDsn) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = mysql_url(upstream, host="127.0.0.1", port=self.port)
        self._seen: Counter[str] = Counter()
        self._namer = StatementNamer()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    @classmethod
    @contextlib.contextmanager
    def for_scratch(cls, db: Scratch, wanted: bool = True) -> Iterator[QueryRelay | None]:
        """A relay in front of ``db`` if wanted and it is MySQL (SQLite has no wire to tap)."""
        if not wanted or not isinstance(db.dsn, MysqlDsn):
            yield None
            return
        relay = cls(db.dsn)
        try:
            yield relay
        finally:
            relay.listener.close()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._seen)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = self._connect_upstream()
                for source, sink, tap in ((server, client, None), (client, server, self._tap())):
                    threading.Thread(
                        target=self._pump, args=(source, sink, tap), daemon=True
                    ).start()

    def _connect_upstream(self) -> socket.socket:
        if self.upstream.unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.upstream.unix_socket)
            return sock
        return socket.create_connection((self.upstream.host, self.upstream.port))

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, tap: PacketTap | None) -> None:
        with contextlib.suppress(OSError), source, sink:
            while data := source.recv(65536):
                sink.sendall(data)
                if tap is not None:
                    tap.feed(data)

    def _tap(self) -> PacketTap:
        return PacketTap(self._count)

    def _count(self, payload: bytes) -> None:
        with self._lock:
            self._seen[self._namer(payload)] += 1


class PacketTap:
    """Splits a client's byte stream into MySQL packets and reports each command's payload."""

    def __init__(self, on_command: Callable[[bytes], None]) -> None:
        self._buffer = bytearray()
        self._on_command = on_command

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[:3], "little")
            if len(self._buffer) < 4 + length:
                return
            sequence, payload = self._buffer[3], bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            if sequence == 0 and payload:  # the handshake's packets never have sequence 0
                self._on_command(payload)


COMMANDS = {0x01: "QUIT", 0x02: "INIT_DB", 0x0E: "PING", 0x16: "PREPARE", 0x17: "EXECUTE"}


class StatementNamer:
    """Names a statement by the store's named query it came from, else by its first SQL word.

    pymysql sends a query's text verbatim up to its first ``%(param)s``, so that
    prefix identifies the named block (the longest matching prefix wins).
    """

    def __init__(self) -> None:
        prefixes = [(text.split("%(")[0], name) for name, text in load_queries("mysql.sql").items()]
        self._prefixes = sorted(prefixes, key=lambda pair: -len(pair[0]))

    def __call__(self, payload: bytes) -> str:
        if payload[0] != 0x03:  # not COM_QUERY
            return COMMANDS.get(payload[0], f"COM_{payload[0]:#x}")
        sql = payload[1:].decode("utf-8", errors="replace")
        for prefix, name in self._prefixes:
            if sql.startswith(prefix):
                return name
        words = sql.split(maxsplit=1)
        return words[0].upper() if words else "EMPTY"


# ---------------------------------------------------------------------------- command line


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput and latency of the supervisor against the bare database loop.",
        epilog="With no mode flag, runs the throughput benchmark. Prints one line per run.",
    )
    parser.add_argument("-n", "--tasks", type=positive, default=20000, help="tasks per run [20000]")
    parser.add_argument("-w", "--workers", type=positive, default=8, help="supervisor workers [8]")
    parser.add_argument("-k", "--batch", type=positive, default=8, help="baseline claim batch [8]")
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    parser.add_argument(
        "--mysql-dsn",
        default=DEFAULT_MYSQL_DSN,
        help="server for throwaway schemas sv_bench_*; password may come from "
        f"SUPERVISOR_DB_PASSWORD [{DEFAULT_MYSQL_DSN}]",
    )
    parser.add_argument("--repeat", type=positive, default=1, help="runs per configuration [1]")
    parser.add_argument(
        "--count-queries",
        action="store_true",
        help="MySQL throughput runs go through a counting relay: statements per task by name"
        " (the relay's extra hop slows the run)",
    )
    modes = parser.add_argument_group("modes (any combination; default: --throughput)")
    modes.add_argument("--throughput", action="store_true", help="drain N no-op tasks")
    modes.add_argument("--pickup", action="store_true", help="idle queue, spaced single tasks")
    modes.add_argument("--idle", action="store_true", help="CPU and queries/s of an idle worker")
    modes.add_argument("--deadlines", action="store_true", help="kill lateness at the deadline")
    modes.add_argument(
        "--fresh",
        action="store_true",
        help="throughput with a fresh child per task (--max-tasks-per-child 1), --fresh-tasks",
    )
    parser.add_argument("--fresh-tasks", type=positive, default=1000, help="[1000]")
    parser.add_argument(
        "--peer",
        choices=["celery"],
        help="also run another system on the same no-op workload, with -n tasks and -w worker"
        " processes (celery: prefork pool over redis; needs pip install -e '.[bench]')",
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help=f"redis for --peer celery; only keys under a random prefix are made and deleted"
        f" [{DEFAULT_REDIS_URL}]",
    )
    parser.add_argument(
        "--blackhole",
        type=float,
        metavar="SECONDS",
        help="with --deadlines (MySQL only): the database hangs for SECONDS while hanging tasks"
        " reach their deadlines; how late were the kills",
    )
    parser.add_argument("--blackhole-tasks", type=positive, default=20, help="[20]")
    parser.add_argument(
        "--blackhole-budget",
        type=float,
        default=1.5,
        help="the first hanging task's budget; the others spread over the next second [1.5]",
    )
    parser.add_argument("--pickup-tasks", type=positive, default=50, help="[50]")
    parser.add_argument("--pickup-spacing", type=float, default=0.5, help="seconds [0.5]")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="[30]")
    parser.add_argument("--deadline-tasks", type=positive, default=50, help="[50]")
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="record the parent with py-spy during throughput runs into PREFIX.<backend>.<run>.txt"
        " (collapsed stacks; the sampling itself costs throughput)",
    )
    parser.add_argument(
        "--profile-idle",
        action="store_true",
        help="keep py-spy's idle samples too: wall-clock time, waiting included",
    )
    args = parser.parse_args(argv)
    if not (args.throughput or args.pickup or args.idle or args.deadlines or args.fresh):
        args.throughput = True
    if args.blackhole is not None:
        if not args.deadlines:
            parser.error("--blackhole goes with --deadlines")
        if args.backend == "sqlite":
            parser.error("--blackhole needs MySQL (SQLite has no connection to hang)")
        if args.blackhole <= args.blackhole_budget + 1:
            parser.error("--blackhole must outlast every deadline: > --blackhole-budget + 1")
    try:
        dsn = parse_dsn(args.mysql_dsn)
    except UsageError as exc:
        parser.error(f"--mysql-dsn: {exc}")
    if not isinstance(dsn, MysqlDsn):
        parser.error("--mysql-dsn must be a mysql:// DSN")
    args.mysql_dsn = dsn
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    try:
        if args.peer:
            check_celery(args.redis_url)
    except PeerUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    try:
        run_rounds(args, backends)
        for backend in backends:
            for enabled, mode in (
                (args.pickup, run_pickup),
                (args.idle, run_idle),
                (args.deadlines and args.blackhole is None, run_deadlines),
            ):
                for _ in range(args.repeat if enabled else 0):
                    print(mode(backend, args), flush=True)
        for _ in range(args.repeat if args.blackhole is not None else 0):
            print(run_blackhole(args), flush=True)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


def run_rounds(args: argparse.Namespace, backends: Sequence[str]) -> None:
    """Throughput, fresh-process and peer runs, interleaved by repetition so that a noisy
    spell of the machine hits every system alike; then a spread line for each."""
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    peer_rates = []
    for run in range(1, args.repeat + 1):
        for backend in backends:
            for enabled, label, measure in (
                (args.throughput, "", lambda b=backend, r=run: run_throughput(b, args, r)),
                (args.fresh, "mode=fresh ", lambda b=backend: run_fresh(b, args)),
            ):
                if enabled:
                    line, rate, baseline = measure()
                    print(line, flush=True)
                    results.setdefault((label, backend), []).append((rate, baseline))
        if args.peer:
            figures = run_celery(args)
            print(peer_line(args, figures), flush=True)
            peer_rates.append(figures.rate)
    if args.repeat > 1:
        for (label, backend), pairs in results.items():
            print(spread_line(backend, pairs, label), flush=True)
        if peer_rates:
            print(
                f"spread mode=peer peer=celery runs={len(peer_rates)} (min/median/max)"
                f" celery={spread(peer_rates, '.0f')}/s",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
