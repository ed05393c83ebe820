"""Stacks on demand and prompt cancels, with real supervisors, real children and the real CLI.

``supervisor stack ID`` reaches the supervisor running the task through the
database and prints every thread's stack of its child, which carries on;
``show ID --stack`` prints it afterwards. A cancel of a running task lands
within a poll interval, not at the next heartbeat, and records the stack the
child had. Both backends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.lifecycle import Status
from tests.e2e.harness import Launcher, gone, wait_until
from tests.e2e.test_cli import Result, run_cli

# A handler sleeping in a known function, with a second thread sleeping in another.
DISK = """
import json, os, threading, time

def spin_the_fan():
    time.sleep(3600)

def wait_for_the_disk(seconds):
    time.sleep(seconds)

def handle(task, progress):
    options = json.loads(task.options)
    threading.Thread(target=spin_the_fan, daemon=True).start()
    with open(options["pid"], "w") as out:
        out.write(f"{os.getpid()}\\n")
    wait_for_the_disk(options["seconds"])
"""
# The same, with a grandchild in the child's tree: a cancel must kill both.
DISK_WITH_HELPER = """
import json, os, subprocess, time

def wait_for_the_disk(seconds):
    time.sleep(seconds)

def handle(task, progress):
    options = json.loads(task.options)
    helper = subprocess.Popen(["sleep", "3600"])
    with open(options["helper"], "w") as out:
        out.write(f"{helper.pid}\\n")
    with open(options["pid"], "w") as out:
        out.write(f"{os.getpid()}\\n")
    wait_for_the_disk(3600)
"""
# A handler that resets SIGUSR1 to its default action, which would terminate the child.
RESETS_USR1 = """
import signal, time

def handle(task, progress):
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    open(task.options, "w").close()
    time.sleep(2)
"""
SLEEP_S = 3.0
LONG_LEASE = 60.0  # a heartbeat every 20 s
DEFAULT_POLL_S = 0.15  # the --poll-interval default
CANCEL_BOUND_S = 5.0  # generous: a poll interval and the stack's lead, on a busy machine


@pytest.fixture
def launch(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def cli(launch: Launcher, *args: str) -> Result:
    return run_cli(launch.workdir, *args, dsn=launch.dsn)


def disk_task(launch: Launcher, seconds: float, pid_file: str = "child.pid") -> int:
    options = f'{{"pid": "{launch.path(pid_file)}", "seconds": {seconds}}}'
    return launch.enqueue("disk", options)


def test_stack_prints_every_thread_of_a_running_task_which_then_completes_normally(
    launch: Launcher,
) -> None:
    launch.handler("disk", DISK)
    supervisor = launch.start_ready(poll_interval=DEFAULT_POLL_S)
    task_id = disk_task(launch, SLEEP_S)
    child_pid = launch.read_pid("child.pid")

    result = cli(launch, "stack", str(task_id))
    assert result.rc == 0, result.err
    assert "wait_for_the_disk" in result.out
    assert "spin_the_fan" in result.out, "every thread's stack"
    assert result.out.count("(most recent call first)") >= 2
    assert psutil.pid_exists(child_pid) and launch.get(task_id).status is Status.RUNNING

    row = launch.wait_terminal(task_id, timeout=SLEEP_S + 15)
    assert (row.status, row.failure) == (Status.COMPLETED, None), row.last_error
    assert row.started_at is not None and row.completed_at is not None
    ran_s = (row.completed_at - row.started_at).total_seconds()
    assert ran_s >= SLEEP_S - 0.1, "the signal did not cut the handler's sleep short"
    assert child_pid in supervisor.child_pids(), "the same child: neither killed nor replaced"
    assert not supervisor.events(message="task timed out")

    shown = cli(launch, "show", str(task_id), "--stack")
    assert shown.rc == 0 and "wait_for_the_disk" in shown.out and "spin_the_fan" in shown.out
    plain = cli(launch, "show", str(task_id))
    assert plain.rc == 0 and "wait_for_the_disk" not in plain.out
    assert f"show {task_id} --stack prints it" in plain.out


def test_a_child_whose_handler_reset_sigusr1_is_not_signalled_and_completes(
    launch: Launcher,
) -> None:
    """The default action of SIGUSR1 terminates: sending it would kill the task."""
    launch.handler("reset", RESETS_USR1)
    supervisor = launch.start_ready(poll_interval=DEFAULT_POLL_S)
    task_id = launch.enqueue("reset", str(launch.path("started")))
    wait_until(lambda: launch.path("started").exists(), 15, "the handler to start")
    children = supervisor.child_pids()

    result = cli(launch, "stack", str(task_id))
    assert result.rc == 0, result.err
    assert "no signal was sent" in result.out
    row = launch.wait_terminal(task_id)
    assert (row.status, row.failure) == (Status.COMPLETED, None), row.last_error
    assert supervisor.child_pids() == children, "no child died"


def test_stack_of_a_task_that_does_not_run_says_so(launch: Launcher) -> None:
    launch.handler("disk", DISK)
    launch.start_ready(poll_interval=DEFAULT_POLL_S)
    finished = disk_task(launch, 0)
    launch.wait_status(finished, Status.COMPLETED)
    queued = launch.enqueue("disk", "{}", delay=3600)

    for task_id, said in (
        (queued, f"task {queued} is queued; only a running task"),
        (finished, f"task {finished} is completed; only a running task"),
        (987654, "no task with id 987654"),
    ):
        result = cli(launch, "stack", str(task_id))
        assert (result.rc, result.out) == (1, ""), result
        assert said in result.err


def test_stack_of_a_task_no_live_supervisor_holds_times_out_cleanly(launch: Launcher) -> None:
    launch.enqueue("orphan")
    [claim] = launch.store.claim("gone-host:4242:abcdef", ["orphan"], 1, 600.0)
    started = time.monotonic()
    result = cli(launch, "stack", str(claim.id), "--wait", "1")
    took = time.monotonic() - started
    assert (result.rc, result.out) == (1, "")
    assert "no stack of task" in result.err and "within 1 s" in result.err
    assert "gone-host:4242:abcdef, which is not a live supervisor" in result.err
    assert 1.0 <= took < 30
    assert launch.get(claim.id).stack_requested_at is not None, "the request stays in the row"


def test_a_cancel_lands_within_a_poll_interval_kills_the_tree_and_records_the_stack(
    launch: Launcher,
) -> None:
    """With a 60 s lease the next heartbeat is up to 20 s away; the cancel must not wait for it."""
    launch.handler("disk", DISK_WITH_HELPER)
    supervisor = launch.start_ready(lease=LONG_LEASE, poll_interval=DEFAULT_POLL_S)
    task_id = launch.enqueue("disk", launch.paths_json(pid="child.pid", helper="helper.pid"))
    helper_pid = launch.read_pid("helper.pid")
    child_pid = launch.read_pid("child.pid")
    time.sleep(LONG_LEASE / 3 / 4)  # well inside a heartbeat interval, away from its start

    result = cli(launch, "cancel", str(task_id))
    assert result.rc == 0, result.err
    committed = time.monotonic()
    wait_until(lambda: gone(child_pid) and gone(helper_pid), CANCEL_BOUND_S, "the tree to die")
    assert time.monotonic() - committed < CANCEL_BOUND_S

    row = launch.wait_row(task_id, lambda r: r.stack is not None, CANCEL_BOUND_S, "the stack")
    assert row.status is Status.CANCELLED
    assert row.stack is not None and "wait_for_the_disk" in row.stack
    [event] = supervisor.events(task_id=task_id, outcome="cancelled")
    assert event["message"].startswith("task cancelled")
