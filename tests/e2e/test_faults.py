"""Faults across supervisors: leases, rescue, fencing, database outages and the registry.

Every test runs real ``python -m supervisor`` processes against a real
MariaDB database, connected through a TCP proxy the test controls
(:mod:`tests.e2e.tcp_proxy`), so "the database went away" is a proxy cut:
open connections are closed and new ones refused until it is restored. The
shared MariaDB service itself is never touched. The test's own view of the
rows goes straight to the server, not through the proxy.

Handlers append one JSON line per event to an executions file outside the
database (``start`` when the handler begins, ``return`` when it returns), so
a test can tell what really ran, and where, from what the database says.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest

from supervisor.dblink import DB_RETRY_MAX_S, DB_RETRY_MIN_S
from supervisor.lifecycle import Failure, Status
from supervisor.store import TaskRow
from tests.e2e.harness import Launcher, SupervisorProcess, clean_env, gone, wait_until
from tests.e2e.tcp_proxy import TcpProxy, in_front_of

pytestmark = pytest.mark.mysql

# Sleeps options["seconds"][attempt - 1] (the last value repeats), recording start and return.
RECORDS_AND_SLEEPS = """
    import json
    import os
    import time

    def record(path, task, event):
        line = {
            "task_id": task.id,
            "attempt": task.attempt,
            "pid": os.getpid(),
            "supervisor": os.getppid(),
            "event": event,
        }
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\\n").encode())
        finally:
            os.close(fd)

    def handle(task, progress):
        options = json.loads(task.options)
        seconds = options["seconds"]
        record(options["log"], task, "start")
        time.sleep(seconds[min(task.attempt, len(seconds)) - 1])
        record(options["log"], task, "return")
"""

# Reports progress ten times a second for options["seconds"].
PROGRESSES = """
    import json
    import time

    def handle(task, progress):
        steps = int(json.loads(task.options)["seconds"] * 10)
        for step in range(steps):
            time.sleep(0.1)
            progress(100 * (step + 1) // steps)
"""


@attrs.frozen(kw_only=True)
class Execution:
    task_id: int
    attempt: int
    pid: int
    supervisor: int
    event: str


@attrs.define
class Fleet:
    """Supervisors that reach the database only through ``proxy``; the test reads it directly."""

    launcher: Launcher
    proxy: TcpProxy
    proxied_dsn: str

    @property
    def log_path(self) -> Path:
        return self.launcher.path("executions.jsonl")

    def start(self, *, workers: int, lease: float, args: tuple[str, ...] = ()) -> Supervisor:
        process = self.launcher.start_ready(
            "--dsn", self.proxied_dsn, *args, workers=workers, lease=lease
        )
        owner = process.wait_log(message="supervisor starting")["owner"]
        return Supervisor(process=process, owner=str(owner))

    def enqueue(self, *seconds: float, max_attempts: int = 3) -> int:
        """A ``sleepy`` task sleeping ``seconds[attempt - 1]`` (the last value repeats)."""
        options = json.dumps({"log": str(self.log_path), "seconds": list(seconds)})
        return self.launcher.enqueue("sleepy", options, max_attempts=max_attempts)

    def executions(self, task_id: int | None = None) -> list[Execution]:
        try:
            lines = self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        found = [Execution(**json.loads(line)) for line in lines]
        return [e for e in found if task_id is None or e.task_id == task_id]

    def started(self, task_id: int, attempt: int = 1, timeout: float = 15) -> Execution:
        """Wait until the handler has begun ``attempt`` of ``task_id``; that execution."""

        def find() -> Execution | None:
            return next(
                (
                    e
                    for e in self.executions(task_id)
                    if e.attempt == attempt and e.event == "start"
                ),
                None,
            )

        return wait_until(find, timeout, f"task {task_id} attempt {attempt} to start")

    def row(self, task_id: int) -> TaskRow:
        return self.launcher.get(task_id)

    def wait_row(self, task_id: int, status: Status, timeout: float = 20) -> TaskRow:
        """Wait for ``status`` (any supervisor may get it there; none has to stay alive)."""
        return wait_until(
            lambda: (row := self.row(task_id)).status is status and row,
            timeout,
            f"task {task_id} {status.value}",
        )


@attrs.frozen(kw_only=True)
class Supervisor:
    process: SupervisorProcess
    owner: str  # its claimed_by


@pytest.fixture
def fleet(tmp_path: Path, mysql_dsn: str) -> Iterator[Fleet]:
    with in_front_of(mysql_dsn) as (proxy, proxied), Launcher(tmp_path, mysql_dsn) as launcher:
        launcher.handler("sleepy", RECORDS_AND_SLEEPS)
        yield Fleet(launcher=launcher, proxy=proxy, proxied_dsn=proxied)


def events(supervisor: Supervisor, **fields: Any) -> list[dict[str, Any]]:
    return supervisor.process.events(**fields)


# ---------------------------------------------------------------------------- kill -9 and rescue


def test_after_kill_9_another_supervisor_rescues_the_task_and_the_attempt_is_counted(
    fleet: Fleet,
) -> None:
    """A supervisor killed with SIGKILL takes its children with it within a second; once its
    lease runs out another supervisor re-queues the task and runs it as attempt 2."""
    a = fleet.start(workers=1, lease=2)
    task_id = fleet.enqueue(60, 0.2)
    first = fleet.started(task_id)
    assert first.supervisor == a.process.pid
    children = a.process.child_pids()
    assert first.pid in children

    a.process.send(signal.SIGKILL)
    killed_at = time.monotonic()
    a.process.wait_exit(5)
    wait_until(lambda: all(gone(pid) for pid in children), 1.5, "A's children to die with it")
    assert time.monotonic() - killed_at < 1.5
    row = fleet.row(task_id)
    assert (row.status, row.claimed_by, row.attempts) == (Status.RUNNING, a.owner, 1)

    b = fleet.start(workers=1, lease=2)
    done = fleet.wait_row(task_id, Status.COMPLETED)

    assert done.attempts == 2  # the attempt A lost is counted
    assert done.claimed_by == b.owner
    assert done.failure is None
    runs = [(e.attempt, e.supervisor, e.event) for e in fleet.executions(task_id)]
    assert runs == [
        (1, a.process.pid, "start"),
        (2, b.process.pid, "start"),
        (2, b.process.pid, "return"),
    ]
    assert events(b, message="rescued tasks whose lease ran out; back to queued")


def test_after_kill_9_a_task_on_its_last_attempt_is_failed_lost(fleet: Fleet) -> None:
    """No attempt left when the lease runs out: the rescue fails the task 'lost', naming A."""
    a = fleet.start(workers=1, lease=2)
    task_id = fleet.enqueue(60, max_attempts=1)
    fleet.started(task_id)

    a.process.send(signal.SIGKILL)
    a.process.wait_exit(5)
    b = fleet.start(workers=1, lease=2)
    row = fleet.wait_row(task_id, Status.FAILED)

    assert row.failure is Failure.LOST
    assert row.attempts == 1
    assert row.last_error == f"lease of {a.owner} expired on the last attempt"
    assert row.completed_at is not None
    assert len(fleet.executions(task_id)) == 1  # never run again
    # The row is written before the sweeper's log line: wait for the line.
    wait_until(lambda: events(b, outcome="lost", type="sleepy") or None, 10, "the lost line")


# ---------------------------------------------------------------- SIGSTOP past the lease


def stop_past_the_lease(fleet: Fleet, a: Supervisor, task_id: int, lease: float) -> Supervisor:
    """SIGSTOP ``a``; start ``b``; wait until ``b`` has rescued and completed ``task_id``."""
    a.process.send(signal.SIGSTOP)
    b = fleet.start(workers=1, lease=lease)
    done = fleet.wait_row(task_id, Status.COMPLETED)
    assert (done.attempts, done.claimed_by) == (2, b.owner)
    return b


def test_a_paused_supervisor_kills_its_child_at_the_next_heartbeat_and_writes_nothing(
    fleet: Fleet,
) -> None:
    """A supervisor stopped past its lease finds the claim lost when it resumes: it kills the
    child still running attempt 1 and never touches the row B completed."""
    lease = 2.0
    a = fleet.start(workers=1, lease=lease)
    task_id = fleet.enqueue(60, 0.2)
    first = fleet.started(task_id)
    b = stop_past_the_lease(fleet, a, task_id, lease)
    settled = fleet.row(task_id)
    assert not gone(first.pid)  # a stopped parent does not stop its children

    a.process.send(signal.SIGCONT)
    resumed_at = time.monotonic()
    lost = a.process.wait_log(
        task_id=task_id,
        message="claim lost (lease expired and rescued, or cancelled); killing the child",
    )
    wait_until(lambda: gone(first.pid), 2, "A's child running the lost attempt to be killed")
    assert time.monotonic() - resumed_at < lease  # at its next heartbeat, not later

    assert lost["attempt"] == 1 and lost["outcome"] == "lost"
    time.sleep(0.5)  # anything A would still write has had its chance
    assert fleet.row(task_id) == settled  # B's result stands, untouched
    assert a.process.running  # A carries on
    assert not events(a, task_id=task_id, message="task completed")
    runs = [(e.attempt, e.supervisor, e.event) for e in fleet.executions(task_id)]
    assert runs == [
        (1, a.process.pid, "start"),
        (2, b.process.pid, "start"),
        (2, b.process.pid, "return"),
    ]


def test_a_paused_supervisors_late_result_is_rejected(fleet: Fleet) -> None:
    """The child finishes attempt 1 while its supervisor is stopped; B re-runs the task. When A
    resumes, its late 'completed' is never written: whether the heartbeat finds the claim gone
    first or the fenced write loses, A logs attempt 1 as lost and B's result stands."""
    lease = 2.0
    a = fleet.start(workers=1, lease=lease)
    task_id = fleet.enqueue(1.0, 0.2)
    fleet.started(task_id)
    b = stop_past_the_lease(fleet, a, task_id, lease)
    # Attempt 1 returned while A was stopped: its result waits unread in A's socket.
    assert (1, "return") in [(e.attempt, e.event) for e in fleet.executions(task_id)]
    settled = fleet.row(task_id)

    a.process.send(signal.SIGCONT)
    lost = a.process.wait_log(task_id=task_id, outcome="lost")

    assert lost["attempt"] == 1
    assert lost.get("would_have_been", "completed") == "completed"
    time.sleep(0.5)  # anything A would still write has had its chance
    assert fleet.row(task_id) == settled
    assert not events(a, task_id=task_id, message="task completed")
    assert len(events(b, task_id=task_id, message="task completed")) == 1
    assert a.process.running


# ---------------------------------------------------------------------------- database outage


def test_a_10_s_outage_while_tasks_run_loses_no_result(fleet: Fleet) -> None:
    """Tasks finish while the database is cut off: their results are held, nothing new is
    claimed, and when it is back every task is completed exactly once, on its first attempt."""
    a = fleet.start(workers=4, lease=30)
    running = [fleet.enqueue(seconds) for seconds in (3, 3.5, 4, 5)]
    waiting = [fleet.enqueue(0.2) for _ in range(4)]
    for task_id in running:
        fleet.started(task_id)

    fleet.proxy.cut()
    cut_at = time.monotonic()
    held = wait_until(
        lambda: [
            r
            for r in events(a, message="database error; holding results and retrying")
            if r["held"] > 0
        ],
        8,
        "A to hold results it cannot write",
    )
    time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))
    # Everything that ran during the outage had started before it: nothing was claimed.
    assert {e.task_id for e in fleet.executions()} == set(running)
    assert all(fleet.row(t).status is Status.QUEUED for t in waiting)
    assert all(fleet.row(t).status is Status.RUNNING for t in running)
    assert sum(e.event == "return" for e in fleet.executions()) == len(running)
    assert fleet.proxy.dropped >= 1  # A kept trying
    assert a.process.running
    fleet.proxy.restore()

    for task_id in running + waiting:
        row = fleet.wait_row(task_id, Status.COMPLETED, timeout=45)
        assert (row.attempts, row.claimed_by) == (1, a.owner)
        assert [e.event for e in fleet.executions(task_id)] == ["start", "return"]
        # The log line follows the write (the loop hears of it from the link): wait for it.
        logged = wait_until(
            lambda t=task_id: events(a, task_id=t, message="task completed"),
            10,
            f"the completion of {task_id} to be logged",
        )
        assert len(logged) == 1
    assert max(r["held"] for r in held) >= 1
    assert events(a, message="database is back")
    assert not events(a, outcome="lost")
    assert a.process.running


def test_term_during_an_outage_exits_0_and_the_unwritten_tasks_are_rescued_later(
    fleet: Fleet,
) -> None:
    """TERM while the database is away still drains and exits 0. What could not be written
    (a completion, a drain refund) is logged as not recorded; once the database is back,
    another supervisor rescues those tasks by lease and nothing stays running."""
    lease, drain = 4.0, 3.0
    a = fleet.start(workers=2, lease=lease, args=("--drain-timeout", str(drain)))
    finishes = fleet.enqueue(1.0, 0.2)  # completes during the drain
    overruns = fleet.enqueue(60, 0.2)  # still running at the drain deadline
    for task_id in (finishes, overruns):
        fleet.started(task_id)

    fleet.proxy.cut()
    a.process.wait_log(message="database error; holding results and retrying", timeout=lease)
    a.process.send(signal.SIGTERM)
    termed_at = time.monotonic()
    assert a.process.wait_exit(drain + 5) == 0
    assert time.monotonic() - termed_at < drain + 5

    for task_id, would_have_been in ((finishes, "completed"), (overruns, "retried")):
        [line] = events(
            a,
            task_id=task_id,
            message="result not recorded (database unavailable); "
            "the task will be rescued when its lease expires",
        )
        assert line["would_have_been"] == would_have_been
        assert line["level"] == "ERROR"
        row = fleet.row(task_id)
        assert (row.status, row.claimed_by, row.attempts) == (Status.RUNNING, a.owner, 1)
    assert events(a, message="supervisor stopped")

    fleet.proxy.restore()
    b = fleet.start(workers=2, lease=lease)
    for task_id in (finishes, overruns):
        row = fleet.wait_row(task_id, Status.COMPLETED, timeout=3 * lease + 10)
        assert (row.attempts, row.claimed_by) == (2, b.owner)
    counts = {(c.status, c.count) for c in fleet.launcher.store.counts()}
    assert counts == {(Status.COMPLETED, 2)}


def test_while_the_database_is_away_the_parent_backs_off_and_sleeps_until_each_retry(
    fleet: Fleet,
) -> None:
    """During an outage the parent neither spins (heartbeats, sweeps and progress writes that
    come due wait for the retry time too) nor touches the database before the retry time it
    logged; the backoff doubles once per failed attempt, and nothing but a statement that
    succeeded counts as the database being back (a held completion included)."""
    fleet.launcher.handler("progressing", PROGRESSES)
    a = fleet.start(workers=2, lease=30)
    # One reports progress and finishes during the outage; one sleeps through it silently.
    tasks = [fleet.launcher.enqueue("progressing", json.dumps({"seconds": 3})), fleet.enqueue(20)]
    for task_id in tasks:
        fleet.wait_row(task_id, Status.RUNNING)
    parent = psutil.Process(a.process.pid)
    before = parent.cpu_times()

    fleet.proxy.cut()
    time.sleep(8)
    after = parent.cpu_times()
    restored_at = time.time()
    fleet.proxy.restore()

    cpu = (after.user + after.system) - (before.user + before.system)
    assert cpu < 0.5, f"the parent used {cpu:.2f} s of CPU in an 8 s outage"
    fleet.wait_row(tasks[0], Status.COMPLETED, timeout=30)  # its held result is written
    failures = events(a, message="database error; holding results and retrying")
    assert 3 <= len(failures) <= 8  # 0.25-0.5 s, then doubling: a handful in 8 s
    for number, failure in enumerate(failures):
        # Capped at half a heartbeat (lease 30 s: heartbeat 10 s) so leases outlive outages.
        cap = min(DB_RETRY_MAX_S, 30 / 3 / 2)
        assert failure["retry_in_s"] >= min(DB_RETRY_MIN_S * 2**number, cap) / 2
    for earlier, later in itertools.pairwise(failures):
        gap = log_time(later) - log_time(earlier)
        assert gap >= earlier["retry_in_s"] - 0.01, (earlier, later)
    assert max(f["held"] for f in failures) == 1
    # The row is written before the loop logs that the database is back: wait for the line.
    [back] = wait_until(lambda: events(a, message="database is back") or None, 10, "the log line")
    assert log_time(back) >= restored_at
    assert a.process.running


def log_time(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["time"]).timestamp()


# ---------------------------------------------------------------------------- the registry


def status_json(dsn: str, cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "status", "--json", "--dsn", dsn],
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    document = json.loads(done.stdout)
    assert isinstance(document, dict)
    return document


def test_status_lists_a_running_supervisor_and_drops_it_after_a_clean_stop(
    fleet: Fleet,
) -> None:
    """``status --json`` traces ``claimed_by`` to a host, pid and worker count while the
    supervisor runs; a TERM'd supervisor removes its own entry."""
    a = fleet.start(workers=3, lease=3)
    launcher = fleet.launcher

    def listed() -> list[dict[str, Any]]:
        entries = status_json(launcher.dsn, launcher.workdir)["supervisors"]
        return [e for e in entries if e["id"] == a.owner]

    [entry] = wait_until(listed, 10, "A in the registry")
    assert entry["host"] == os.uname().nodename
    assert entry["pid"] == a.process.pid
    assert entry["workers"] == 3
    assert entry["alive"] is True
    assert entry["started_at"] and entry["heartbeat_at"]
    assert a.owner.startswith(f"{entry['host']}:{entry['pid']}:")

    a.process.send(signal.SIGTERM)
    assert a.process.wait_exit(15) == 0
    assert listed() == []
