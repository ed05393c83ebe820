"""A reproducible chaos run against MariaDB/MySQL: nothing enqueued may be lost or finish twice.

The run creates its own throwaway database (dropped at the end) and starts
several real ``python -m supervisor`` processes, each reaching the database
only through its own TCP proxy that this script controls, so one supervisor
can be cut off alone. A feeder enqueues a mixed workload (fast, slow,
failing-then-succeeding, always failing, crashing with ``os._exit``, running
out of budget) while faults chosen by a seeded RNG hit the supervisors:

* ``kill9``: SIGKILL a supervisor (its children die with it), start a replacement;
* ``stop``:  SIGSTOP a supervisor for longer than the lease, then SIGCONT;
* ``cut``:   cut a supervisor's proxy (connections closed, new ones refused) for
             some seconds, then restore it;
* ``blackhole``: blackhole a supervisor's proxy (connections stay open, nothing is
             forwarded either way: a hanging database) for some seconds, then restore it;
* ``hup``:   SIGHUP a supervisor (reload, children replaced gracefully).

Two records are kept *outside* the database under test: every acknowledged
enqueue id (``acked.jsonl``), and every handler execution: each child appends
``{task_id, attempt, pid, host, supervisor, event}`` lines (``start``, then
``return`` or ``raise``) to its own ``O_APPEND`` file. At the end the feeder
stops, every fault is undone, the queue is left to settle, every supervisor is
TERMed, and the history is checked the way Jepsen's total-queue checker does:

* ``lost``: acknowledged ids missing from the table or not in a terminal state;
* ``not_terminal``: rows still ``queued`` or ``running``;
* ``completed_twice``: a task whose handler returned in more than one execution
  where more than one completion was accepted, or a second return that is not
  shown to have been rejected (claim lost, result not recorded, supervisor
  killed); a completed row must also be backed by a returning execution of
  exactly its ``attempts`` under exactly its ``claimed_by``;
* ``duplicate_executions``: executions whose result was not what the database
  kept and after which the task ran again; each must be ``explained``: its
  supervisor logged the claim as lost or the result as not recorded, or was
  killed, and had a fault while the execution was outstanding;
* ``anomalies``: anything else that breaks the contract (two executions of the
  same attempt, attempts above ``max_attempts``, rows nobody enqueued, a
  supervisor that exited by itself or not with 0 on TERM).

It prints one summary line and exits 1 on any violation (the scratch
directory with every log is then kept and named on stderr)::

    python scripts/chaos.py --minutes 2 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pymysql

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from supervisor.dsn import MysqlDsn, parse_dsn  # noqa: E402
from supervisor.errors import StoreError  # noqa: E402
from supervisor.producer import new_task  # noqa: E402
from supervisor.store import NewTask, Store, open_store  # noqa: E402
from tests.e2e.tcp_proxy import TcpProxy  # noqa: E402

DEFAULT_DSN = os.environ.get("SUPERVISOR_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")
FAULT_KINDS = ("kill9", "stop", "cut", "blackhole", "hup")
# The faults that can cost a supervisor its claims.
RESCUE_FAULTS = ("kill9", "stop", "cut", "blackhole")
TERMINAL = ("completed", "failed", "cancelled")
DRAIN_TIMEOUT_S = 10.0

# Every handler records its execution outside the database before and after its work.
PRELUDE = """
import json
import os
import socket
import time


def record(task, event):
    options = json.loads(task.options)
    line = {
        "task_id": task.id,
        "attempt": task.attempt,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "supervisor": os.environ["CHAOS_SUPERVISOR"],
        "event": event,
        "at": time.time(),
    }
    path = os.path.join(options["executions"], f"{os.getpid()}.jsonl")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\\n").encode())
    finally:
        os.close(fd)
"""

HANDLERS = {
    "fast": """
        def handle(task, progress):
            record(task, "start")
            record(task, "return")
    """,
    "slow": """
        def handle(task, progress):
            record(task, "start")
            seconds = json.loads(task.options)["seconds"]
            for step in range(10):
                time.sleep(seconds / 10)
                progress((step + 1) * 10)
            record(task, "return")
    """,
    "flaky": """
        def handle(task, progress):
            record(task, "start")
            if task.attempt < json.loads(task.options)["succeeds_on"]:
                record(task, "raise")
                raise RuntimeError(f"attempt {task.attempt} fails on purpose")
            record(task, "return")
    """,
    "failing": """
        def handle(task, progress):
            record(task, "start")
            record(task, "raise")
            raise ValueError("this handler always fails")
    """,
    "crash": """
        def handle(task, progress):
            record(task, "start")
            os._exit(3)
    """,
    "hang": """
        def handle(task, progress):
            record(task, "start")
            time.sleep(3600)
    """,
}
# (type, weight): most work succeeds, every failure mode is exercised.
WORKLOAD = (("fast", 35), ("slow", 25), ("flaky", 15), ("failing", 8), ("crash", 7), ("hang", 10))


# ---------------------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class Execution:
    task_id: int
    attempt: int
    pid: int
    host: str
    supervisor: str
    started_at: float
    ended: str | None  # "return", "raise", or None (killed, crashed, hung)


@attrs.frozen(kw_only=True)
class Row:
    id: int
    type: str
    status: str
    attempts: int
    max_attempts: int
    failure: str | None
    claimed_by: str | None


@attrs.define
class Fault:
    kind: str
    label: str
    started_at: float
    ended_at: float | None = None  # None: to the end of that supervisor's life (kill9)


@attrs.define
class SupervisorRun:
    """One start of ``python -m supervisor`` behind one proxy slot."""

    label: str
    slot: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    killed: bool = False
    stopped: bool = False
    exit_code: int | None = None
    owner: str | None = None

    def read_owner(self) -> str | None:
        if self.owner is None:
            for record in read_log(self.log_path):
                if record.get("message") == "supervisor starting":
                    self.owner = str(record["owner"])
                    break
        return self.owner


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "message" in record:
                yield record


# ---------------------------------------------------------------------------- the run


class Chaos:
    def __init__(self, args: argparse.Namespace, admin: MysqlDsn, workdir: Path) -> None:
        self.args = args
        self.admin = admin
        self.workdir = workdir
        self.database = f"sv_chaos_{args.seed}_{uuid.uuid4().hex[:8]}"
        self.dsn = admin.with_database(self.database)
        self.rng = random.Random(f"chaos-{args.seed}-faults")
        self.feed_rng = random.Random(f"chaos-{args.seed}-feed")
        self.handlers_dir = workdir / "handlers"
        self.executions_dir = workdir / "executions"
        self.logs_dir = workdir / "logs"
        self.acked_path = workdir / "acked.jsonl"
        self.proxies: list[TcpProxy] = []
        self.current: list[SupervisorRun] = []
        self.runs: list[SupervisorRun] = []
        self.faults: list[Fault] = []
        self.acked: list[int] = []
        self.unacked_batches = 0
        self.anomalies: list[str] = []
        self.stop_feeding = threading.Event()
        self.began_at = time.time()
        self.started = 0

    # ------------------------------------------------------------ set-up

    def create_database(self) -> None:
        with contextlib.closing(admin_connection(self.admin)) as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{self.database}`")

    def drop_database(self) -> None:
        with contextlib.closing(admin_connection(self.admin)) as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{self.database}`")

    def write_handlers(self) -> None:
        for directory in (self.handlers_dir, self.executions_dir, self.logs_dir):
            directory.mkdir(parents=True)
        for name, body in HANDLERS.items():
            source = PRELUDE + "\n\n" + textwrap.dedent(body).lstrip()
            (self.handlers_dir / f"{name}.py").write_text(source)

    def proxied_dsn(self, proxy: TcpProxy) -> str:
        d = self.dsn
        return f"mysql://{d.user}@127.0.0.1:{proxy.port}/{d.database}"

    def start_supervisor(self, slot: int) -> SupervisorRun:
        label = f"s{self.started}"
        self.started += 1
        log_path = self.logs_dir / f"{label}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["CHAOS_SUPERVISOR"] = label
        if self.dsn.password:
            env["SUPERVISOR_DB_PASSWORD"] = self.dsn.password
        command = [
            sys.executable,
            "-m",
            "supervisor",
            "--dsn",
            self.proxied_dsn(self.proxies[slot]),
            "--workers",
            str(self.args.workers),
            "--lease",
            str(self.args.lease),
            "--poll-interval",
            "0.1",
            "--backoff",
            "0,0.5,1",
            "--drain-timeout",
            str(DRAIN_TIMEOUT_S),
            "--handlers",
            str(self.handlers_dir),
            "--metrics-port",
            "0",
            "--log-format",
            "json",
            "--log-level",
            "INFO",
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        run = SupervisorRun(
            label=label, slot=slot, process=process, log_path=log_path, started_at=time.time()
        )
        self.runs.append(run)
        return run

    # ------------------------------------------------------------ workload

    def make_task(self) -> NewTask:
        rng = self.feed_rng
        mix = self.args.mix
        kind = rng.choices([k for k, _ in mix], weights=[w for _, w in mix])[0]
        options: dict[str, Any] = {"executions": str(self.executions_dir)}
        budget = 3600.0
        if kind == "slow":
            options["seconds"] = round(rng.uniform(0.5, 4.0), 2)
        elif kind == "flaky":
            options["succeeds_on"] = rng.choice((2, 3))
        elif kind == "hang":
            budget = round(rng.uniform(1.0, 3.0), 2)
        return new_task(kind, json.dumps(options), budget=budget, max_attempts=3)

    def feed(self, store: Store) -> None:
        """Enqueue small batches until told to stop; record every acknowledged id."""
        rng = self.feed_rng
        with self.acked_path.open("a") as acked:
            while not self.stop_feeding.is_set():
                batch = [self.make_task() for _ in range(rng.randint(1, 4))]
                try:
                    ids = store.enqueue_many(batch)
                except StoreError as exc:
                    self.unacked_batches += 1
                    print(f"chaos: enqueue not acknowledged: {exc}", file=sys.stderr)
                else:
                    self.acked.extend(ids)
                    for task_id in ids:
                        acked.write(json.dumps({"task_id": task_id}) + "\n")
                    acked.flush()
                self.stop_feeding.wait(len(batch) / self.args.rate * rng.uniform(0.5, 1.5))

    # ------------------------------------------------------------ faults

    def plan(self, window_s: float) -> list[tuple[float, str, int]]:
        """When, what and whom: every kind at least once, about one fault per 10 s."""
        count = max(len(FAULT_KINDS), int(window_s / 10))
        kinds = list(FAULT_KINDS) + [
            self.rng.choice(FAULT_KINDS) for _ in range(count - len(FAULT_KINDS))
        ]
        self.rng.shuffle(kinds)
        first, last = min(5.0, window_s / 4), max(window_s - 12.0, window_s / 2)
        times = sorted(self.rng.uniform(first, last) for _ in kinds)
        slots = [self.rng.randrange(self.args.supervisors) for _ in kinds]
        return list(zip(times, kinds, slots, strict=True))

    def inject(self, kind: str, slot: int) -> None:
        run = self.current[slot]
        self.check_alive(run)
        fault = Fault(kind=kind, label=run.label, started_at=time.time())
        self.faults.append(fault)
        lease = self.args.lease
        if kind == "kill9":
            run.killed = True
            run.process.send_signal(signal.SIGKILL)
            run.exit_code = run.process.wait()
            time.sleep(self.rng.uniform(0.0, 2.0))
            self.current[slot] = self.start_supervisor(slot)
            note = f"replaced by {self.current[slot].label}"
        elif kind == "stop":
            pause = lease + self.rng.uniform(1.0, 4.0)
            run.stopped = True
            run.process.send_signal(signal.SIGSTOP)
            time.sleep(pause)
            run.process.send_signal(signal.SIGCONT)
            run.stopped = False
            fault.ended_at = time.time()
            note = f"{pause:.1f} s"
        elif kind in ("cut", "blackhole"):
            outage = self.rng.uniform(1.0, 2 * lease + 3.0)
            if kind == "cut":
                self.proxies[slot].cut()
            else:
                self.proxies[slot].blackhole()
            time.sleep(outage)
            self.proxies[slot].restore()
            fault.ended_at = time.time()
            note = f"{outage:.1f} s"
        else:
            # A HUP before the interpreter reaches the supervisor's first line kills it, as it
            # would any process: reload only a supervisor that has started.
            deadline = time.monotonic() + 30
            while run.read_owner() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            run.process.send_signal(signal.SIGHUP)
            fault.ended_at = time.time()
            note = ""
        elapsed = fault.started_at - self.began_at
        print(f"chaos: t={elapsed:.1f}s {kind} {run.label} {note}".rstrip(), file=sys.stderr)

    def check_alive(self, run: SupervisorRun) -> None:
        code = run.process.poll()
        if code is not None and not run.killed and run.exit_code is None:
            run.exit_code = code
            self.anomalies.append(f"supervisor {run.label} exited by itself with {code}")

    # ------------------------------------------------------------ phases

    def run(self) -> int:
        self.create_database()
        try:
            return self.run_in_database()
        finally:
            self.drop_database()

    def run_in_database(self) -> int:
        self.write_handlers()
        store = open_store(self.dsn)
        store.migrate()
        upstream = (self.admin.host or "127.0.0.1", self.admin.port)
        self.proxies = [TcpProxy(*upstream) for _ in range(self.args.supervisors)]
        feeder = threading.Thread(target=self.feed, args=(store,), name="feeder", daemon=True)
        try:
            self.current = [self.start_supervisor(slot) for slot in range(self.args.supervisors)]
            window = self.args.minutes * 60
            began = time.monotonic()
            self.began_at = time.time()
            feeder.start()
            for at, kind, slot in self.plan(window):
                delay = began + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.inject(kind, slot)
            time.sleep(max(0.0, began + window - time.monotonic()))
            self.stop_feeding.set()
            feeder.join(30)
            settled = self.settle(store)
            self.terminate()
            faults = [attrs.asdict(f) for f in self.faults]
            (self.workdir / "faults.json").write_text(json.dumps(faults, indent=1))
            return self.check(settled)
        finally:
            self.stop_feeding.set()
            for run in self.runs:
                if run.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        run.process.send_signal(signal.SIGCONT)
                        run.process.kill()
                    run.process.wait()
            for proxy in self.proxies:
                proxy.close()
            store.close()

    def settle(self, store: Store) -> bool:
        """Undo every fault, then wait until nothing is queued or running (or time is up)."""
        for proxy in self.proxies:
            proxy.restore()
        for run in self.current:
            with contextlib.suppress(ProcessLookupError):
                run.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + self.args.settle
        while time.monotonic() < deadline:
            for run in self.current:
                self.check_alive(run)
            live = sum(c.count for c in store.counts() if c.status in ("queued", "running"))
            if live == 0:
                return True
            time.sleep(0.5)
        print(f"chaos: the queue did not settle within {self.args.settle} s", file=sys.stderr)
        return False

    def terminate(self) -> None:
        for run in self.current:
            if run.process.poll() is None:
                run.process.send_signal(signal.SIGTERM)
        for run in self.current:
            try:
                code = run.process.wait(DRAIN_TIMEOUT_S + 20)
            except subprocess.TimeoutExpired:
                self.anomalies.append(f"supervisor {run.label} did not exit on TERM")
                continue
            if run.exit_code is None and code != 0:
                self.anomalies.append(f"supervisor {run.label} exited with {code} on TERM")
            run.exit_code = code

    # ------------------------------------------------------------ the checker

    def rows(self) -> dict[int, Row]:
        with contextlib.closing(admin_connection(self.dsn)) as conn, conn.cursor() as cursor:
            cursor.execute(
                "SELECT id, type, status, attempts, max_attempts, failure, claimed_by FROM tasks"
            )
            return {
                int(r[0]): Row(
                    id=int(r[0]),
                    type=r[1],
                    status=r[2],
                    attempts=int(r[3]),
                    max_attempts=int(r[4]),
                    failure=r[5],
                    claimed_by=r[6],
                )
                for r in cursor.fetchall()
            }

    def executions(self) -> list[Execution]:
        """Every execution, from the per-child files: a start, and how it ended if it did."""
        started: dict[tuple[int, int, str, int], dict[str, Any]] = {}
        ends: dict[tuple[int, int, str, int], str] = {}
        for path in sorted(self.executions_dir.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    self.anomalies.append(f"unreadable execution record in {path.name}: {line!r}")
                    continue
                key = (record["task_id"], record["attempt"], record["supervisor"], record["pid"])
                if record["event"] == "start":
                    if key in started:
                        self.anomalies.append(f"one child started {key} twice")
                    started[key] = record
                else:
                    ends[key] = record["event"]
        return [
            Execution(
                task_id=key[0],
                attempt=key[1],
                supervisor=key[2],
                pid=key[3],
                host=record["host"],
                started_at=record["at"],
                ended=ends.get(key),
            )
            for key, record in sorted(started.items(), key=lambda item: item[1]["at"])
        ]

    def fates(self) -> dict[tuple[str, int, int], set[str]]:
        """What each supervisor logged about each attempt: (label, task, attempt) -> fates.

        ``recorded:<outcome>`` (its write won), ``lost`` (claim found lost, or the fenced
        write lost), ``not_recorded`` (database away at exit), ``refunded``.
        """
        found: dict[tuple[str, int, int], set[str]] = defaultdict(set)
        for run in self.runs:
            for record in read_log(run.log_path):
                if "task_id" not in record or "attempt" not in record:
                    continue
                key = (run.label, int(record["task_id"]), int(record["attempt"]))
                message, outcome = record["message"], record.get("outcome")
                if message.startswith("result not recorded"):
                    found[key].add("not_recorded")
                elif outcome == "lost":
                    found[key].add("lost")
                elif outcome == "refunded":
                    found[key].add("refunded" if record.get("won") else "lost")
                elif outcome is not None:
                    found[key].add(f"recorded:{outcome}")
        return found

    def had_fault(self, label: str, since: float, until: float) -> bool:
        """Did ``label`` suffer a fault overlapping [since, until]?"""
        for fault in self.faults:
            if fault.label != label or fault.kind not in RESCUE_FAULTS:
                continue
            ended = fault.ended_at if fault.ended_at is not None else float("inf")
            if fault.started_at <= until and ended >= since:
                return True
        return False

    def check(self, settled: bool) -> int:
        rows = self.rows()
        executions = self.executions()
        fates = self.fates()
        owners = {run.label: run.read_owner() for run in self.runs}
        killed = {run.label for run in self.runs if run.killed}
        acked = set(self.acked)

        missing = [t for t in acked if t not in rows]
        lost = missing + [t for t in acked if t in rows and rows[t].status not in TERMINAL]
        not_terminal = [r.id for r in rows.values() if r.status not in TERMINAL]
        for each in rows.values():
            if each.id not in acked:
                self.anomalies.append(f"task {each.id} is in the table but was never acknowledged")
            if each.attempts > each.max_attempts:
                self.anomalies.append(f"task {each.id}: attempts {each.attempts} > max")

        by_task: dict[int, list[Execution]] = defaultdict(list)
        for execution in executions:
            by_task[execution.task_id].append(execution)

        completed_twice: set[int] = set()
        duplicates: list[tuple[Execution, str]] = []
        for task_id, runs in by_task.items():
            row = rows.get(task_id)
            if row is None:
                self.anomalies.append(f"task {task_id} ran but is not in the table")
                continue
            seen_attempts: Counter[int] = Counter()
            for execution in runs:
                seen_attempts[execution.attempt] += 1
                if execution.attempt > row.attempts:
                    self.anomalies.append(
                        f"task {task_id}: attempt {execution.attempt} ran, row says {row.attempts}"
                    )
            refunded = {a for (label, t, a), f in fates.items() if t == task_id and "refunded" in f}
            for attempt, count in seen_attempts.items():
                if count > 1 and attempt not in refunded:
                    self.anomalies.append(f"task {task_id}: attempt {attempt} ran {count} times")

            winner = None
            if row.status == "completed":
                winner = next(
                    (
                        e
                        for e in runs
                        if e.attempt == row.attempts
                        and e.ended == "return"
                        and row.claimed_by is not None
                        and owners.get(e.supervisor) == row.claimed_by
                    ),
                    None,
                )
                if winner is None:
                    self.anomalies.append(
                        f"task {task_id} is completed (attempt {row.attempts} by "
                        f"{row.claimed_by}) but no such execution returned"
                    )
                accepted = [
                    e
                    for e in runs
                    if "recorded:completed" in fates.get((e.supervisor, task_id, e.attempt), ())
                ]
                # Only the attempt the row names may have had its completion accepted.
                if len(accepted) > 1 or any(e is not winner for e in accepted):
                    completed_twice.add(task_id)
            elif any(
                "recorded:completed" in fates.get((e.supervisor, task_id, e.attempt), ())
                for e in runs
            ):
                self.anomalies.append(
                    f"task {task_id}: a completion was accepted, row is {row.status}"
                )

            for index, execution in enumerate(runs):
                fate = fates.get((execution.supervisor, task_id, execution.attempt), set())
                owner = owners.get(execution.supervisor)
                # Its result is the row's (a kill -9 may have come between the write and the log).
                kept = (
                    row.status in TERMINAL
                    and row.failure != "lost"
                    and (row.claimed_by, row.attempts) == (owner, execution.attempt)
                )
                if execution is winner or kept or any(f.startswith("recorded:") for f in fate):
                    continue
                later = runs[index + 1 :]
                reason = next((r for r in ("lost", "not_recorded") if r in fate), "")
                if not reason and execution.supervisor in killed:
                    reason = "killed"
                until = later[0].started_at if later else time.time()
                faulted = self.had_fault(execution.supervisor, execution.started_at, until)
                explained = bool(reason) and faulted
                if execution.ended == "return" and not explained:
                    completed_twice.add(task_id)  # a second return, not shown to be rejected
                if not later:
                    # Never recorded and never run again: rescued on its last attempt ('lost'),
                    # or rescued and its budget ran out before anyone ran it again ('expired').
                    if row.failure not in ("lost", "expired") or not explained:
                        self.anomalies.append(
                            f"task {task_id} attempt {execution.attempt} on "
                            f"{execution.supervisor}: last execution unrecorded (fate "
                            f"{sorted(fate)}, fault {faulted}), row {row.status}/{row.failure}"
                        )
                    continue
                duplicates.append((execution, reason if explained else ""))
                if not explained:
                    self.anomalies.append(
                        f"task {task_id} attempt {execution.attempt} on {execution.supervisor}: "
                        f"ran again without explanation (fate {sorted(fate)}, fault {faulted})"
                    )

        statuses = Counter(r.status for r in rows.values())
        explained_count = sum(1 for _, reason in duplicates if reason)
        faults = Counter(f.kind for f in self.faults)
        missing_kinds = [k for k in FAULT_KINDS if not faults[k]]
        if missing_kinds:
            self.anomalies.append(f"faults never injected: {missing_kinds}")
        if not settled:
            self.anomalies.append("the queue did not settle")
        if self.unacked_batches:
            print(
                f"chaos: {self.unacked_batches} enqueue batches not acknowledged", file=sys.stderr
            )
        ok = not (lost or not_terminal or completed_twice or self.anomalies)
        reasons = Counter(reason or "unexplained" for _, reason in duplicates)
        for anomaly in self.anomalies:
            print(f"chaos: VIOLATION {anomaly}", file=sys.stderr)
        for task_id in sorted(set(lost) | set(not_terminal) | completed_twice):
            print(f"chaos: VIOLATION task {task_id}: {rows.get(task_id)}", file=sys.stderr)
        print(
            f"chaos seed={self.args.seed} minutes={self.args.minutes:g} "
            f"supervisors={self.args.supervisors}x{self.args.workers} lease={self.args.lease:g} "
            f"enqueued={len(acked)} completed={statuses['completed']} failed={statuses['failed']} "
            f"({format_counter(Counter(r.failure for r in rows.values() if r.failure))}) "
            f"executions={len(executions)} lost={len(lost)} not_terminal={len(not_terminal)} "
            f"completed_twice={len(completed_twice)} duplicate_executions={len(duplicates)} "
            f"explained={explained_count} ({format_counter(reasons)}) "
            f"anomalies={len(self.anomalies)} faults={format_counter(faults, FAULT_KINDS)} "
            + ("PASS" if ok else "FAIL"),
            flush=True,
        )
        return 0 if ok else 1


def format_counter(counter: Counter[Any], order: tuple[str, ...] | None = None) -> str:
    keys = order or tuple(sorted(counter))
    return ",".join(f"{key}:{counter[key]}" for key in keys) or "-"


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``fast=90,crash=10`` -> ((fast, 90), (crash, 10)); only the handlers this run writes."""
    mix = []
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name not in HANDLERS or not weight:
            raise argparse.ArgumentTypeError(f"{item!r}: expected one of {sorted(HANDLERS)}=N")
        mix.append((name, float(weight)))
    return tuple(mix)


def admin_connection(dsn: MysqlDsn) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=dsn.host,
        port=dsn.port,
        user=dsn.user,
        password=dsn.password,
        database=dsn.database or None,
        unix_socket=dsn.unix_socket,
        autocommit=True,
        connect_timeout=5,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="seeds the workload and the faults")
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the chaos phase")
    parser.add_argument("--settle", type=float, default=120.0, help="seconds to let it settle")
    parser.add_argument("--supervisors", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="MySQL/MariaDB server (any database)")
    parser.add_argument("--rate", type=float, default=7.0, help="tasks enqueued per second")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=WORKLOAD,
        help="workload weights, e.g. fast=90,crash=10 (default: "
        + ",".join(f"{k}={w}" for k, w in WORKLOAD)
        + ")",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    admin = parse_dsn(args.dsn, dict(os.environ))
    if not isinstance(admin, MysqlDsn):
        parser.error("--dsn must name a MySQL/MariaDB server")
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{args.seed}-"))
    code = 1
    try:
        code = Chaos(args, admin, workdir).run()
    finally:
        if code == 0 and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"chaos: logs kept in {workdir}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
