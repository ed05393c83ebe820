"""Children that will not stop, and children whose helpers hold their socket.

A handler that leaves a non-daemon thread used to keep its child alive after
``stop``: on recycle, HUP or drain the slot was lost and a drain waited out its
whole timeout. A handler that forks a long-lived helper keeps the child's
socket open after the child exits; that once froze the parent's loop.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from supervisor.lifecycle import Status
from supervisor.pool import STOP_GRACE_S
from supervisor.telemetry import DEADLINE_KILL_MESSAGE
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


FORKS_A_HELPER = """
    import os
    import time

    def handle(task, progress):
        if os.fork() == 0:  # a helper in its own session: it keeps every fd, the socket too
            os.setsid()
            time.sleep(30)
            os._exit(0)
"""

SLEEPS = """
    import time

    def handle(task, progress):
        time.sleep(60)
"""


def at(record: dict[str, object]) -> float:
    return datetime.fromisoformat(str(record["time"])).timestamp()


def test_a_helper_holding_the_socket_of_an_exited_child_delays_nothing(launch: Launcher) -> None:
    """Children exit while their helpers hold the socket; a deadline kill elsewhere is on time.

    Each recycled child leaves a helper holding its end of the socket pair, so
    the parent never sees the socket close; reading it must not wait (it once
    froze the loop 5 s per exit).
    """
    launch.handler("forks", FORKS_A_HELPER)
    launch.handler("sleeps", SLEEPS)
    supervisor = launch.start_ready("--max-tasks-per-child", "1", workers=3)
    budget = 2.0
    slow = launch.enqueue("sleeps", budget=budget, max_attempts=1)
    launch.wait_status(slow, Status.RUNNING)
    started = time.monotonic()
    forks = [launch.enqueue("forks") for _ in range(8)]
    for task_id in forks:
        launch.wait_status(task_id, Status.COMPLETED)
    assert time.monotonic() - started < 4.0  # eight exits, none waited on

    launch.wait_terminal(slow)
    dispatched = supervisor.wait_log(message="task dispatched", task_id=slow)
    killed = supervisor.wait_log(message=DEADLINE_KILL_MESSAGE, task_id=slow)
    lateness = at(killed) - at(dispatched) - budget
    assert lateness < 0.5, lateness
