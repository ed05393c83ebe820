"""``supervisor.testing.run_handler``: one attempt in the supervisor's real child, as a record.

Each handler really returns, raises, hangs, segfaults or exits; the test only
reads the record, which must say what the row would say in production, and
never raises into the test.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from supervisor.errors import UsageError
from supervisor.handler_run import ChildStartError, run_attempt
from supervisor.lifecycle import Backoff, Failure, Outcome, Status
from supervisor.protocol import TaskMessage
from supervisor.testing import run_handler

RETURNS = """
    import json

    def handle(task, progress):
        options = json.loads(task.options)
        print("resizing", options["path"], "attempt", task.attempt, "of", task.max_attempts)
        progress(40)
        progress(float("nan"))  # ignored, as the supervisor ignores it
        progress(100)
"""

BURNS = """
    import time

    def handle(task, progress):
        end = time.process_time() + 0.5
        while time.process_time() < end:
            pass
"""

RAISES = """
    def handle(task, progress):
        raise ValueError("no such file")
"""

RAISES_PERMANENT = """
    from supervisor import PermanentError

    def handle(task, progress):
        raise PermanentError("this input can never work")
"""

HANGS = """
    import time

    def handle(task, progress):
        progress(50)
        while True:
            time.sleep(0.05)
"""

# libc sleep() returns early when the stack signal arrives just before the deadline.
SLEEPS_IN_C = """
    import ctypes

    def handle(task, progress):
        ctypes.CDLL(None).sleep(5)
"""

SEGFAULTS = """
    import ctypes

    def handle(task, progress):
        ctypes.string_at(0)
"""

EXITS_3 = """
    import os

    def handle(task, progress):
        print("last words")
        os._exit(3)
"""

BROKEN_AT_IMPORT = """
    raise RuntimeError("settings.toml is missing")
"""

# Writes a line that is no message onto the child's socket (its fd is on the command line).
FORGES_GARBAGE = """
    import os
    import sys
    import time

    def handle(task, progress):
        sock = int(sys.argv[sys.argv.index("--socket") + 1])
        os.write(sock, b"this is not JSON\\n")
        time.sleep(30)
"""

# Returns, leaving a non-daemon thread that prints while the child is told to stop.
LEAVES_A_THREAD = """
    import threading
    import time

    def later():
        time.sleep(0.3)
        print("after return", flush=True)
        time.sleep(30)

    def handle(task, progress):
        threading.Thread(target=later).start()
"""

BAD_PROGRESS = """
    def handle(task, progress):
        for value in (10**400, float("nan"), "abc", None, -5, 50):
            progress(value)
"""


@pytest.fixture
def handlers(tmp_path: Path) -> Path:
    folder = tmp_path / "handlers"
    folder.mkdir()
    for name, source in {
        "resize": RETURNS,
        "burns": BURNS,
        "raises": RAISES,
        "hopeless": RAISES_PERMANENT,
        "hangs": HANGS,
        "csleep": SLEEPS_IN_C,
        "segfault": SEGFAULTS,
        "exits": EXITS_3,
        "broken": BROKEN_AT_IMPORT,
        "badprogress": BAD_PROGRESS,
        "garbage": FORGES_GARBAGE,
        "thread": LEAVES_A_THREAD,
    }.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
    return folder


def test_a_handler_that_returns_is_completed_with_its_progress_and_output(
    handlers: Path,
) -> None:
    run = run_handler("resize", {"path": "a.png"}, handlers=handlers, attempt=2)

    assert run.completed
    assert (run.status, run.failure, run.last_error) == (Status.COMPLETED, None, None)
    assert run.progress[-1] == 100
    assert run.output == ("resizing a.png attempt 2 of 3",)
    assert run.duration_s >= 0
    assert run.cpu_s is not None and run.cpu_s >= 0
    assert run.peak_rss_bytes is not None and run.peak_rss_bytes > 0
    assert run.exit is not None and run.exit.clean


def test_a_raise_with_attempts_left_is_retried_after_the_backoff(handlers: Path) -> None:
    run = run_handler("raises", handlers=handlers, backoff=Backoff((0.0, 30.0)))

    assert (run.outcome, run.status, run.retry_in_s) == (Outcome.RETRIED, Status.QUEUED, 30.0)
    assert run.last_error is not None and run.last_error.startswith("ValueError: no such file")
    assert "Traceback (most recent call last)" in run.stack and "in handle" in run.stack


def test_a_raise_on_the_last_attempt_fails_with_error(handlers: Path) -> None:
    run = run_handler("raises", handlers=handlers, attempt=3, max_attempts=3)

    assert (run.outcome, run.status, run.failure) == (Outcome.ERROR, Status.FAILED, Failure.ERROR)


def test_a_permanent_error_fails_at_once(handlers: Path) -> None:
    run = run_handler("hopeless", handlers=handlers, attempt=1, max_attempts=3)

    assert (run.status, run.failure) == (Status.FAILED, Failure.ERROR)
    assert run.last_error is not None and "PermanentError" in run.last_error


def test_a_handler_that_fails_to_import_fails_its_task_with_the_import_error(
    handlers: Path,
) -> None:
    run = run_handler("broken", handlers=handlers)

    assert (run.status, run.failure) == (Status.FAILED, Failure.ERROR)
    assert run.last_error is not None and "settings.toml is missing" in run.last_error


def test_a_handler_past_its_budget_is_killed_and_its_stack_says_where_it_hung(
    handlers: Path,
) -> None:
    run = run_handler("hangs", handlers=handlers, budget=1)

    assert (run.outcome, run.status, run.failure) == (
        Outcome.TIMEOUT,
        Status.FAILED,
        Failure.TIMEOUT,
    )
    assert run.progress == (50,)
    assert run.last_error is not None and run.last_error.startswith("timeout:")
    assert "hangs.py" in run.stack and "in handle" in run.stack
    assert run.exit is not None and run.exit.signal_name == "SIGKILL"


def test_a_result_caused_by_the_stack_signal_is_a_timeout_not_completed(handlers: Path) -> None:
    run = run_handler("csleep", handlers=handlers, budget=1)

    assert run.failure is Failure.TIMEOUT


@pytest.mark.parametrize(
    ("task_type", "described"),
    [
        pytest.param("segfault", "killed by SIGSEGV", id="segfault"),
        pytest.param("exits", "exited with code 3", id="os_exit"),
    ],
)
def test_a_child_that_dies_is_a_panic_never_an_exception_in_the_test(
    handlers: Path, task_type: str, described: str
) -> None:
    run = run_handler(task_type, handlers=handlers, attempt=1, max_attempts=3)

    assert (run.outcome, run.status, run.failure) == (Outcome.PANIC, Status.FAILED, Failure.PANIC)
    assert run.last_error is not None and described in run.last_error
    assert run.retry_in_s is None


def test_what_a_child_printed_before_it_died_is_kept(handlers: Path) -> None:
    assert run_handler("exits", handlers=handlers).output == ("last words",)


def test_a_segfault_comes_with_faulthandlers_stack(handlers: Path) -> None:
    run = run_handler("segfault", handlers=handlers)

    assert "Segmentation fault" in run.stack and "segfault.py" in run.stack


def test_progress_values_are_clamped_and_bad_ones_ignored_as_in_production(
    handlers: Path,
) -> None:
    run = run_handler("badprogress", handlers=handlers)

    assert run.completed
    assert run.progress[0] == 100 and run.progress[-1] == 50


def test_a_type_with_no_handler_file_is_the_tests_mistake(handlers: Path) -> None:
    with pytest.raises(UsageError, match="no handler for type 'missing'"):
        run_handler("missing", handlers=handlers)


def test_a_child_that_breaks_the_protocol_is_a_panic(handlers: Path) -> None:
    run = run_handler("garbage", handlers=handlers)

    assert run.failure is Failure.PANIC
    assert run.last_error is not None and "malformed message" in run.last_error


def test_a_thread_left_running_gets_its_second_to_print_and_is_then_ended(
    handlers: Path,
) -> None:
    run = run_handler("thread", handlers=handlers)

    assert run.completed
    assert run.output == ("after return",)


def test_a_child_that_cannot_start_is_an_error_of_the_environment(handlers: Path) -> None:
    message = TaskMessage(
        id=1,
        type="resize",
        path=str(handlers / "resize.py"),
        options=None,
        attempt=1,
        max_attempts=1,
        remaining_s=10,
    )
    with pytest.raises(ChildStartError, match="exited before it was ready"):
        run_attempt(message, backoff=Backoff(), env={"PYTHONHOME": "/nonexistent"})


def test_the_figures_are_the_attempts_as_the_row_records_them(handlers: Path) -> None:
    """Half a second of CPU burned on purpose, not the child's start-up with it; the peak is
    the attempt's (the child's own report, as in production)."""
    run = run_handler("burns", handlers=handlers)
    assert run.completed
    assert run.cpu_s is not None and 0.45 <= run.cpu_s <= 0.55
    assert run.peak_rss_bytes is not None and run.peak_rss_bytes > 0
    assert run.exit is not None and run.exit.cpu_s is not None and run.exit.cpu_s >= run.cpu_s


def test_a_killed_attempts_figures_come_from_the_exit_against_its_start(handlers: Path) -> None:
    run = run_handler("hangs", handlers=handlers, budget=1)
    assert run.failure is Failure.TIMEOUT
    assert run.cpu_s is not None and run.cpu_s < 0.5, "it slept: the start-up is not counted"
    assert run.peak_rss_bytes is not None and run.peak_rss_bytes > 0
