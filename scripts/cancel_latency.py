"""Measure how fast a running task's cancel and its stack on demand reach the real supervisor.

A real ``python -m supervisor`` (one worker, default ``--poll-interval``, a
60 s lease: the next heartbeat is up to 20 s away) runs a handler that sleeps
in ``wait_for_the_disk``. For each of ``--repeat`` tasks this script

* asks for its stack as ``supervisor stack ID`` does (``Store.request_stack``),
  and times the commit of the request until the stack is in the row (read
  every 5 ms); once, it also times the ``stack`` command itself, end to end;
* cancels it (``Store.cancel``), and times the commit of the cancel until the
  child process is dead (a pidfd, which becomes readable the moment the
  process exits) and until the stack is in the cancelled row.

Each request and cancel comes after a random pause, out of step with the
supervisor's poll. Every stack is checked to name ``wait_for_the_disk``. One line per task, then
the median and the maximum per backend.

Examples::

    python scripts/cancel_latency.py                      # both backends, 10 tasks each
    python scripts/cancel_latency.py --backend mysql --repeat 30
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import BACKENDS, DEFAULT_MYSQL_DSN, ROOT, Scratch, log_tail, scratch

from supervisor.dsn import MysqlDsn, parse_dsn
from supervisor.store import NewTask, Store, open_store

HANDLER = '''"""Sleeps in a function whose name the stacks must show."""

import os
import time


def wait_for_the_disk():
    time.sleep(3600)


def handle(task, progress):
    with open(task.options, "w") as out:
        out.write(f"{os.getpid()}\\n")
    wait_for_the_disk()
'''
FUNCTION = "wait_for_the_disk"
LEASE_S = 60.0
READ_EVERY_S = 0.005
GIVE_UP_S = 30.0
# A random pause before each request and cancel, so they do not fall into step with the
# supervisor's poll (which would show one phase of it, not the spread).
JITTER_S = 0.3


def wait_for(check: Callable[[], object], what: str) -> float:
    """Poll ``check`` until it is truthy; the monotonic time it first was."""
    until = time.monotonic() + GIVE_UP_S
    while not check():
        if time.monotonic() > until:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(READ_EVERY_S)
    return time.monotonic()


@contextlib.contextmanager
def supervisor(db: Scratch, handlers: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        sys.executable, "-m", "supervisor",
        "--dsn", db.url,
        "--workers", "1",
        "--handlers", str(handlers),
        "--lease", str(LEASE_S),
        "--metrics-port", "0",
        "--log-format", "json",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=db.env(), stdout=log, stderr=log, cwd=ROOT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


def wait_pid(path: Path) -> int:
    """The pid the handler wrote once it started."""
    wait_for(lambda: read_pid(path), "the task to start")
    pid = read_pid(path)
    assert pid is not None
    return pid


def stack_round_trip(store: Store, task_id: int) -> float:
    time.sleep(random.uniform(0, JITTER_S))
    request = store.request_stack(task_id)
    committed = time.monotonic()
    assert request.requested_at is not None, f"task {task_id} is not running: {request}"
    requested_at = request.requested_at

    def answered() -> bool:
        row = store.get(task_id)
        return row is not None and row.stack_at is not None and row.stack_at >= requested_at

    done = wait_for(answered, "the stack on demand")
    row = store.get(task_id)
    assert row is not None and row.stack is not None and FUNCTION in row.stack, row
    return done - committed


def stack_command(db: Scratch, task_id: int) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "stack", str(task_id), "--dsn", db.url],
        env=db.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 0 and FUNCTION in done.stdout, done.stderr
    return took


def cancel(store: Store, task_id: int, pid: int) -> tuple[float, float]:
    """Cancel; seconds from the cancel's commit until the child is dead, and until the stack."""
    pidfd = os.pidfd_open(pid)
    time.sleep(random.uniform(0, JITTER_S))
    try:
        transition = store.cancel(task_id)
        committed = time.monotonic()
        assert transition.applied, transition
        readable, _, _ = select.select([pidfd], [], [], GIVE_UP_S)
        dead = time.monotonic()
        assert readable, f"the child {pid} still runs {GIVE_UP_S} s after the cancel"
    finally:
        os.close(pidfd)

    def stacked() -> bool:
        row = store.get(task_id)
        return row is not None and row.stack is not None

    stack_in_row = wait_for(stacked, "the cancelled task's stack")
    row = store.get(task_id)
    assert row is not None and row.stack is not None and FUNCTION in row.stack, row
    return dead - committed, stack_in_row - committed


def run_backend(backend: str, mysql_dsn: MysqlDsn, repeat: int) -> None:
    with scratch(backend, mysql_dsn) as db, tempfile.TemporaryDirectory() as folder:
        handlers = Path(folder) / "handlers"
        handlers.mkdir()
        (handlers / "sleepy.py").write_text(HANDLER)
        store = open_store(db.dsn)
        stacks, deaths, cancel_stacks = [], [], []
        with supervisor(db, handlers, Path(folder) / "supervisor.log"):
            try:
                for run in range(repeat):
                    pid_file = Path(folder) / f"task-{run}.pid"
                    task_id = store.enqueue(NewTask(type="sleepy", options=str(pid_file)))
                    pid = wait_pid(pid_file)
                    stacks.append(stack_round_trip(store, task_id))
                    command = stack_command(db, task_id) if run == 0 else None
                    dead, stacked = cancel(store, task_id, pid)
                    deaths.append(dead)
                    cancel_stacks.append(stacked)
                    extra = (
                        f"  stack command (end to end) {command * 1000:6.0f} ms" if command else ""
                    )
                    print(
                        f"{backend:6} task {run + 1:3}: stack on demand {stacks[-1] * 1000:6.0f} ms"
                        f"  cancel -> child dead {dead * 1000:6.0f} ms"
                        f"  -> stack in row {stacked * 1000:6.0f} ms{extra}",
                        flush=True,
                    )
            except BaseException:
                print(log_tail(Path(folder) / "supervisor.log"), file=sys.stderr)
                raise
            finally:
                store.close()
        for label, values in (
            ("stack on demand", stacks),
            ("cancel -> child dead", deaths),
            ("cancel -> stack in row", cancel_stacks),
        ):
            print(
                f"{backend:6} {label:24} median {statistics.median(values) * 1000:6.0f} ms"
                f"  max {max(values) * 1000:6.0f} ms  (n={len(values)})"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    parser.add_argument("--repeat", type=int, default=10, help="tasks per backend (default 10)")
    parser.add_argument(
        "--mysql-dsn",
        default=os.environ.get("SUPERVISOR_BENCH_MYSQL_DSN", DEFAULT_MYSQL_DSN),
        help="server for the scratch databases (default %(default)s)",
    )
    args = parser.parse_args()
    mysql_dsn = parse_dsn(args.mysql_dsn)
    assert isinstance(mysql_dsn, MysqlDsn)
    print(f"poll interval: the default; lease {LEASE_S:g} s (a heartbeat every {LEASE_S / 3:g} s)")
    for backend in BACKENDS if args.backend == "both" else (args.backend,):
        run_backend(backend, mysql_dsn, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
