"""``python -m supervisor --burst``: everything runnable now, then exit with a verdict.

The real CLI on SQLite and MariaDB: the supervisor must exit by itself, leave
delayed tasks and backed-off retries queued, and say in its exit status and
closing line what became of the tasks it ran.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.lifecycle import Failure, Status
from tests.e2e.harness import Launcher, clean_env

BURST_EXIT_S = 60.0

RETURNS = """
    def handle(task, progress):
        progress(100)
"""

FAILS_FIRST_ATTEMPT = """
    def handle(task, progress):
        if task.attempt == 1:
            raise RuntimeError("first attempt fails on purpose")
"""

EXITS_3 = """
    import os

    def handle(task, progress):
        os._exit(3)
"""


@pytest.fixture
def launch(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def test_burst_runs_what_is_runnable_then_exits_0_leaving_delayed_tasks_queued(
    launch: Launcher,
) -> None:
    launch.handler("ok", RETURNS)
    done = [launch.enqueue("ok") for _ in range(5)]
    later = launch.enqueue("ok", delay=3600)

    supervisor = launch.start("--burst", workers=2)

    assert supervisor.wait_exit(BURST_EXIT_S) == 0
    assert {launch.get(task_id).status for task_id in done} == {Status.COMPLETED}
    assert launch.get(later).status is Status.QUEUED
    last = supervisor.logs()[-1]
    assert last["message"] == "burst finished: 5 tasks: 5 completed; exit 0"
    assert last["outcomes"] == {"completed": 5}


def test_a_retry_due_at_once_is_run_within_the_burst(launch: Launcher) -> None:
    launch.handler("flaky", FAILS_FIRST_ATTEMPT)
    task_id = launch.enqueue("flaky", max_attempts=2)

    supervisor = launch.start("--burst", "--backoff", "0")

    assert supervisor.wait_exit(BURST_EXIT_S) == 0
    row = launch.get(task_id)
    assert (row.status, row.attempts) == (Status.COMPLETED, 2)


def test_a_retry_still_backing_off_is_not_waited_for_and_the_exit_is_1(launch: Launcher) -> None:
    launch.handler("flaky", FAILS_FIRST_ATTEMPT)
    task_id = launch.enqueue("flaky", max_attempts=2)

    supervisor = launch.start("--burst", "--backoff", "0,3600")

    assert supervisor.wait_exit(BURST_EXIT_S) == 1
    row = launch.get(task_id)
    assert (row.status, row.attempts) == (Status.QUEUED, 1)
    assert supervisor.logs()[-1]["message"] == "burst finished: 1 task: 1 retried; exit 1"


def test_a_failed_task_makes_the_burst_exit_1_and_the_closing_line_counts_it(
    launch: Launcher,
) -> None:
    launch.handler("ok", RETURNS)
    launch.handler("crash", EXITS_3)
    launch.enqueue("ok")
    crashed = launch.enqueue("crash")

    supervisor = launch.start("--burst", workers=2)

    assert supervisor.wait_exit(BURST_EXIT_S) == 1
    assert launch.get(crashed).failure is Failure.PANIC
    assert (
        supervisor.logs()[-1]["message"] == "burst finished: 2 tasks: 1 completed, 1 panic; exit 1"
    )


def test_a_burst_with_an_empty_handlers_folder_ends_at_once_with_exit_0(launch: Launcher) -> None:
    launch.enqueue("nobody_handles_this")
    supervisor = launch.start("--burst")
    assert supervisor.wait_exit(BURST_EXIT_S) == 0
    assert supervisor.logs()[-1]["message"] == "burst finished: 0 tasks; exit 0"


def test_burst_with_a_bad_flag_is_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "--burst", "--workers", "0"],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers must be a whole number >= 1" in done.stderr


SLOW_TO_IMPORT = """
    import time

    time.sleep(2)  # the import check reports this handler seconds after the others

    def handle(task, progress):
        progress(100)
"""

BAD_POLICY = """
    MAX_ATTEMPTS = "lots"

    def handle(task, progress):
        progress(100)
"""


def test_a_burst_waits_for_a_handler_still_being_checked_before_it_calls_the_queue_dry(
    launch: Launcher,
) -> None:
    """A type is claimed only once the import check reported its policy: a claim that found
    nothing before then says nothing about that type's tasks."""
    launch.handler("afast", RETURNS)
    launch.handler("zslow", SLOW_TO_IMPORT)
    fast, slow = launch.enqueue("afast"), launch.enqueue("zslow")

    supervisor = launch.start("--burst", workers=2)

    assert supervisor.wait_exit(BURST_EXIT_S) == 0
    assert launch.get(fast).status is Status.COMPLETED
    assert launch.get(slow).status is Status.COMPLETED
    assert supervisor.logs()[-1]["message"] == "burst finished: 2 tasks: 2 completed; exit 0"


def test_a_burst_whose_only_handler_declares_a_bad_policy_stops_with_exit_1(
    launch: Launcher,
) -> None:
    """No type can be claimed, so no claim will ever find the queue dry: it must not hang."""
    launch.handler("picky", BAD_POLICY)
    queued = launch.enqueue("picky")

    supervisor = launch.start("--burst")

    assert supervisor.wait_exit(BURST_EXIT_S) == 1
    assert launch.get(queued).status is Status.QUEUED
    assert supervisor.logs()[-1]["message"] == (
        "burst finished: 0 tasks; types not claimed: *, picky; exit 1"
    )
