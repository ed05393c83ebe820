"""``--child-user``: a root supervisor runs its handlers as another user (issue 10, item 14).

The real CLI as root, with ``--child-user nobody``, and handlers that look
where a hostile one would. Everything the children must reach lives in a
folder every user can traverse (pytest's ``tmp_path`` is private to root).

Why this works on a machine whose Python is unreadable to ``nobody`` (it
lives under ``/root``, mode 0700, here and in CI): a child drops its
privileges only after its own imports, so what a handler imports must be
loaded by then; these handlers import nothing a child has not already
imported. A real deployment needs the Python installation, the virtualenv
and the handlers readable by the user (the README says so).

Coverage: the children measure themselves (coverage.py's subprocess patch)
and save their data when they exit, as ``nobody``, who cannot write into the
checkout. The supervisor is told to save it into a folder ``nobody`` can
write (``coverage_env``), and the files are moved next to the suite's own
data afterwards, so ``coverage combine`` counts the code that ran after the
drop and nothing warns.

These tests need root; CI runs as root, so they run there. Elsewhere they
are skipped.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import select
import shutil
import signal
import socket
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.lifecycle import Status
from supervisor.privileges import ChildUser
from supervisor.protocol import ErrorMessage, StopMessage, TaskMessage
from supervisor.workers import Child, child_environment
from tests.e2e.harness import Launcher, clean_env, gone, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="--child-user needs a supervisor started as root (CI runs as root)"
)

NOBODY = pwd.getpwnam("nobody")
READABLE_DATABASE = (
    "the --child-user can reach the SQLite database; keep it in a folder only the"
    " supervisor's user can enter"
)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every user can traverse, with ``out/`` that every user can write."""
    base = Path(tempfile.mkdtemp(prefix="sv-child-user-"))
    base.chmod(0o755)
    (base / "out").mkdir()
    (base / "out").chmod(0o777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def coverage_env(shared: Path) -> Iterator[dict[str, str]]:
    """Environment that makes measured processes save coverage data where ``nobody`` can write.

    Empty when the suite is not measured. The files are moved next to the
    suite's own data file at teardown.
    """
    config = os.environ.get("COVERAGE_PROCESS_CONFIG")
    if not config:
        yield {}
        return
    data = json.loads(base64.b64decode(config))
    target = Path(data["data_file"])
    folder = shared / "coverage"
    folder.mkdir()
    folder.chmod(0o777)
    data["data_file"] = str(folder / target.name)
    try:
        yield {"COVERAGE_PROCESS_CONFIG": base64.b64encode(json.dumps(data).encode()).decode()}
    finally:
        for path in folder.glob(target.name + ".*"):
            shutil.move(path, target.parent / path.name)


# {out} is the shared writable folder; every import is recorded there with the importer's uid.
SNOOP = """
import json, os

with open(os.path.join({out!r}, f"import-{{os.getpid()}}.json"), "w") as _f:
    json.dump({{"uid": os.getuid(), "euid": os.geteuid()}}, _f)

from prometheus_client import Counter

JOBS = Counter("child_user_jobs", "Jobs a handler ran as the child user.")


def attempt(action):
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "allowed"


def handle(task, progress):
    options = json.loads(task.options)
    ppid = os.getppid()
    JOBS.inc()
    mine = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    parent_metrics = options["parent_metrics"]
    report = {{
        "pid": os.getpid(),
        "resuid": os.getresuid(),
        "resgid": os.getresgid(),
        "groups": os.getgroups(),
        "env": [os.environ.get(k) for k in ("HOME", "USER", "LOGNAME")],
        "credentials_env": [k for k in os.environ if "CREDENTIALS" in k],
        "metrics_dir": mine,
        "parent_environ": attempt(lambda: open(f"/proc/{{ppid}}/environ", "rb").read()),
        "parent_mem": attempt(lambda: open(f"/proc/{{ppid}}/mem", "rb").close()),
        "signal_parent": attempt(lambda: os.kill(ppid, 0)),
        "write_db": attempt(lambda: open(options["db"], "r+b").close()),
        "write_parent_metrics": attempt(
            lambda: open(os.path.join(parent_metrics, "counter_parent.db"), "r+b").close()
        ),
        "plant_in_parent_metrics": attempt(
            lambda: open(os.path.join(parent_metrics, "gauge_max_parent.db"), "wb").close()
        ),
    }}
    # What a hostile handler can do in its own metrics folder: the scrape must survive it.
    os.symlink(options["db"], os.path.join(mine, "counter_planted.db"))
    os.mkfifo(os.path.join(mine, "gauge_all_fifo.db"))
    with open(os.path.join({out!r}, f"report-{{task.id}}.json"), "w") as out:
        json.dump(report, out)
    progress(100)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_handlers_run_as_the_child_user_and_cannot_reach_the_parent(
    shared: Path, coverage_env: dict[str, str]
) -> None:
    out = shared / "out"
    parent_metrics = shared / "metrics"  # reachable by nobody, so writing it is what is refused
    parent_metrics.mkdir(mode=0o755)
    db = shared / "work" / "tasks.db"
    (shared / "work").mkdir(mode=0o755)
    with Launcher(shared / "work", f"sqlite:///{db}") as launch:
        launch.handlers.chmod(0o755)
        path = launch.handler("snoop", SNOOP.format(out=str(out)))
        path.chmod(0o644)
        port = free_port()
        supervisor = launch.start_ready(
            "--child-user",
            "nobody",
            "--max-tasks-per-child",
            "1",  # the first child exits normally (so it saves its coverage data) after its task
            "--metrics-port",
            str(port),
            env={"PROMETHEUS_MULTIPROC_DIR": str(parent_metrics), **coverage_env},
        )
        options = json.dumps({"db": str(db), "parent_metrics": str(parent_metrics)})
        task_id = launch.enqueue("snoop", options)
        row = launch.wait_terminal(task_id)
        assert row.status is Status.COMPLETED, row.last_error
        report = json.loads((out / f"report-{task_id}.json").read_text())

        # The handler ran as nobody, for good, with nobody's groups and login variables.
        assert report["resuid"] == [NOBODY.pw_uid] * 3
        assert report["resgid"] == [NOBODY.pw_gid] * 3
        assert sorted(report["groups"]) == sorted(os.getgrouplist("nobody", NOBODY.pw_gid))
        assert report["env"] == [NOBODY.pw_dir, "nobody", "nobody"]
        assert report["credentials_env"] == []
        # The parent (root, non-dumpable) is out of reach: no environ, memory or signals.
        assert report["parent_environ"] == "PermissionError"
        assert report["parent_mem"] == "PermissionError"
        assert report["signal_parent"] == "PermissionError"
        # Nor can it write the database or the parent's metric files.
        assert report["write_db"] == "PermissionError"
        assert report["write_parent_metrics"] == "PermissionError"
        assert report["plant_in_parent_metrics"] == "PermissionError"
        assert not (parent_metrics / "gauge_max_parent.db").exists()
        assert Path(report["metrics_dir"]).parent != parent_metrics

        # Every import of the handler, the start-up import check's too, ran as nobody.
        # The check and the child: the check runs beside the loop, and may come second.
        wait_until(lambda: len(list(out.glob("import-*.json"))) >= 2, what="two imports")
        imports = [json.loads(p.read_text()) for p in out.glob("import-*.json")]
        assert all(i == {"uid": NOBODY.pw_uid, "euid": NOBODY.pw_uid} for i in imports)

        # The scrape works and counts the handler's metric once, whatever it planted.
        def counted() -> str | None:
            text = scrape(port)
            return text if "child_user_jobs_total 1.0" in text else None

        body = wait_until(counted, what="the handler's counter in /metrics")
        assert 'tasks_processed_total{outcome="completed",type="snoop"} 1.0' in body

        # A drain as usual (the parent, root, stops children that are nobody's).
        supervisor.send(signal.SIGTERM)
        assert supervisor.wait_exit(15) == 0

    noise = [line for line in supervisor.stderr().splitlines() if "overage" in line]
    assert noise == []  # no coverage warning from a child that could not save its data
    assert "cannot run as the --child-user" not in supervisor.stderr()  # no child failed to drop
    # The database file is 0644 (umask 022): the start-up says nobody can read it (and the WAL).
    warnings = supervisor.events(message=READABLE_DATABASE)
    assert str(db) in {w["path"] for w in warnings}
    assert {w["access"] for w in warnings} == {"read"}


def test_the_lifeline_still_works_after_the_drop(
    shared: Path, coverage_env: dict[str, str]
) -> None:
    """A change of uid clears a parent-death signal; the lifeline is a pipe, which it does not."""
    (shared / "work").mkdir(mode=0o755)
    with Launcher(shared / "work", f"sqlite:///{shared / 'work' / 'tasks.db'}") as launch:
        launch.handler("noop", "def handle(task, progress):\n    pass\n")
        supervisor = launch.start_ready("--child-user", "nobody", env=coverage_env)
        (child_pid,) = supervisor.child_pids()
        status = Path(f"/proc/{child_pid}/status").read_text().splitlines()
        assert f"Uid:\t{NOBODY.pw_uid}\t{NOBODY.pw_uid}\t{NOBODY.pw_uid}\t{NOBODY.pw_uid}" in status
        fds = Path(f"/proc/{child_pid}/fd")
        dump = [os.readlink(fd) for fd in fds.iterdir() if os.readlink(fd).endswith(".dump")]
        runtime = {Path(path).parent for path in dump}  # the killed parent cannot remove it
        supervisor.send(signal.SIGKILL)
        supervisor.wait_exit(10)
        wait_until(lambda: gone(child_pid), timeout=5, what="the child to die with its parent")
    for folder in runtime:
        shutil.rmtree(folder, ignore_errors=True)


REPORTER = """
import json, os

def handle(task, progress):
    raise RuntimeError(json.dumps({"resuid": os.getresuid(), "groups": os.getgroups()}))
"""


def test_a_spawned_child_drops_too(shared: Path, coverage_env: dict[str, str]) -> None:
    """The fallback when the fork server fails: a new interpreter, the same drop."""
    user = ChildUser.resolve("nobody")
    handler = shared / "reporter.py"
    handler.write_text(textwrap.dedent(REPORTER))
    handler.chmod(0o644)
    runtime = shared / "run"
    runtime.mkdir(mode=0o711)
    env = child_environment(clean_env(**coverage_env), user.environment())
    lifeline_r, lifeline_w = os.pipe()
    child = Child.spawn(slot=0, runtime_dir=runtime, lifeline_fd=lifeline_r, env=env, user=user)
    try:
        assert child.send(
            TaskMessage(
                id=1,
                type="reporter",
                path=str(handler),
                options=None,
                attempt=1,
                max_attempts=1,
                remaining_s=30,
            )
        )
        messages: list[Any] = []
        deadline = time.monotonic() + 15
        while not any(isinstance(m, ErrorMessage) for m in messages):
            assert time.monotonic() < deadline, messages
            select.select([child.sock], [], [], 0.5)
            messages.extend(child.receive()[0])
        (error,) = [m for m in messages if isinstance(m, ErrorMessage)]
        report = json.loads(error.message.removeprefix("RuntimeError: "))
        assert report["resuid"] == [user.uid] * 3
        assert sorted(report["groups"]) == sorted(user.groups)
        assert child.send(StopMessage())
        assert child.process is not None
        assert child.process.wait(10) == 0
    finally:
        child.kill_tree()
        assert child.process is not None
        child.process.wait(10)
        child.close()
        os.close(lifeline_r)
        os.close(lifeline_w)


# Touches as many MiB as it is told (imports only what the child has imported already).
ALLOCATES = """
import json

def handle(task, progress):
    held = bytearray(json.loads(task.options)["mib"] * 1024 * 1024)
    held[::4096] = b"\\x01" * len(range(0, len(held), 4096))
"""


def test_peak_rss_stays_per_attempt_after_the_drop(
    shared: Path, coverage_env: dict[str, str]
) -> None:
    """The dropped child cannot open its own ``clear_refs`` any more (it is not dumpable): the
    descriptor it opened before the drop still resets its peak at each attempt's start."""
    (shared / "work").mkdir(mode=0o755)
    with Launcher(shared / "work", f"sqlite:///{shared / 'work' / 'tasks.db'}") as launch:
        launch.handlers.chmod(0o755)
        launch.handler("alloc", ALLOCATES).chmod(0o644)
        supervisor = launch.start_ready("--child-user", "nobody", env=coverage_env)
        (child,) = supervisor.child_pids()
        rows = [
            launch.wait_terminal(launch.enqueue("alloc", json.dumps({"mib": mib})))
            for mib in (0, 200, 0)
        ]
        assert supervisor.child_pids() == {child}
    assert all(r.status is Status.COMPLETED for r in rows), [r.last_error for r in rows]
    before, big, after = (r.peak_rss_bytes for r in rows)
    assert before is not None and big is not None and after is not None
    mib = 1024 * 1024
    assert abs((big - before) - 200 * mib) <= 20 * mib, (before / mib, big / mib)
    assert after - before < 20 * mib, (before / mib, after / mib)
