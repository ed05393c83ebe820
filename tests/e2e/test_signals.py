"""Operators' signals, sent to the real ``python -m supervisor`` as real signals.

TERM/INT drain, a second TERM or a QUIT drains at once, HUP reloads the
handlers folder, TTIN/TTOU add and remove a worker, and a supervisor killed
with SIGKILL leaves nothing running behind it. These tests are about
processes, not storage, so they run on SQLite (the drain's write-back is also
covered on MariaDB).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.lifecycle import Failure, Status
from supervisor.producer import new_task
from tests.e2e.harness import Launcher, gone, wait_until

SLEEPS = """
    import json
    import time

    def handle(task, progress):
        time.sleep(json.loads(task.options)["seconds"])
"""

WAITS_FOR_RELEASE = """
    import json
    import os
    import time
    from pathlib import Path

    def handle(task, progress):
        options = json.loads(task.options)
        Path(options["pid"]).write_text(f"{os.getpid()}\\n")
        release = Path(options["release"])
        limit = time.monotonic() + 60
        while not release.exists() and time.monotonic() < limit:
            time.sleep(0.02)
"""

WRITES_PID = """
    import json
    import os
    from pathlib import Path

    def handle(task, progress):
        Path(json.loads(task.options)["pid"]).write_text(f"{os.getpid()}\\n")
"""

STARTS_GRANDCHILD_AND_HANGS = """
    import json
    import os
    import subprocess
    import time
    from pathlib import Path

    def handle(task, progress):
        paths = json.loads(task.options)
        grandchild = subprocess.Popen(["sleep", "300"], start_new_session=True)
        Path(paths["grandchild"]).write_text(f"{grandchild.pid}\\n")
        Path(paths["child"]).write_text(f"{os.getpid()}\\n")
        while True:
            time.sleep(0.05)
"""


@pytest.fixture
def launch(tmp_path: Path, sqlite_dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, sqlite_dsn) as launcher:
        yield launcher


@pytest.fixture
def launch_any(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def sleep_for(seconds: float) -> str:
    return json.dumps({"seconds": seconds})


def wait_running(launch: Launcher, *task_ids: int) -> None:
    for task_id in task_ids:
        launch.wait_status(task_id, Status.RUNNING)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_term_stops_claiming_lets_in_flight_tasks_finish_and_exits_0(
    launch: Launcher, signum: signal.Signals
) -> None:
    """On TERM/INT nothing new is claimed; running tasks complete; then the process exits 0."""
    launch.handler("sleep", SLEEPS)
    supervisor = launch.start_ready(workers=2)
    running = [launch.enqueue("sleep", sleep_for(1.5)) for _ in range(2)]
    wait_running(launch, *running)
    waiting = launch.enqueue("sleep", sleep_for(0))

    supervisor.send(signum)

    assert supervisor.wait_exit(15) == 0
    for task_id in running:
        row = launch.get(task_id)
        assert row.status is Status.COMPLETED
        assert row.attempts == 1
    left = launch.get(waiting)
    assert left.status is Status.QUEUED and left.attempts == 0


def test_drain_timeout_puts_unfinished_tasks_back_with_the_attempt_refunded(
    launch_any: Launcher,
) -> None:
    """Tasks still running at --drain-timeout are killed and re-queued as if never started."""
    launch = launch_any
    launch.handler("sleep", SLEEPS)
    supervisor = launch.start_ready("--drain-timeout", "1", workers=2)
    task_ids = [launch.enqueue("sleep", sleep_for(30)) for _ in range(2)]
    wait_running(launch, *task_ids)
    children = supervisor.child_pids()

    supervisor.send(signal.SIGTERM)

    assert supervisor.wait_exit(6) == 0
    for task_id in task_ids:
        row = launch.get(task_id)
        assert row.status is Status.QUEUED
        assert row.attempts == 0
        assert row.claimed_by is None
        assert row.started_at is None
    wait_until(lambda: all(gone(pid) for pid in children), 5, "the killed children gone")
    refunds = [supervisor.events(task_id=t, outcome="refunded") for t in task_ids]
    assert all(refunds)


@pytest.mark.parametrize(
    "signals",
    [
        pytest.param((signal.SIGTERM, signal.SIGTERM), id="second_TERM"),
        pytest.param((signal.SIGINT, signal.SIGTERM), id="INT_then_TERM"),
        pytest.param((signal.SIGQUIT,), id="QUIT"),
    ],
)
def test_a_second_stop_signal_or_quit_drains_at_once(
    launch: Launcher, signals: tuple[signal.Signals, ...]
) -> None:
    """A second TERM/INT, or QUIT, does not wait out --drain-timeout: tasks go back at once."""
    launch.handler("sleep", SLEEPS)
    supervisor = launch.start_ready("--drain-timeout", "60")
    task_id = launch.enqueue("sleep", sleep_for(30))
    wait_running(launch, task_id)

    first, *rest = signals
    supervisor.send(first)
    if rest:
        supervisor.wait_log(message="draining: no new claims; in-flight tasks may finish")
        assert supervisor.running
        supervisor.send(rest[0])

    assert supervisor.wait_exit(5) == 0
    row = launch.get(task_id)
    assert row.status is Status.QUEUED
    assert row.attempts == 0


def test_hup_loads_a_new_handler_file_without_losing_the_running_task(launch: Launcher) -> None:
    """HUP re-reads handlers/: the running task finishes in its old child, then new types run."""
    launch.handler("old", WAITS_FOR_RELEASE)
    supervisor = launch.start_ready(workers=1)
    release = launch.path("release")
    old_id = launch.enqueue("old", launch.paths_json(pid="old.pid", release="release"))
    old_child = launch.read_pid("old.pid")
    new_id = launch.enqueue("new", launch.paths_json(pid="new.pid"))

    launch.handler("new", WRITES_PID)
    supervisor.send(signal.SIGHUP)
    reload = supervisor.wait_log(message="reloaded handlers; replacing children")
    assert reload["types"] == ["new", "old"]
    assert launch.get(old_id).status is Status.RUNNING
    release.touch()

    old = launch.wait_terminal(old_id)
    assert old.status is Status.COMPLETED
    assert old.attempts == 1
    new = launch.wait_terminal(new_id)
    assert new.status is Status.COMPLETED
    assert new.attempts == 1
    assert old.completed_at is not None and new.started_at is not None
    assert new.started_at >= old.completed_at
    assert launch.read_pid("new.pid") != old_child  # the child was replaced after its task
    assert supervisor.running


def ignored_signals(pid: int) -> int:
    """The process's mask of ignored signals (bit n-1 for signal n), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    return 0


def test_hup_ttin_ttou_while_still_starting_neither_kill_nor_stop_it(launch: Launcher) -> None:
    """A reload sent right after a start (a deploy, logrotate) must not end the supervisor.

    Their default actions kill (HUP) or stop (TTIN, TTOU) a process; until the
    loop installs its handlers, while it is still importing, they are ignored.
    """
    supervisor = launch.start(workers=1)
    # All three, not just the first one set: a TTIN sent between the two would stop it.
    bits = sum(1 << (signum - 1) for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU))
    deadline = time.monotonic() + 10
    while ignored_signals(supervisor.process.pid) & bits != bits:  # the import window: ~0.1 s
        assert time.monotonic() < deadline and supervisor.running, "they were never ignored"
        time.sleep(0.001)
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        supervisor.send(signum)
    supervisor.wait_log(message="supervisor starting")
    supervisor.wait_children(1)
    assert supervisor.running


def test_signals_ignored_during_start_up_are_not_inherited_by_children_or_the_template(
    launch: Launcher,
) -> None:
    """What a handler execs must see HUP, TTIN and TTOU at their defaults, as any program."""
    supervisor = launch.start_ready(workers=2)
    startup_ignored = 0
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        startup_ignored |= 1 << (signum - 1)
    descendants = psutil.Process(supervisor.process.pid).children(recursive=True)
    assert len(descendants) >= 3  # two workers and the fork server's template
    for process in descendants:
        assert not ignored_signals(process.pid) & startup_ignored, process.cmdline()
    assert psutil.Process(supervisor.process.pid).status() != psutil.STATUS_STOPPED
    launch.handler("sleepy", SLEEPS)
    supervisor.send(signal.SIGHUP)  # now a reload, as usual
    supervisor.wait_log(message="reloaded handlers; replacing children")
    task_id = launch.enqueue("sleepy", sleep_for(0.01))
    assert launch.wait_terminal(task_id).status is Status.COMPLETED
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit(30) == 0


def test_ttin_adds_a_worker_and_ttou_removes_one(launch: Launcher) -> None:
    """TTIN starts one more child process; TTOU stops one; never fewer than one."""
    launch.handler("sleep", SLEEPS)
    supervisor = launch.start_ready(workers=2)

    supervisor.send(signal.SIGTTIN)
    supervisor.wait_children(3)
    supervisor.send(signal.SIGTTOU)
    supervisor.wait_children(2)
    supervisor.send(signal.SIGTTOU)
    supervisor.wait_children(1)
    supervisor.send(signal.SIGTTOU)  # the last worker stays
    supervisor.send(signal.SIGTTIN)
    supervisor.wait_children(2)

    # The resized pool still works: two tasks run side by side.
    task_ids = [launch.enqueue("sleep", sleep_for(30)) for _ in range(2)]
    wait_running(launch, *task_ids)


def test_ttou_retires_a_busy_worker_only_after_its_task(launch: Launcher) -> None:
    """TTOU on a busy pool lets the task in the retired slot complete before its child goes."""
    launch.handler("wait", WAITS_FOR_RELEASE)
    supervisor = launch.start_ready(workers=2)
    release = launch.path("release")
    task_ids = [
        launch.enqueue("wait", launch.paths_json(pid=f"{n}.pid", release="release"))
        for n in range(2)
    ]
    wait_running(launch, *task_ids)

    supervisor.send(signal.SIGTTOU)
    supervisor.wait_log(message="one worker less")
    assert len(supervisor.children()) == 2
    release.touch()

    for task_id in task_ids:
        assert launch.wait_terminal(task_id).status is Status.COMPLETED
    supervisor.wait_children(1)


def test_kill_9_of_the_parent_leaves_no_child_or_grandchild_alive(launch: Launcher) -> None:
    """When the parent is SIGKILLed, every child and what its handler started die within ~2 s."""
    launch.handler("hang", STARTS_GRANDCHILD_AND_HANGS)
    supervisor = launch.start_ready(workers=2)
    launch.enqueue("hang", launch.paths_json(child="child.pid", grandchild="grandchild.pid"))
    busy_child, grandchild = launch.read_pid("child.pid"), launch.read_pid("grandchild.pid")
    children = supervisor.child_pids()
    assert busy_child in children and len(children) == 2
    assert not gone(grandchild)

    supervisor.send(signal.SIGKILL)
    assert supervisor.wait_exit(5) == -signal.SIGKILL

    everything = [*children, grandchild]
    wait_until(lambda: all(gone(pid) for pid in everything), 2.5, "children and grandchild gone")


def test_an_idle_child_killed_from_outside_is_replaced(launch: Launcher) -> None:
    """An idle worker that dies (here: SIGKILL by someone else) is replaced; work goes on."""
    launch.handler("pid", WRITES_PID)
    supervisor = launch.start_ready(workers=2)
    before = supervisor.child_pids()
    victim = min(before)

    psutil.Process(victim).kill()

    def replaced() -> set[int] | None:
        pids = supervisor.child_pids()
        return pids if len(pids) == 2 and victim not in pids else None

    after = wait_until(replaced, 10, "a replacement child")
    assert after - before and len(after & before) == 1
    supervisor.wait_log(message="idle child died; replacing it")
    task_ids = [launch.enqueue("pid", launch.paths_json(pid=f"{n}.pid")) for n in range(4)]
    for task_id in task_ids:
        row = launch.wait_terminal(task_id)
        assert row.status is Status.COMPLETED
        assert row.attempts == 1


def test_a_reload_never_stalls_the_loop_on_slow_handler_imports(launch: Launcher) -> None:
    """HUP's import check of a handler that takes seconds to import runs beside the loop."""
    launch.handler("hang", SLEEPS)
    supervisor = launch.start_ready(workers=1)
    task_id = launch.enqueue("hang", sleep_for(60), budget=2)
    launch.wait_status(task_id, Status.RUNNING)
    launch.handler(
        "slow_import", "import time\ntime.sleep(6)\n\ndef handle(task, progress):\n    pass\n"
    )

    supervisor.send(signal.SIGHUP)

    row = launch.wait_terminal(task_id)
    assert row.failure is Failure.TIMEOUT
    assert row.completed_at is not None
    late_s = (row.completed_at - row.deadline_at).total_seconds()
    assert late_s < 1.0, f"the deadline kill came {late_s:.3f} s late during the reload"


TERMINATES_ITS_SUBPROCESS = """
    import subprocess

    def handle(task, progress):
        helper = subprocess.Popen(["sleep", "300"])
        helper.terminate()
        helper.wait(timeout=5)
"""


def test_a_handlers_subprocess_does_not_inherit_the_childs_ignored_signals(
    launch: Launcher,
) -> None:
    """Children ignore TERM/INT, but what a handler starts can still be stopped with TERM."""
    launch.handler("terminates", TERMINATES_ITS_SUBPROCESS)
    launch.start_ready()
    task_id = launch.enqueue("terminates", max_attempts=1)

    row = launch.wait_terminal(task_id, timeout=20)

    assert row.status is Status.COMPLETED, row.last_error


def test_children_ignore_term_and_int_only_the_parent_stops_them(launch: Launcher) -> None:
    """TERM or INT sent to a busy child (say, by a careless script) does not stop its task."""
    launch.handler("wait", WAITS_FOR_RELEASE)
    supervisor = launch.start_ready(workers=1)
    task_id = launch.enqueue("wait", launch.paths_json(pid="child.pid", release="release"))
    child = launch.read_pid("child.pid")

    os.kill(child, signal.SIGTERM)
    os.kill(child, signal.SIGINT)
    launch.path("release").touch()

    row = launch.wait_terminal(task_id)
    assert row.status is Status.COMPLETED
    assert row.attempts == 1
    assert supervisor.child_pids() == {child}


def test_a_drain_in_the_middle_of_a_stream_of_short_tasks_leaves_nothing_claimed(
    launch_any: Launcher,
) -> None:
    """Whatever the timing of TERM, every task ends completed once or queued as never started.

    None stays running, none is queued with an attempt used up.
    """
    launch = launch_any
    launch.handler("noop", "def handle(task, progress):\n    pass\n")
    supervisor = launch.start_ready(workers=2)
    ids = launch.store.enqueue_many([new_task("noop") for _ in range(3000)])
    launch.wait_status(ids[100], Status.COMPLETED, timeout=30)

    supervisor.send(signal.SIGTERM)

    assert supervisor.wait_exit(30) == 0
    rows = [launch.get(task_id) for task_id in ids]
    completed = [r for r in rows if r.status is Status.COMPLETED]
    queued = [r for r in rows if r.status is Status.QUEUED]
    assert len(completed) + len(queued) == len(ids)
    assert all(r.attempts == 1 for r in completed)
    assert all(r.attempts == 0 and r.claimed_by is None for r in queued)
    assert queued, "the stream was meant to be cut short by the drain"


RETRY_LATER = "child failed at start-up; retrying later"

# Makes every worker die before it says it is ready (the parent and the import check live).
DIES_AT_START = """
import os
import sys

if "--lifeline" in sys.argv:
    os._exit(7)
"""


def test_children_that_die_at_start_up_are_replaced_with_backoff_not_in_a_tight_loop(
    launch: Launcher, tmp_path: Path
) -> None:
    """A worker that cannot start is retried after 0.5 s, 1 s, 2 s ...; TERM still exits 0."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DIES_AT_START)
    supervisor = launch.start(workers=1, env={"PYTHONPATH": str(site)})
    supervisor.wait_log(message="supervisor starting")

    wait_until(lambda: len(supervisor.events(message=RETRY_LATER)) >= 3, 10, "three retries")

    delays = [event["delay_s"] for event in supervisor.events(message=RETRY_LATER)]
    assert delays[:3] == [0.5, 1.0, 2.0]
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit(15) == 0
