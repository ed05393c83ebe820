"""Every outcome of a task, produced by the real ``python -m supervisor`` on SQLite and MariaDB.

Each test writes the handlers it needs into a scratch ``handlers/`` folder,
starts the supervisor there in a subprocess, enqueues tasks and reads the
rows back through the store, and the supervisor's JSON log lines from its
stderr. Nothing is mocked: handlers really raise, segfault, exit, hang and
spawn processes of their own.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from supervisor.lifecycle import Failure, Status
from tests.e2e.harness import Launcher, clean_env, gone, wait_until

SECRET = "hunter2-SECRET"

RETURNS = """
    def handle(task, progress):
        progress(10)
"""

WAITS_FOR_RELEASE = """
    import json
    import time
    from pathlib import Path

    def handle(task, progress):
        release = Path(json.loads(task.options)["release"])
        progress(50)
        limit = time.monotonic() + 60
        while not release.exists() and time.monotonic() < limit:
            time.sleep(0.02)
"""

SUCCEEDS_ON_THIRD_ATTEMPT = """
    def handle(task, progress):
        if task.attempt < 3:
            raise RuntimeError(f"attempt {task.attempt} fails on purpose")
"""

ALWAYS_RAISES = """
    def parse(value):
        raise ValueError(f"bad input {value}")

    def handle(task, progress):
        parse(42)
"""

RAISES_PERMANENT = """
    from supervisor import PermanentError

    def handle(task, progress):
        raise PermanentError("this input can never work")
"""

SEGFAULTS = """
    import ctypes

    def handle(task, progress):
        ctypes.string_at(0)
"""

EXITS_3 = """
    import os

    def handle(task, progress):
        os._exit(3)
"""

WRITES_PID_AND_HANGS = """
    import json
    import os
    import time
    from pathlib import Path

    def handle(task, progress):
        Path(json.loads(task.options)["pid"]).write_text(f"{os.getpid()}\\n")
        time.sleep(60)
"""

# Starts a helper process in its own process group (as subprocess does by default), then dies.
STARTS_HELPER_AND_CRASHES = """
    import json
    import os
    import subprocess
    from pathlib import Path

    def handle(task, progress):
        helper = subprocess.Popen(["sleep", "300"])
        Path(json.loads(task.options)["helper"]).write_text(f"{helper.pid}\\n")
        os._exit(3)
"""

# Starts a helper in a session of its own (out of reach of a process-group kill), then dies.
STARTS_SESSION_HELPER_AND_CRASHES = """
    import json
    import os
    import subprocess
    from pathlib import Path

    def handle(task, progress):
        helper = subprocess.Popen(["sleep", "300"], start_new_session=True)
        Path(json.loads(task.options)["helper"]).write_text(f"{helper.pid}\\n")
        os._exit(3)
"""

# Echoes its options in the exception message, as careless handlers do.
ECHOES_OPTIONS_IN_ERROR = """
    def handle(task, progress):
        raise ValueError(f"cannot parse {task.options}")
"""

# Ignores SIGTERM and leaves a grandchild in a session of its own: only a kill of the
# whole tree, with the grandchild found by pid, gets rid of both.
HANGS_WITH_GRANDCHILD = """
    import json
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    def handle(task, progress):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        paths = json.loads(task.options)
        grandchild = subprocess.Popen(["sleep", "300"], start_new_session=True)
        Path(paths.get("grandchild", "grandchild.pid")).write_text(f"{grandchild.pid}\\n")
        Path(paths.get("child", "child.pid")).write_text(f"{os.getpid()}\\n")
        while True:
            time.sleep(0.05)
"""

BROKEN_AT_IMPORT = """
    raise RuntimeError("cannot load: settings.toml is missing")

    def handle(task, progress):
        pass
"""


@pytest.fixture
def launch(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def test_a_handler_that_returns_completes_its_task_at_100_percent(launch: Launcher) -> None:
    """Returning from handle() completes the task: progress 100, one attempt, no error."""
    launch.handler("ok", RETURNS)
    supervisor = launch.start_ready()
    task_id = launch.enqueue("ok", '{"n": 1}')

    row = launch.wait_terminal(task_id)

    assert row.status is Status.COMPLETED
    assert row.progress_pct == 100
    assert row.attempts == 1
    assert row.failure is None and row.last_error is None
    assert row.completed_at is not None
    event = supervisor.wait_log(task_id=task_id, outcome="completed")
    assert event["type"] == "ok" and event["attempt"] == 1 and "duration_s" in event


def test_a_raising_handler_is_retried_with_the_backoff_then_completes(launch: Launcher) -> None:
    """An exception with attempts left re-queues the task after the configured backoff."""
    launch.handler("flaky", SUCCEEDS_ON_THIRD_ATTEMPT)
    supervisor = launch.start_ready("--backoff", "0,0.5")
    task_id = launch.enqueue("flaky", max_attempts=3)

    row = launch.wait_terminal(task_id)

    assert row.status is Status.COMPLETED
    assert row.attempts == 3
    assert row.progress_pct == 100
    # --backoff 0,0.5: attempt 1 at once, attempts 2 and 3 (the last value repeats) 0.5 s later.
    retries = supervisor.events(task_id=task_id, outcome="retried")
    assert [(r["attempt"], r["retry_in_s"]) for r in retries] == [(1, 0.5), (2, 0.5)]
    assert retries[1]["error"] == "RuntimeError"  # the type only: messages may quote options
    completed = supervisor.wait_log(task_id=task_id, outcome="completed")
    times = [datetime.fromisoformat(r["time"]) for r in (*retries, completed)]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 0.45, f"an attempt ran before its 0.5 s backoff: {gaps}"


def test_a_handler_that_keeps_raising_fails_with_error_after_its_last_attempt(
    launch: Launcher,
) -> None:
    """The last attempt's exception fails the task ('error') with type, message and traceback."""
    launch.handler("bad", ALWAYS_RAISES)
    supervisor = launch.start_ready("--backoff", "0,0.2")
    task_id = launch.enqueue("bad", max_attempts=3)

    row = launch.wait_terminal(task_id)

    assert row.status is Status.FAILED
    assert row.failure is Failure.ERROR
    assert row.attempts == 3
    assert row.last_error is not None
    assert "ValueError: bad input 42" in row.last_error
    assert "Traceback (most recent call last)" in row.last_error
    assert "in handle" in row.last_error and "in parse" in row.last_error
    supervisor.wait_log(task_id=task_id, outcome="error")
    outcomes = [r["outcome"] for r in supervisor.events(task_id=task_id) if "outcome" in r]
    assert outcomes == ["retried", "retried", "error"]


def test_a_permanent_error_fails_at_once_without_retry(launch: Launcher) -> None:
    """PermanentError fails the task on its first attempt even though attempts remain."""
    launch.handler("hopeless", RAISES_PERMANENT)
    launch.start_ready()
    task_id = launch.enqueue("hopeless", max_attempts=3)

    row = launch.wait_terminal(task_id)

    assert row.status is Status.FAILED
    assert row.failure is Failure.ERROR
    assert row.attempts == 1
    assert row.last_error is not None
    assert "PermanentError: this input can never work" in row.last_error


@pytest.mark.parametrize(
    ("source", "described"),
    [
        pytest.param(SEGFAULTS, "killed by SIGSEGV", id="segfault"),
        pytest.param(EXITS_3, "exited with code 3", id="os_exit"),
    ],
)
def test_a_child_that_dies_during_a_task_is_a_panic_never_retried(
    launch: Launcher, source: str, described: str
) -> None:
    """The child dying fails the task ('panic') on attempt 1, naming the signal or exit code."""
    launch.handler("crash", source)
    launch.handler("ok", RETURNS)
    supervisor = launch.start_ready()
    task_id = launch.enqueue("crash", max_attempts=3)

    row = launch.wait_terminal(task_id)

    assert row.status is Status.FAILED
    assert row.failure is Failure.PANIC
    assert row.attempts == 1
    assert row.last_error is not None and described in row.last_error
    supervisor.wait_log(task_id=task_id, outcome="panic")
    # The supervisor survives its child's death and runs the next task in a new child.
    after = launch.enqueue("ok")
    assert launch.wait_terminal(after).status is Status.COMPLETED


def test_a_panicking_child_takes_the_processes_its_handler_started_with_it(
    launch: Launcher,
) -> None:
    """What a handler started in the child's process group does not outlive a panic."""
    launch.handler("crash", STARTS_HELPER_AND_CRASHES)
    launch.start_ready()
    task_id = launch.enqueue("crash", launch.paths_json(helper="helper.pid"))
    helper = launch.read_pid("helper.pid")

    row = launch.wait_terminal(task_id)

    assert row.failure is Failure.PANIC
    wait_until(lambda: gone(helper), 5, "the handler's helper process gone")


def test_a_panicking_child_takes_even_its_new_session_processes_with_it(
    launch: Launcher,
) -> None:
    """Orphans re-parent to the supervisor (a subreaper), which kills them after a panic."""
    launch.handler("crash", STARTS_SESSION_HELPER_AND_CRASHES)
    launch.start_ready()
    task_id = launch.enqueue("crash", launch.paths_json(helper="helper.pid"))
    helper = launch.read_pid("helper.pid")

    row = launch.wait_terminal(task_id)

    assert row.failure is Failure.PANIC
    wait_until(lambda: gone(helper), 5, "the handler's new-session helper gone")


def test_a_handler_error_is_logged_by_type_only_since_its_message_may_quote_options(
    launch: Launcher,
) -> None:
    """The message goes to last_error; the log line carries only the exception type."""
    launch.handler("careless", ECHOES_OPTIONS_IN_ERROR)
    supervisor = launch.start_ready()
    task_id = launch.enqueue("careless", "hunter2-SECRET", max_attempts=1)

    row = launch.wait_terminal(task_id)

    assert row.failure is Failure.ERROR
    assert row.last_error is not None and "hunter2-SECRET" in row.last_error
    line = supervisor.wait_log(task_id=task_id, outcome="error")
    assert line["error"] == "ValueError"
    assert "hunter2-SECRET" not in supervisor.stderr()


def test_a_busy_child_killed_by_someone_else_is_a_panic_flagged_as_possibly_oom(
    launch: Launcher,
) -> None:
    """A SIGKILL the supervisor did not send (the OOM killer's) is a panic saying so."""
    launch.handler("hang", WRITES_PID_AND_HANGS)
    supervisor = launch.start_ready()
    task_id = launch.enqueue("hang", launch.paths_json(pid="child.pid"), max_attempts=3)
    child_pid = launch.read_pid("child.pid")
    assert child_pid in supervisor.child_pids()

    os.kill(child_pid, signal.SIGKILL)

    row = launch.wait_terminal(task_id)
    assert row.status is Status.FAILED
    assert row.failure is Failure.PANIC
    assert row.attempts == 1
    assert row.last_error is not None
    assert "SIGKILL" in row.last_error and "possibly out of memory" in row.last_error
    assert "peak RSS" in row.last_error


def test_an_operators_cancel_of_a_running_task_is_logged_cancelled_not_lost(
    launch: Launcher,
) -> None:
    """`python -m supervisor cancel ID` on a running task: child killed, outcome `cancelled`."""
    launch.handler("hang", WRITES_PID_AND_HANGS)
    supervisor = launch.start_ready(lease=3)  # a heartbeat every second notices the cancel
    task_id = launch.enqueue("hang", launch.paths_json(pid="child.pid"))
    child_pid = launch.read_pid("child.pid")

    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "cancel", str(task_id)],
        cwd=launch.workdir,
        env=clean_env(SUPERVISOR_DSN=launch.dsn),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    event = supervisor.wait_log(task_id=task_id, outcome="cancelled")
    assert event["message"] == "task cancelled by an operator; killing the child"
    wait_until(lambda: gone(child_pid), what="the cancelled task's child to be killed")
    assert not supervisor.events(task_id=task_id, outcome="lost")
    assert launch.get(task_id).status is Status.CANCELLED


def test_a_task_past_its_deadline_is_killed_with_its_whole_tree_and_fails_timeout(
    launch: Launcher,
) -> None:
    """At the deadline the handler's stack is captured, child and grandchild die, 'timeout'."""
    launch.handler("hang", HANGS_WITH_GRANDCHILD)
    supervisor = launch.start_ready()
    options = launch.paths_json(child="child.pid", grandchild="grandchild.pid")
    task_id = launch.enqueue_cli("hang", options, "--budget", "2", "--max-attempts", "3")
    child_pid, grandchild_pid = launch.read_pid("child.pid"), launch.read_pid("grandchild.pid")
    assert child_pid in supervisor.child_pids()
    assert not gone(grandchild_pid)

    row = launch.wait_terminal(task_id, timeout=10)

    assert row.status is Status.FAILED
    assert row.failure is Failure.TIMEOUT
    assert row.attempts == 1
    assert row.last_error is not None
    assert "in handle" in row.last_error and "hang.py" in row.last_error
    wait_until(lambda: gone(child_pid) and gone(grandchild_pid), 5, "child and grandchild gone")
    assert row.completed_at is not None
    late_s = (row.completed_at - row.deadline_at).total_seconds()
    assert -0.2 < late_s < 1.0, f"killed {late_s:.3f} s after the deadline"
    supervisor.wait_log(task_id=task_id, outcome="timeout")
    # The slot gets a new child.
    assert child_pid not in supervisor.wait_children(1)


def test_a_task_whose_budget_ran_out_while_queued_expires_without_running(
    launch: Launcher,
) -> None:
    """A queued task past its deadline is failed 'expired' by housekeeping, never dispatched."""
    launch.handler("ok", RETURNS)
    task_id = launch.enqueue_cli("ok", "{}", "--budget", "0.5")
    time.sleep(1.0)  # no supervisor runs while the budget runs out
    supervisor = launch.start()

    row = launch.wait_terminal(task_id)

    assert row.status is Status.FAILED
    assert row.failure is Failure.EXPIRED
    assert row.attempts == 0
    assert row.started_at is None
    supervisor.wait_log(outcome="expired")


def test_a_handler_that_cannot_be_imported_fails_its_tasks_and_is_reported_at_start(
    launch: Launcher,
) -> None:
    """An import error is logged at ERROR on start-up; its tasks fail 'error'; others still run."""
    launch.handler("broken", BROKEN_AT_IMPORT)
    launch.handler("ok", RETURNS)
    supervisor = launch.start()

    report = supervisor.wait_log(type="broken", level="ERROR")
    assert "cannot be imported" in report["message"]
    assert "settings.toml is missing" in report["error"]
    broken_id = launch.enqueue("broken", max_attempts=3)
    ok_id = launch.enqueue("ok")

    broken = launch.wait_terminal(broken_id)
    assert broken.status is Status.FAILED
    assert broken.failure is Failure.ERROR
    assert broken.attempts == 1
    assert broken.last_error is not None
    assert "RuntimeError: cannot load: settings.toml is missing" in broken.last_error
    assert launch.wait_terminal(ok_id).status is Status.COMPLETED


def test_a_task_whose_type_has_no_handler_stays_queued(launch: Launcher) -> None:
    """The supervisor claims only the types it has handlers for; other tasks stay queued."""
    launch.handler("ok", RETURNS)
    launch.start_ready()
    orphan_id = launch.enqueue("nobody_handles_this")
    first = launch.enqueue("ok")
    assert launch.wait_terminal(first).status is Status.COMPLETED
    second = launch.enqueue("ok")  # a later claim cycle, to be sure it was not a matter of time
    assert launch.wait_terminal(second).status is Status.COMPLETED

    orphan = launch.get(orphan_id)
    assert orphan.status is Status.QUEUED
    assert orphan.attempts == 0
    assert orphan.claimed_by is None


def test_progress_reported_by_a_running_handler_is_visible_in_the_row(launch: Launcher) -> None:
    """progress(50) reaches the row while the task is still running; completion sets 100."""
    launch.handler("slow", WAITS_FOR_RELEASE)
    launch.start_ready()
    release = launch.path("release")
    task_id = launch.enqueue("slow", launch.paths_json(release="release"))

    launch.wait_row(
        task_id,
        lambda row: row.status is Status.RUNNING and row.progress_pct == 50,
        what="progress 50 while running",
    )
    release.touch()

    row = launch.wait_terminal(task_id)
    assert row.status is Status.COMPLETED
    assert row.progress_pct == 100


def test_task_options_never_reach_the_logs_whatever_the_outcome(launch: Launcher) -> None:
    """A secret in task_options appears in no log line of any event, nor anywhere on stderr."""
    launch.handler("s_ok", RETURNS)
    launch.handler("s_raise", ALWAYS_RAISES)
    launch.handler("s_panic", EXITS_3)
    launch.handler("s_timeout", HANGS_WITH_GRANDCHILD)
    supervisor = launch.start_ready("--backoff", "0", workers=4)
    options = json.dumps({"password": SECRET, "path": "x.png"})
    ids = {
        "completed": launch.enqueue("s_ok", options),
        "error": launch.enqueue("s_raise", options, max_attempts=2),
        "panic": launch.enqueue("s_panic", options),
        "timeout": launch.enqueue("s_timeout", options, budget=2),
    }

    for task_id in ids.values():
        launch.wait_terminal(task_id)
    for outcome, task_id in [*ids.items(), ("retried", ids["error"])]:
        supervisor.wait_log(task_id=task_id, outcome=outcome)
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit(10) == 0

    logs = supervisor.logs()
    assert len(logs) > 5
    leaking = [line for line in logs if SECRET in json.dumps(line)]
    assert leaking == []
    assert SECRET not in supervisor.stderr()
