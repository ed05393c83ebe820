"""The pytest plugin: a ``supervisor_queue`` fixture with a real queue and a real supervisor.

pytest loads it by itself once the package is installed (the ``pytest11``
entry point ``supervisor.pytest_plugin``; ``-p no:supervisor.pytest_plugin``
turns it off). Each test that asks for ``supervisor_queue`` gets a fresh,
migrated SQLite file of its own, and :meth:`SupervisorQueue.drain` runs the
real supervisor on it in burst mode (``python -m supervisor --burst``, a
process of its own with real children), then returns the final rows. So a
test sees what production does: retries, timeouts, panics, unique keys.

The handlers folder is ``handlers`` under pytest's rootdir unless the ini
option ``supervisor_handlers`` names another (relative to the rootdir), or
the test sets :attr:`SupervisorQueue.handlers`.

Being auto-loaded, this module is imported by every pytest run in an
environment that has the package, used or not: it imports the rest of the
package only when a test asks for the fixture.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

if TYPE_CHECKING:
    from supervisor.producer import Options
    from supervisor.store import Enqueued

HANDLERS_INI = "supervisor_handlers"
DRAIN_TIMEOUT_S = 120.0


class DrainError(RuntimeError):
    """The supervisor did not drain: bad usage (exit 2), a crash, or no end within the timeout."""


@attrs.define(kw_only=True)
class SupervisorQueue:
    """A private queue (an SQLite file) and the means to fill it, drain it and look at it.

    After :meth:`drain`, :attr:`exit_status` is the supervisor's (0 every task
    it ran completed, 1 some did not) and :attr:`log` its log (JSON lines).
    """

    path: Path
    handlers: Path
    exit_status: int | None = None
    log: str = ""

    @property
    def dsn(self) -> str:
        return f"sqlite:///{self.path}"

    def enqueue(self, type: str, options: Options = None, **kwargs: Any) -> Enqueued:
        """:meth:`supervisor.Queue.enqueue` on this queue (``delay``, ``unique_key``, ...)."""
        from supervisor.producer import Queue

        with Queue(self.dsn) as queue:
            return queue.enqueue(type, options, **kwargs)

    def drain(
        self,
        *,
        workers: int = 2,
        backoff: str | None = None,
        args: Sequence[str] = (),
        timeout: float = DRAIN_TIMEOUT_S,
    ) -> list[dict[str, Any]]:
        """Run ``python -m supervisor --burst`` on this queue until it exits; every row after.

        ``backoff`` (``"0"`` retries at once, so a flaky task is retried within
        the drain) and ``args`` (more run flags) go to the supervisor. Tasks
        delayed past now, and retries still backing off, stay queued.
        """
        command = [
            sys.executable,
            "-m",
            "supervisor",
            "--burst",
            "--dsn",
            self.dsn,
            "--handlers",
            str(self.handlers),
            "--workers",
            str(workers),
            "--metrics-port",
            "0",
            "--log-format",
            "json",
            *(["--backoff", backoff] if backoff is not None else []),
            *args,
        ]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DrainError(f"the supervisor did not finish within {timeout} s") from exc
        self.exit_status, self.log = done.returncode, done.stderr
        if done.returncode not in (0, 1):
            raise DrainError(f"the supervisor exited {done.returncode}:\n{done.stderr[-4000:]}")
        return self.rows()

    def rows(self) -> list[dict[str, Any]]:
        """Every task row, oldest first."""
        from supervisor.testing import task_rows

        return task_rows(self.dsn)

    def enqueued(self, type: str, **filters: Any) -> list[dict[str, Any]]:
        """:func:`supervisor.testing.enqueued` on this queue (same filters)."""
        from supervisor.testing import enqueued

        return enqueued(self.dsn, type, **filters)

    def assert_enqueued(self, type: str, **filters: Any) -> list[dict[str, Any]]:
        """:func:`supervisor.testing.assert_enqueued` on this queue (same filters, ``count``)."""
        from supervisor.testing import assert_enqueued

        return assert_enqueued(self.dsn, type, **filters)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        HANDLERS_INI,
        "folder of handler files for the supervisor_queue fixture, relative to the rootdir",
        default="handlers",
    )


@pytest.fixture
def supervisor_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SupervisorQueue]:
    """A fresh, migrated SQLite queue for this test, and a burst-mode ``drain()``."""
    config = request.config
    handlers = config.rootpath / str(config.getini(HANDLERS_INI))
    from supervisor.producer import Queue

    queue = SupervisorQueue(path=tmp_path / "supervisor-queue.db", handlers=handlers)
    Queue(queue.dsn).close()  # creates and migrates the file
    yield queue
