"""A small harness for end-to-end tests of the real ``python -m supervisor``.

A :class:`Launcher` owns one scratch working directory (with its own
``handlers/`` folder), one database and the supervisors started there. Each
supervisor is a real subprocess running this checkout, with JSON logs on a
stderr file that the tests parse. The store is read with the real backend,
exactly as an operator's ``show`` would, and processes are inspected with
psutil. No mocks: signals are real signals.

Teardown never leaves anything behind: a supervisor still running is stopped
(QUIT, then SIGKILL); then every descendant seen along the way, every process
a handler reported, and any process still working in the scratch directory is
killed (as psutil handles, so a pid reused meanwhile is never hit).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

from supervisor.dsn import parse_dsn
from supervisor.lifecycle import Status
from supervisor.producer import new_task
from supervisor.store import Store, TaskRow, open_store

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WAIT_S = 15.0
POLL_S = 0.05
CHILD_MODULE = "supervisor.child"

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None], timeout: float = DEFAULT_WAIT_S, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; or fail."""
    deadline = time.monotonic() + timeout
    last = predicate()
    while last is None or not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(POLL_S)
        last = predicate()
    return last


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def is_worker_child(proc: psutil.Process) -> bool:
    """A pre-started ``supervisor.child`` worker (not the start-up import check), still alive."""
    try:
        cmdline = proc.cmdline()
        alive = proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
    checking = any(arg.startswith("--check") for arg in cmdline)  # --check={...}
    return alive and CHILD_MODULE in cmdline and not checking


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without SUPERVISOR_* settings, importing this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class SupervisorProcess:
    """One running ``python -m supervisor``: signal it, read its logs, find its children."""

    def __init__(self, process: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.stderr_path = stderr_path
        self.seen: list[psutil.Process] = []

    # ------------------------------------------------------------ logs

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (lines a handler printed are skipped)."""
        records = []
        for line in self.stderr().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "message" in record and "level" in record:
                    records.append(record)
        return records

    def events(self, **fields: Any) -> list[dict[str, Any]]:
        """Log records whose fields include all of ``fields``."""
        return [r for r in self.logs() if all(r.get(k) == v for k, v in fields.items())]

    def wait_log(self, timeout: float = DEFAULT_WAIT_S, **fields: Any) -> dict[str, Any]:
        """The first log line with ``fields``, waiting for it while the supervisor runs."""

        def find() -> list[dict[str, Any]] | None:
            exited = not self.running  # read before the logs: an exited process writes no more
            found = self.events(**fields)
            if not found and exited:
                raise AssertionError(f"the supervisor exited ({self.process.returncode})")
            return found

        try:
            found = wait_until(find, timeout, f"a log line with {fields}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr tail:\n{self.stderr()[-3000:]}") from None
        return found[0]

    # ------------------------------------------------------------ processes

    def children(self) -> list[psutil.Process]:
        """The parent's live worker children (``supervisor.child`` processes)."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        workers = [p for p in kids if is_worker_child(p)]
        self.seen.extend(workers)
        return workers

    def child_pids(self) -> set[int]:
        return {p.pid for p in self.children()}

    def wait_children(self, count: int, timeout: float = DEFAULT_WAIT_S) -> set[int]:
        """Wait until exactly ``count`` worker children are alive; their pids."""
        try:
            wait_until(lambda: len(self.children()) == count, timeout, f"{count} worker children")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr tail:\n{self.stderr()[-3000:]}") from None
        return self.child_pids()

    def send(self, signum: signal.Signals) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        """The exit status, failing the test if the process is still running after ``timeout``."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"supervisor {self.pid} still running after {timeout} s; stderr tail:\n"
                + self.stderr()[-3000:]
            ) from None

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Teardown: drain at once, then insist; kill anything of its tree still alive."""
        with contextlib.suppress(psutil.Error):
            self.seen.extend(psutil.Process(self.pid).children(recursive=True))
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.send(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for proc in self.seen:
            with contextlib.suppress(psutil.Error):
                proc.kill()  # psutil refuses if the pid now names another process


class Launcher:
    """A scratch directory with a ``handlers/`` folder, a database, and supervisors run there."""

    def __init__(self, workdir: Path, dsn: str) -> None:
        self.workdir = workdir
        self.handlers = workdir / "handlers"
        self.handlers.mkdir(parents=True, exist_ok=True)
        self.dsn = dsn
        self.store: Store = open_store(parse_dsn(dsn))
        self.store.migrate()
        self.started: list[SupervisorProcess] = []
        self.handler_processes: list[psutil.Process] = []

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        for supervisor in self.started:
            supervisor.stop()
        # Whatever a broken kill may have left behind: pids handlers reported, and any
        # process still working in this scratch directory.
        strays = list(self.handler_processes)
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ValueError):
                if Path(proc.cwd()).is_relative_to(self.workdir) and proc.pid != os.getpid():
                    strays.append(proc)
        for proc in strays:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.store.close()

    # ------------------------------------------------------------ handlers and tasks

    def handler(self, task_type: str, source: str) -> Path:
        """Write ``handlers/<task_type>.py`` (``source`` is dedented)."""
        path = self.handlers / f"{task_type}.py"
        path.write_text(textwrap.dedent(source).lstrip())
        return path

    def path(self, name: str) -> Path:
        """A scratch file path for handlers and tests to talk through."""
        return self.workdir / name

    def paths_json(self, **names: str) -> str:
        """Options naming scratch files: ``paths_json(pid="a.pid")`` is ``{"pid": "/…/a.pid"}``."""
        return json.dumps({key: str(self.path(name)) for key, name in names.items()})

    def read_pid(self, name: str, timeout: float = DEFAULT_WAIT_S) -> int:
        """A pid that a handler wrote to the scratch file ``name``, killed at teardown if alive."""
        path = self.path(name)

        def read() -> int | None:
            try:
                text = path.read_text()
            except FileNotFoundError:
                return None
            return int(text) if text.endswith("\n") else None

        pid = wait_until(read, timeout, f"a pid in {path}")
        with contextlib.suppress(psutil.Error):
            self.handler_processes.append(psutil.Process(pid))
        return pid

    def enqueue(
        self,
        task_type: str,
        options: str | None = None,
        *,
        budget: float = 3600,
        max_attempts: int = 3,
        delay: float = 0,
    ) -> int:
        return self.store.enqueue(
            new_task(task_type, options, budget=budget, max_attempts=max_attempts, delay=delay)
        )

    def enqueue_cli(self, task_type: str, options: str, *flags: str) -> int:
        """Enqueue with the producer's command line, ``python -m supervisor enqueue``."""
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "enqueue", task_type, options, *flags],
            cwd=self.workdir,
            env=clean_env(SUPERVISOR_DSN=self.dsn),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    def get(self, task_id: int) -> TaskRow:
        row = self.store.get(task_id)
        assert row is not None, f"task {task_id} does not exist"
        return row

    def wait_row(
        self,
        task_id: int,
        predicate: Callable[[TaskRow], bool],
        timeout: float = DEFAULT_WAIT_S,
        what: str = "",
    ) -> TaskRow:
        def check() -> TaskRow | None:
            exited = bool(self.started) and not self.started[-1].running
            row = self.get(task_id)
            if predicate(row):
                return row
            if exited:
                raise AssertionError("the supervisor exited")
            return None

        try:
            return wait_until(check, timeout, what or f"task {task_id} to match")
        except AssertionError as exc:
            row = self.get(task_id)
            tail = "".join(s.stderr()[-3000:] for s in self.started[-1:])
            raise AssertionError(
                f"{exc}\nrow: status={row.status} attempts={row.attempts} failure={row.failure}"
                f" progress={row.progress_pct} last_error={row.last_error!r}\nstderr tail:\n{tail}"
            ) from None

    def wait_status(self, task_id: int, status: Status, timeout: float = DEFAULT_WAIT_S) -> TaskRow:
        return self.wait_row(
            task_id, lambda row: row.status is status, timeout, f"task {task_id} {status}"
        )

    def wait_terminal(self, task_id: int, timeout: float = DEFAULT_WAIT_S) -> TaskRow:
        return self.wait_row(
            task_id, lambda row: row.status.is_terminal, timeout, f"task {task_id} to finish"
        )

    # ------------------------------------------------------------ supervisors

    def start(
        self,
        *args: str,
        workers: int = 1,
        poll_interval: float = 0.05,
        lease: float = 30,
        log_level: str = "DEBUG",
        env: dict[str, str] | None = None,
    ) -> SupervisorProcess:
        """Start ``python -m supervisor`` in the scratch directory; JSON logs go to a file."""
        stderr_path = self.workdir / f"supervisor-{len(self.started)}.stderr"
        command = [
            sys.executable,
            "-m",
            "supervisor",
            "--dsn",
            self.dsn,
            "--workers",
            str(workers),
            "--metrics-port",
            "0",
            "--log-format",
            "json",
            "--log-level",
            log_level,
            "--poll-interval",
            str(poll_interval),
            "--lease",
            str(lease),
            *args,
        ]
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=clean_env(**(env or {})),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        supervisor = SupervisorProcess(process, stderr_path)
        self.started.append(supervisor)
        return supervisor

    def start_ready(self, *args: str, workers: int = 1, **kwargs: Any) -> SupervisorProcess:
        """Start a supervisor and wait until all its workers are up and it has logged start-up."""
        supervisor = self.start(*args, workers=workers, **kwargs)
        supervisor.wait_log(message="supervisor starting")
        supervisor.wait_children(workers)
        return supervisor
