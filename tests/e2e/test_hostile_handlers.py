"""Handlers that misbehave in ways that once hurt the supervisor (issue 10, items 8, 9, 11, 12).

Real ``python -m supervisor``, real handler files, real children: the point of
each test is what happens inside a child process or the import check.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.lifecycle import Failure, Status
from supervisor.testing import run_handler
from tests.e2e.harness import Launcher

# libc sleep() is interrupted by the stack-dump signal sent just before the deadline and
# returns early: the handler then "finishes" only because the supervisor signalled it.
SLEEPS_IN_C = """
    import ctypes

    def handle(task, progress):
        ctypes.CDLL(None).sleep(5)
"""

BAD_PROGRESS = """
    class Hostile:
        def __float__(self):
            raise KeyError("no float here")

    class Weird:
        def __float__(self):
            return "not a float"

    def handle(task, progress):
        for value in (10**400, -10**400, float("nan"), float("inf"), "abc", None, Hostile(),
                      Weird(), [1], 50):
            progress(value)
"""

# A handler file named like a standard module, and one that uses that module.
CSV_HANDLER = """
    def handle(task, progress):
        pass
"""

USES_CSV = """
    import csv
    import io

    def handle(task, progress):
        csv.writer(io.StringIO()).writerow(["a", "b"])
"""

EXITS_AT_IMPORT = """
    import sys
    sys.exit(0)

    def handle(task, progress):
        pass
"""

INTERRUPTS_AT_IMPORT = """
    raise KeyboardInterrupt

    def handle(task, progress):
        pass
"""

# Prints what looks like the check's own report, without a final newline.
CHATTY_AT_IMPORT = """
    print('{"errors": {}}', end="")

    def handle(task, progress):
        pass
"""

RETURNS = """
    def handle(task, progress):
        pass
"""


@pytest.fixture
def launch(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def test_a_handler_interrupted_by_the_stack_signal_is_a_timeout_not_completed(
    launch: Launcher,
) -> None:
    launch.handler("csleep", SLEEPS_IN_C)
    launch.start_ready()
    task_id = launch.enqueue_cli("csleep", "{}", "--budget", "1", "--max-attempts", "3")

    row = launch.wait_terminal(task_id, timeout=15)

    assert row.status is Status.FAILED, row.last_error
    assert row.failure is Failure.TIMEOUT
    assert row.attempts == 1


def test_no_progress_value_fails_the_task(tmp_path: Path) -> None:
    """Only the child is involved: run_handler runs the handler in the supervisor's own child."""
    (tmp_path / "badprogress.py").write_text(textwrap.dedent(BAD_PROGRESS))

    run = run_handler("badprogress", handlers=tmp_path)

    assert run.completed, run.last_error
    assert run.progress[-1] == 50  # the last usable value, after the clamped 10**400


def test_a_handler_named_like_a_standard_module_does_not_shadow_it(launch: Launcher) -> None:
    launch.handler("csv", CSV_HANDLER)
    launch.handler("usescsv", USES_CSV)
    supervisor = launch.start_ready()
    warning = supervisor.wait_log(type="csv", level="WARNING")
    assert "csv" in warning["message"] or "csv" in warning.get("error", "")
    csv_id = launch.enqueue("csv")
    uses_id = launch.enqueue("usescsv")

    assert launch.wait_terminal(csv_id).status is Status.COMPLETED
    row = launch.wait_terminal(uses_id)
    assert row.status is Status.COMPLETED, row.last_error


@pytest.mark.parametrize("source", [EXITS_AT_IMPORT, INTERRUPTS_AT_IMPORT], ids=["exit", "kbint"])
def test_a_handler_that_exits_at_import_is_reported_by_name_and_its_tasks_fail(
    launch: Launcher, source: str
) -> None:
    launch.handler("quits", source)
    launch.handler("ok", RETURNS)
    supervisor = launch.start_ready()
    report = supervisor.wait_log(type="quits", level="ERROR")
    assert "cannot be imported" in report["message"]
    assert not supervisor.events(type="*")
    quits_id = launch.enqueue("quits")
    ok_id = launch.enqueue("ok")

    row = launch.wait_terminal(quits_id)
    assert row.status is Status.FAILED
    assert row.failure is Failure.ERROR, row.last_error
    assert row.last_error is not None and "failed to import" in row.last_error
    assert launch.wait_terminal(ok_id).status is Status.COMPLETED


def test_a_handler_file_named_like_an_option_does_not_confuse_the_check(
    launch: Launcher,
) -> None:
    launch.handler("--help", RETURNS)
    launch.handler("-x", "raise RuntimeError('x is broken')\n")
    launch.handler("ok", RETURNS)
    supervisor = launch.start_ready("--handlers", "handlers")
    report = supervisor.wait_log(type="-x", level="ERROR")
    assert "x is broken" in report["error"]
    assert not supervisor.events(type="*")
    assert not supervisor.events(type="--help", level="ERROR")


def test_a_handler_that_ends_the_check_process_at_import_is_named(launch: Launcher) -> None:
    """os._exit at import cannot be caught: the check still names the handler it was importing."""
    launch.handler("aaa_ok", RETURNS)
    launch.handler("vanishes", "import os\nos._exit(7)\n")
    supervisor = launch.start_ready()
    report = supervisor.wait_log(type="vanishes", level="ERROR")
    assert "exit status 7" in report["error"]
    assert not supervisor.events(type="*")
    assert not supervisor.events(type="aaa_ok", level="ERROR")


def test_what_a_handler_prints_at_import_does_not_spoil_the_check(launch: Launcher) -> None:
    launch.handler("chatty", CHATTY_AT_IMPORT)
    launch.handler("broken", "raise RuntimeError('broken for sure')\n")
    supervisor = launch.start_ready()
    report = supervisor.wait_log(type="broken", level="ERROR")
    assert "broken for sure" in report["error"]
    assert not supervisor.events(type="chatty", level="ERROR")
