"""The parent's handle on one child process: spawn, talk, watch, kill, reap.

Each child gets one end of a socket pair for messages, a pidfd the parent
waits on to learn of its exit the moment it happens, and a dump file for
faulthandler's stack traces.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import psutil

from supervisor.protocol import LineBuffer, Message, decode, encode
from supervisor.reaping import ExitStatus, reap
from supervisor.store import Claim

if TYPE_CHECKING:
    from supervisor.forkserver import Template

STACK_SIGNAL = signal.SIGUSR1
SEND_TIMEOUT_S = 5.0
# Never handed to a child: it must not be able to reach the database.
SECRET_ENV = ("SUPERVISOR_DSN", "SUPERVISOR_DB_PASSWORD")


class ChildState(enum.Enum):
    STARTING = "starting"  # spawned, no ``ready`` yet
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"  # told to stop (or killed); waiting to be reaped


@attrs.define(kw_only=True)
class Running:
    """The attempt a busy child is working on, with its local monotonic deadlines."""

    claim: Claim
    started: float
    deadline: float
    stack_at: float
    stack_requested: bool = False
    pct: int | None = None
    pct_dirty: bool = False
    pct_written_at: float = 0.0


def child_environment(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    env = {key: value for key, value in environ.items() if key not in SECRET_ENV}
    env.update(extra)
    return env


class Child:
    """One child process as the parent sees it.

    Built from a ``Popen`` (:meth:`spawn`) or from the bare pid of a child the fork
    server made (:meth:`fork`): that one is our child too (re-parented to us, a
    subreaper), so pidfd, ``wait4`` and the process-group kill work the same.
    """

    def __init__(
        self,
        *,
        slot: int,
        sock: socket.socket,
        dump_path: Path,
        process: subprocess.Popen[bytes] | None = None,
        pid: int | None = None,
    ) -> None:
        if process is not None:
            pid = process.pid
        if pid is None:
            raise ValueError("a Child needs a process or a pid")
        self.slot = slot
        self.process = process
        self.pid = pid
        self.sock = sock
        self.pidfd = os.pidfd_open(pid)
        self.dump_path = dump_path
        self.state = ChildState.STARTING
        self.running: Running | None = None
        self.tasks_done = 0
        self.spawned_at = time.monotonic()
        self.killed_by_parent = False
        self.retire_when_idle = False
        # Why this child ends, for supervisor_child_restarts_total{reason}; set by whoever ends it.
        self.exit_reason = "died_idle"
        self.saw_ready = False
        self._buffer = LineBuffer()

    @classmethod
    def spawn(
        cls,
        *,
        slot: int,
        runtime_dir: Path,
        lifeline_fd: int,
        env: Mapping[str, str],
        metrics_id: str | None = None,
    ) -> Child:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        dump_path = runtime_dir / f"child-{slot}.dump"
        dump_path.write_bytes(b"")
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "supervisor.child",
                    "--socket",
                    str(child_end.fileno()),
                    "--lifeline",
                    str(lifeline_fd),
                    "--dump",
                    str(dump_path),
                    *(["--metrics-id", metrics_id] if metrics_id else []),
                ],
                pass_fds=(child_end.fileno(), lifeline_fd),
                process_group=0,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),
                env=dict(env),
            )
        finally:
            child_end.close()
        parent_end.settimeout(SEND_TIMEOUT_S)
        return cls(slot=slot, process=process, sock=parent_end, dump_path=dump_path)

    @classmethod
    def fork(
        cls,
        template: Template,
        *,
        slot: int,
        runtime_dir: Path,
        metrics_id: str | None = None,
    ) -> Child:
        """Like :meth:`spawn`, but forked by the fork server: costs a fork, not an interpreter.

        Raises OSError when the template fails; the caller then falls back to :meth:`spawn`.
        """
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        dump_path = runtime_dir / f"child-{slot}.dump"
        dump_path.write_bytes(b"")
        try:
            pid = template.spawn(
                slot=slot, sock=child_end, dump_path=dump_path, metrics_id=metrics_id
            )
        except OSError:
            parent_end.close()
            raise
        finally:
            child_end.close()
        parent_end.settimeout(SEND_TIMEOUT_S)
        return cls(slot=slot, pid=pid, sock=parent_end, dump_path=dump_path)

    def send(self, message: Message) -> bool:
        """Deliver a message; False if the child is gone (its exit is noticed via the pidfd)."""
        try:
            self.sock.sendall(encode(message))
        except OSError:
            return False
        return True

    def receive(self) -> tuple[list[Message], bool]:
        """Messages available now, and whether the child closed its end.

        Raises :class:`~supervisor.protocol.ProtocolError` on a malformed line.
        """
        try:
            data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return [], False
        except OSError:
            return [], True
        if not data:
            return [], True
        return [decode(line) for line in self._buffer.feed(data)], False

    def request_stack(self) -> None:
        """Ask faulthandler in the child to dump every thread's stack into the dump file."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, STACK_SIGNAL)

    def read_dump(self) -> str:
        try:
            return self.dump_path.read_text("utf-8", errors="replace").strip()
        except OSError:
            return ""

    def kill_tree(self) -> None:
        """SIGKILL the child, its process group, and every descendant found before the kill.

        The descendants are listed first: once the child is dead its orphans
        are re-parented and can no longer be found through it. Descendants that
        moved to a new session or group are killed by pid.
        """
        self.killed_by_parent = True
        self.state = ChildState.STOPPING
        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        for proc in descendants:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def reap(self) -> ExitStatus | None:
        """Collect the exited child, first killing what is left of its process group.

        A child that died (a panic) or simply exited may leave behind processes
        its handler started; they are still in its process group. Until the
        child is reaped its pid, the group's id, cannot be reused, so the group
        kill reaches nothing else.
        """
        try:
            exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            exited = None
        if exited is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        waited = reap(self.pid)
        if waited is None:
            return None
        status, maxrss_kib = waited
        if self.process is not None:
            self.process.returncode = os.waitstatus_to_exitcode(status)
        return ExitStatus.from_wait(status, maxrss_kib, killed_by_parent=self.killed_by_parent)

    def close(self) -> None:
        self.sock.close()
        os.close(self.pidfd)
        with contextlib.suppress(OSError):
            self.dump_path.unlink()


class ImportCheck:
    """A ``supervisor.child --check`` run in the background: which handler files fail to import.

    Importing handlers can take seconds (or hang), so the parent never waits
    for it: it watches :meth:`fileno` in its one ``wait()``, calls :meth:`read`
    when it is readable, and takes the :meth:`report` once the output ends or
    the check's deadline passes. The check runs in its own process group so that
    whatever a handler starts at import time goes down with it.
    """

    def __init__(
        self, handlers: Mapping[str, Path], env: Mapping[str, str], timeout_s: float
    ) -> None:
        args = [f"{task_type}={path}" for task_type, path in sorted(handlers.items())]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.child", "--check", *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        assert self.process.stdout is not None
        self._stdout = self.process.stdout
        os.set_blocking(self._stdout.fileno(), False)
        self.deadline = time.monotonic() + timeout_s
        self._output = bytearray()

    def fileno(self) -> int:
        return self._stdout.fileno()

    def read(self) -> bool:
        """Take what the check has written so far; True once its output has ended."""
        try:
            data = os.read(self.fileno(), 1 << 16)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        self._output += data
        return not data

    def report(self, *, timed_out: bool = False) -> dict[str, str | None]:
        """``{type: import error or None}``; ends the check (and whatever it started) first."""
        self.close()
        try:
            report: dict[str, str | None] = json.loads(self._output.splitlines()[-1])
        except (IndexError, ValueError):
            why = "it ran out of time" if timed_out else f"exit status {self.process.returncode}"
            return {"*": f"the handler import check did not finish cleanly ({why})"}
        return report

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._stdout.close()
