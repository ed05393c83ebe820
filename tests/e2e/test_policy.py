"""Policy in the handler file, through the real CLI on SQLite and MariaDB.

A handler module's constants (MAX_ATTEMPTS, BACKOFF, TIMEOUT...) decide how
its tasks run unless the producer set a value explicitly; a bad constant keeps
the type from being claimed at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.lifecycle import Failure, Status
from supervisor.telemetry import ATTEMPT_TIMEOUT_KILL_MESSAGE
from tests.e2e.harness import Launcher, clean_env

pytestmark = pytest.mark.timeout(120)

HANGS_WITH_A_TIMEOUT = """
    import time

    TIMEOUT = 0.5
    MAX_ATTEMPTS = 2
    BACKOFF = (0,)

    def handle(task, progress):
        while True:
            time.sleep(0.01)
"""

RAISES_WITH_FIVE_ATTEMPTS = """
    MAX_ATTEMPTS = 5
    BACKOFF = 0

    def handle(task, progress):
        raise RuntimeError("always")
"""

RETURNS = """
    def handle(task, progress):
        pass
"""


@pytest.fixture
def launch(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def show(launch: Launcher, task_id: int) -> dict[str, Any]:
    """``python -m supervisor show ID --json``."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "show", str(task_id), "--json"],
        cwd=launch.workdir,
        env=clean_env(SUPERVISOR_DSN=launch.dsn),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def test_timeout_kills_each_attempt_retries_then_fails_as_attempt_timeout(
    launch: Launcher,
) -> None:
    launch.handler("hangs", HANGS_WITH_A_TIMEOUT)
    supervisor = launch.start_ready()
    task_id = launch.enqueue_cli("hangs", "{}")

    row = launch.wait_terminal(task_id)
    assert (row.status, row.failure, row.attempts) == (Status.FAILED, Failure.ATTEMPT_TIMEOUT, 2)
    assert (row.max_attempts, row.timeout_s) == (2, 0.5), "the claim wrote the handler's values"
    assert row.last_error is not None
    assert row.last_error.startswith("attempt_timeout: the attempt timed out after 0.5 s")
    assert "Stack at the timeout" in row.last_error and "in handle" in row.last_error
    assert len(supervisor.events(message=ATTEMPT_TIMEOUT_KILL_MESSAGE, task_id=task_id)) == 2
    assert supervisor.events(task_id=task_id, outcome="retried")
    # The row is written before the loop logs what was recorded: wait for that line.
    assert supervisor.wait_log(task_id=task_id, outcome="attempt_timeout")


def test_an_explicit_timeout_beats_the_handlers(launch: Launcher) -> None:
    launch.handler("hangs", HANGS_WITH_A_TIMEOUT)
    launch.start_ready()
    task_id = launch.enqueue_cli("hangs", "{}", "--timeout", "0.25", "--max-attempts", "1")

    row = launch.wait_terminal(task_id)
    assert (row.failure, row.attempts) == (Failure.ATTEMPT_TIMEOUT, 1)
    assert row.last_error is not None and "timed out after 0.25 s" in row.last_error


def test_an_explicit_max_attempts_beats_the_handlers_and_show_says_where_each_came_from(
    launch: Launcher,
) -> None:
    launch.handler("raises", RAISES_WITH_FIVE_ATTEMPTS)
    launch.start_ready()
    explicit = launch.enqueue_cli("raises", "{}", "--max-attempts", "2")
    handlers = launch.enqueue_cli("raises", "{}")

    assert (launch.wait_terminal(explicit).attempts, launch.get(explicit).failure) == (
        2,
        Failure.ERROR,
    )
    assert launch.wait_terminal(handlers).attempts == 5
    assert show(launch, handlers)["effective"]["max_attempts"] == {"value": 5, "source": "claim"}

    # Queued and never claimed: the policy the supervisor declared for the type applies.
    later = launch.enqueue_cli("raises", "{}", "--delay", "3600")
    mine = launch.enqueue_cli("raises", "{}", "--delay", "3600", "--max-attempts", "4")
    assert show(launch, later)["effective"] == {
        "max_attempts": {"value": 5, "source": "handler"},
        "timeout_s": {"value": None, "source": "default"},
    }
    assert show(launch, mine)["effective"]["max_attempts"] == {"value": 4, "source": "explicit"}


def test_a_bad_constant_is_reported_like_a_broken_handler_and_its_type_is_not_claimed(
    launch: Launcher,
) -> None:
    launch.handler("bad", "CONCURRENCY = -1\ndef handle(task, progress):\n    pass\n")
    launch.handler("ok", RETURNS)
    supervisor = launch.start_ready()
    report = supervisor.wait_log(type="bad", level="ERROR")
    assert report["message"] == "handler declares a bad policy constant; its tasks are not claimed"
    assert "CONCURRENCY must be a whole number from 1 to 100000, got -1" in report["error"]
    bad_id = launch.enqueue("bad")
    ok_id = launch.enqueue("ok")

    assert launch.wait_terminal(ok_id).status is Status.COMPLETED
    assert launch.get(bad_id).status is Status.QUEUED
    assert not supervisor.events(task_id=bad_id)
