"""Children that will not stop, and children whose helpers hold their socket.

A handler that leaves a non-daemon thread used to keep its child alive after
``stop``: on recycle, HUP or drain the slot was lost and a drain waited out its
whole timeout. A handler that forks a long-lived helper keeps the child's
socket open after the child exits; that once froze the parent's loop.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.lifecycle import Status
from supervisor.pool import STOP_GRACE_S
from tests.e2e.harness import Launcher

LEAVES_A_THREAD = """
    import threading
    import time

    def handle(task, progress):
        threading.Thread(target=time.sleep, args=(600,)).start()
"""


@pytest.fixture
def launch(tmp_path: Path, sqlite_dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, sqlite_dsn) as launcher:
        yield launcher


def test_a_child_with_a_non_daemon_thread_exits_on_recycle_and_drain(launch: Launcher) -> None:
    """The child itself exits after ``stop``; the parent's stop deadline is never needed."""
    launch.handler("lingers", LEAVES_A_THREAD)
    supervisor = launch.start_ready("--max-tasks-per-child", "1", workers=1)
    started = time.monotonic()
    task_ids = [launch.enqueue("lingers") for _ in range(3)]
    for task_id in task_ids:
        assert launch.wait_status(task_id, Status.COMPLETED).attempts == 1
    assert time.monotonic() - started < STOP_GRACE_S  # three recycles, none waited out

    supervisor.send(signal.SIGTERM)
    stopped = time.monotonic()
    assert supervisor.wait_exit(STOP_GRACE_S + 10) == 0
    assert time.monotonic() - stopped < STOP_GRACE_S  # not the 30 s drain timeout either
    assert not supervisor.events(message="child did not exit after stop; killing its tree")


def test_drain_with_nothing_in_flight_ends_without_the_drain_timeout(launch: Launcher) -> None:
    launch.handler("lingers", LEAVES_A_THREAD)
    supervisor = launch.start_ready("--drain-timeout", "120", workers=2)
    for task_id in [launch.enqueue("lingers") for _ in range(2)]:
        launch.wait_status(task_id, Status.COMPLETED)
    supervisor.send(signal.SIGTERM)
    stopped = time.monotonic()
    assert supervisor.wait_exit(STOP_GRACE_S + 10) == 0
    assert time.monotonic() - stopped < STOP_GRACE_S + 3


def options(**values: object) -> str:
    return json.dumps(values)
