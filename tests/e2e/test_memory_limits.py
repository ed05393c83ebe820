"""Memory limits through the real CLI, with real children that really allocate.

* ``--max-child-rss``: a child whose RSS is over it after a task is replaced
  before its next one; not a failure, a restart (reason ``max_rss``) and a log line.
* ``MAX_RSS`` in a handler: a child whose tree goes over it is killed with its
  stack taken, and the task fails ``memory``, never retried.

The overshoot (how far past the limit a child gets before the kill) is
measured by ``scripts/memory_overshoot.py``; these tests hold it only to a
generous bound, the machine being shared and noisy.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.lifecycle import Failure, Outcome, Status
from supervisor.memory_watch import descendants
from supervisor.pool import MAX_CHILD_RSS_MESSAGE
from supervisor.telemetry import MEMORY_KILL_MESSAGE, MEMORY_REAPED_MESSAGE
from supervisor.testing import run_handler
from tests.e2e.harness import Launcher, wait_until
from tests.e2e.test_metrics import free_port, metrics_args, wait_scrape

pytestmark = pytest.mark.timeout(120)

# Each task keeps 60 MB more alive in the module (touched: b"x" * n is written, not lazily
# mapped zeros), then writes "pid rss" of its child process, read from statm, to a file.
LEAKS = """
    import json, os

    LEAK = []

    def handle(task, progress):
        LEAK.append(b"x" * (60 * 1024 * 1024))
        with open(f"/proc/{os.getpid()}/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        with open(json.loads(task.options)["log"], "a") as log:
            log.write(f"{os.getpid()} {rss}\\n")
"""

# 10 MB more every 0.1 s (about 100 MB/s) until killed.
GROWS = """
    import time

    MAX_RSS = 100

    def handle(task, progress):
        kept = []
        while True:
            kept.append(b"x" * (10 * 1024 * 1024))
            time.sleep(0.1)
"""

# The child stays small; a process it starts grows past the limit (the tree counts).
GROWS_IN_A_GRANDCHILD = f"""
    import subprocess, time

    MAX_RSS = 100

    GROW = (
        "import time\\n"
        "kept = []\\n"
        "while True:\\n"
        "    kept.append(b'x' * (10 * 1024 * 1024))\\n"
        "    time.sleep(0.05)\\n"
    )

    def handle(task, progress):
        process = subprocess.Popen([{sys.executable!r}, "-c", GROW])
        with open(task.options, "w") as out:
            out.write(f"{{process.pid}}\\n")
        process.wait()
"""

MIB = 1024 * 1024
PEAK = re.compile(r"used ([0-9.]+) MiB, over this handler's MAX_RSS of 100 MiB")


@pytest.fixture
def launch(tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Launcher]:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def test_a_leaking_child_is_recycled_under_max_child_rss_and_every_task_completes(
    launch: Launcher,
) -> None:
    """60 MB a task against a 120 MiB limit: a child runs two tasks, then is replaced."""
    launch.handler("leaks", LEAKS)
    port = free_port()
    supervisor = launch.start_ready("--max-child-rss", "120", *metrics_args(port))
    log = launch.path("leaks.log")
    ids = [launch.enqueue("leaks", launch.paths_json(log="leaks.log")) for _ in range(4)]

    for task_id in ids:
        assert launch.wait_terminal(task_id, timeout=60).status is Status.COMPLETED
    runs = [line.split() for line in log.read_text().splitlines()]
    pids, rss = [int(pid) for pid, _ in runs], [int(r) for _, r in runs]
    assert len(runs) == 4
    for before in range(3):
        # A new child for the next task exactly when the one before ended over the limit.
        recycled = rss[before] > 120 * MIB
        assert (pids[before + 1] != pids[before]) == recycled, (pids, rss)
    assert len(set(pids)) >= 2, f"no child was recycled: {runs}"

    lines = supervisor.events(message=MAX_CHILD_RSS_MESSAGE)
    assert {line["pid"] for line in lines} == {
        p for p, r in zip(pids, rss, strict=True) if r > 120 * MIB
    }
    assert all(line["rss_mib"] > 120 and line["limit_mib"] == 120 for line in lines)
    assert not supervisor.events(level="ERROR")
    scraped = wait_scrape(
        port,
        lambda s: s.value("supervisor_child_restarts_total", reason="max_rss") == len(lines),
        what="the max_rss restarts",
    )
    assert scraped.value("supervisor_child_restarts_total", reason="max_rss") == len(lines)


def test_a_handler_over_max_rss_is_killed_with_its_stack_and_fails_memory_not_retried(
    launch: Launcher,
) -> None:
    launch.handler("grows", GROWS)
    port = free_port()
    supervisor = launch.start_ready(*metrics_args(port))
    task_id = launch.enqueue("grows", "{}", max_attempts=3)

    row = launch.wait_terminal(task_id, timeout=60)
    assert (row.status, row.failure) == (Status.FAILED, Failure.MEMORY)
    assert (row.attempts, row.max_attempts) == (1, 3), "terminal at once, like a panic"
    assert row.last_error is not None
    assert row.last_error.startswith("memory: the child's tree used ")
    assert "Stack at the kill:" in row.last_error and "in handle" in row.last_error
    found = PEAK.search(row.last_error)
    assert found is not None, row.last_error
    peak_mib = float(found.group(1))
    assert 100 < peak_mib < 200, "killed, and well before twice the limit"

    [kill] = supervisor.events(message=MEMORY_KILL_MESSAGE, task_id=task_id)
    assert (kill["rss_mib"], kill["limit_mib"]) == (peak_mib, 100.0)
    reaped = supervisor.wait_log(message=MEMORY_REAPED_MESSAGE, pid=kill["pid"])
    assert reaped["peak_rss_mib"] < 200, "the kernel's own count agrees: no runaway"
    assert supervisor.wait_log(task_id=task_id, outcome="memory")
    scraped = wait_scrape(
        port,
        lambda s: s.value("tasks_processed_total", type="grows", outcome="memory") == 1,
        what="the memory outcome",
    )
    assert scraped.value("supervisor_child_restarts_total", reason="memory") == 1


def test_the_limit_counts_the_whole_tree(tmp_path: Path, sqlite_dsn: str) -> None:
    """The handler's own process stays small; what it started is found and counted."""
    with Launcher(tmp_path, sqlite_dsn) as launch:
        launch.handler("grows_below", GROWS_IN_A_GRANDCHILD)
        launch.start_ready()
        task_id = launch.enqueue("grows_below", str(launch.path("grandchild.pid")))
        grandchild = launch.read_pid("grandchild.pid")

        row = launch.wait_terminal(task_id, timeout=60)
        assert (row.status, row.failure, row.attempts) == (Status.FAILED, Failure.MEMORY, 1)
        assert row.last_error is not None and "in handle" in row.last_error
        found = PEAK.search(row.last_error)
        assert found is not None and float(found.group(1)) < 250, row.last_error
        wait_until(lambda: not _alive(grandchild), 10, "the grandchild killed with the tree")


def test_run_handler_runs_a_handler_under_a_memory_limit_as_the_supervisor_does(
    tmp_path: Path,
) -> None:
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    (handlers / "grows.py").write_text(textwrap.dedent(GROWS))

    run = run_handler("grows", {}, handlers=handlers, max_rss=100, max_attempts=3)
    assert (run.outcome, run.status, run.failure) == (Outcome.MEMORY, Status.FAILED, Failure.MEMORY)
    assert run.last_error is not None and PEAK.search(run.last_error), run.last_error
    assert "Stack at the kill:" in run.last_error and "in handle" in run.stack
    assert run.peak_rss_bytes is not None and 100 * MIB < run.peak_rss_bytes < 200 * MIB


def test_one_scan_finds_the_descendants_of_each_root() -> None:
    """``sh`` starts a ``sleep``: both are below this process, nothing is below the sleep."""
    import os
    import subprocess

    import psutil

    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:

        def grandchild() -> list[int] | None:
            below = psutil.Process(shell.pid).children()
            return [p.pid for p in below] or None

        [sleeper] = wait_until(grandchild, 10, "the shell's sleep")
        found = descendants([os.getpid(), shell.pid, sleeper])
        assert {shell.pid, sleeper} <= set(found[os.getpid()])
        assert found[shell.pid] == (sleeper,)
        assert found[sleeper] == ()
    finally:
        for proc in psutil.Process(shell.pid).children(recursive=True):
            proc.kill()
        shell.kill()
        shell.wait()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
