"""The ``supervisor_queue`` fixture of the pytest plugin: a private queue and a real burst drain."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from supervisor.pytest_plugin import DrainError, SupervisorQueue
from tests.e2e.harness import REPO_ROOT

HANGS = """
    import time

    def handle(task, progress):
        time.sleep(60)
"""


def test_each_test_gets_a_fresh_migrated_queue_with_the_projects_handlers(
    supervisor_queue: SupervisorQueue,
) -> None:
    assert supervisor_queue.path.exists()
    assert supervisor_queue.dsn == f"sqlite:///{supervisor_queue.path}"
    assert supervisor_queue.handlers == REPO_ROOT / "handlers"
    assert supervisor_queue.rows() == []


def test_drain_runs_the_real_supervisor_and_returns_the_final_rows(
    supervisor_queue: SupervisorQueue,
) -> None:
    first = supervisor_queue.enqueue("echo", {"message": "hi"}, unique_key="greeting")
    again = supervisor_queue.enqueue("echo", {"message": "hi"}, unique_key="greeting")
    supervisor_queue.enqueue("flaky", {})  # PermanentError: no succeed_on

    assert again == first and again.existed
    supervisor_queue.assert_enqueued("echo", unique_key="greeting", status="queued")
    rows = supervisor_queue.drain()

    assert [(row["type"], row["status"]) for row in rows] == [
        ("echo", "completed"),
        ("flaky", "failed"),
    ]
    assert supervisor_queue.exit_status == 1
    assert "burst finished: 2 tasks: 1 completed, 1 error; exit 1" in supervisor_queue.log
    assert len(supervisor_queue.enqueued("flaky", status="failed")) == 1


def test_a_drain_that_cannot_start_says_why(
    supervisor_queue: SupervisorQueue, tmp_path: Path
) -> None:
    supervisor_queue.handlers = tmp_path / "no-such-folder"

    with pytest.raises(DrainError, match=r"(?s)exited 2.*handlers folder"):
        supervisor_queue.drain()


def test_a_drain_that_does_not_end_in_time_is_an_error(
    supervisor_queue: SupervisorQueue, tmp_path: Path
) -> None:
    (tmp_path / "hangs.py").write_text(textwrap.dedent(HANGS))
    supervisor_queue.handlers = tmp_path
    supervisor_queue.enqueue("hangs")

    with pytest.raises(DrainError, match="did not finish within 3"):
        supervisor_queue.drain(timeout=3, args=["--drain-timeout", "1"])
