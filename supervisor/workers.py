"""The parent's handle on one child process: spawn, talk, watch, kill, reap.

Each child gets one end of a socket pair for messages, a pidfd the parent
waits on to learn of its exit the moment it happens, a dump file for
faulthandler's stack traces, and a pipe for its stdout and stderr, whose read
end the parent keeps (:mod:`supervisor.output`): what a handler prints must
never reach the supervisor's own log stream as it is.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import psutil

from supervisor.hardening import SECRET_ENV
from supervisor.lifecycle import Failure
from supervisor.output import OutputReader
from supervisor.privileges import CREDENTIALS_ENV, ChildUser
from supervisor.protocol import RECV_BYTES, LineBuffer, Message, StopMessage, decode, encode
from supervisor.reaping import ExitStatus, reap
from supervisor.records import Claim
from supervisor.usage import Usage

if TYPE_CHECKING:
    from supervisor.forkserver import Template

STACK_SIGNAL = signal.SIGUSR1
REST_MAX_BYTES = 64 * 1024 * 1024  # what is read of an exited child's socket: its longest line
DUMP_TAIL_BYTES = 64 * 1024  # what is read of a dump file: its last 64 KiB (a handler can fill it)
# Never handed to a child: it must not be able to reach the database.


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (the kernel's ``SigCgt`` mask).

    A handler may reset ``SIGUSR1`` to its default action, which terminates
    the process: sending it then would kill the task an operator only wanted
    to look at. When the mask cannot be read (the process is gone, no procfs),
    the answer is yes: the signal then reaches nobody or does what it always did.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


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
    deadline: float  # the kill: the task's deadline, or the per-attempt TIMEOUT if sooner
    stack_at: float
    limit: Failure = Failure.TIMEOUT  # which of the two ``deadline`` is (MEMORY: over MAX_RSS)
    stack_requested: bool = False
    pct: int | None = None  # the last progress the child reported
    dump_seen: int = 0  # the dump file's size after the last stack on demand was read
    usage: Usage | None = None  # measured by the parent when the attempt ends by a kill or death


def child_environment(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The children's environment: no secrets, and credentials to drop to only if in ``extra``."""
    env = {k: v for k, v in environ.items() if k not in SECRET_ENV and k != CREDENTIALS_ENV}
    env.update(extra)
    return env


class Child:
    """One child process as the parent sees it.

    Built from a ``Popen`` (:meth:`spawn`) or from the bare pid of a child the fork
    server made (:meth:`fork`): that one is our child too (re-parented to us, a
    subreaper), so pidfd, ``wait4`` and the process-group kill work the same. A
    unit test builds one around its own socket pair and a pipe standing in for
    the pidfd.
    """

    def __init__(
        self,
        *,
        slot: int,
        pid: int,
        sock: socket.socket,
        pidfd: int,
        dump_path: Path,
        process: subprocess.Popen[bytes] | None = None,
        output_fd: int | None = None,
    ) -> None:
        """``output_fd`` is the read end of the child's output pipe (None in unit tests)."""
        self.slot = slot
        self.process = process
        self.pid = pid
        self.sock = sock
        self.pidfd = pidfd
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
        # The child's CPU total at its last ready/done/error: where its next attempt starts from.
        self.cpu_total_s: float | None = None
        self.unsent = bytearray()  # written when the socket can take it (see send)
        self._buffer = LineBuffer()
        self.output = OutputReader(output_fd) if output_fd is not None else None

    # ------------------------------------------------------------ transitions

    def ready(self) -> bool:
        """The child said ``ready``; True if it was starting and is now idle."""
        self.saw_ready = True
        if self.state is not ChildState.STARTING:
            return False
        self.state = ChildState.IDLE
        return True

    def start(self, running: Running) -> None:
        """Hand the child an attempt (the task message is sent separately)."""
        assert self.state is ChildState.IDLE, self.state
        self.state = ChildState.BUSY
        self.running = running

    def release(self) -> Running | None:
        """The child reported its attempt's outcome: it is idle again, one task older."""
        running, self.running = self.running, None
        if self.state is ChildState.BUSY:
            self.state = ChildState.IDLE
            self.tasks_done += 1
        return running

    def retire(self, reason: str) -> None:
        """Stop once idle: at once if idle or starting, after its attempt if busy."""
        self.exit_reason = reason
        if self.state is ChildState.BUSY:
            self.retire_when_idle = True
        elif self.state is not ChildState.STOPPING:
            self.state = ChildState.STOPPING
            if not self.send(StopMessage()):
                self.kill_tree()

    def kill(
        self, reason: str, descendants: Sequence[psutil.Process] | None = None
    ) -> Running | None:
        """Kill the child's whole tree; the attempt it held, if any, is the caller's to settle."""
        self.exit_reason = reason
        self.kill_tree(descendants)
        running, self.running = self.running, None
        return running

    def died(self) -> Running | None:
        """The child exited on its own (already reaped): take the attempt it held, if any."""
        running, self.running = self.running, None
        return running

    # ------------------------------------------------------------ the process

    @classmethod
    def spawn(
        cls,
        *,
        slot: int,
        runtime_dir: Path,
        lifeline_fd: int,
        env: Mapping[str, str],
        metrics_id: str | None = None,
        user: ChildUser | None = None,
    ) -> Child:
        """Start the child as a new interpreter (the fallback when the fork server fails).

        ``user``: the ``--child-user`` the child drops to (told by ``env``); it must
        be able to write its dump file.
        """
        with _Ends.open(runtime_dir, slot, user) as ends:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "supervisor.child",
                    "--socket",
                    str(ends.child_sock.fileno()),
                    "--lifeline",
                    str(lifeline_fd),
                    "--dump",
                    str(ends.dump_path),
                    *(["--metrics-id", metrics_id] if metrics_id else []),
                ],
                pass_fds=(ends.child_sock.fileno(), lifeline_fd),
                process_group=0,
                stdin=subprocess.DEVNULL,
                stdout=ends.output_w,
                stderr=ends.output_w,
                env=dict(env),
            )
        return ends.child(cls, slot=slot, pid=process.pid, process=process)

    @classmethod
    def fork(
        cls,
        template: Template,
        *,
        slot: int,
        runtime_dir: Path,
        metrics_id: str | None = None,
        user: ChildUser | None = None,
    ) -> Child:
        """Like :meth:`spawn`, but forked by the fork server: costs a fork, not an interpreter.

        Raises OSError when the template fails; the caller then falls back to :meth:`spawn`.
        """
        with _Ends.open(runtime_dir, slot, user) as ends:
            pid = template.spawn(
                slot=slot,
                sock=ends.child_sock,
                dump_path=ends.dump_path,
                metrics_id=metrics_id,
                output_fd=ends.output_w,
            )
        return ends.child(cls, slot=slot, pid=pid)

    def send(self, message: Message) -> bool:
        """Queue a message for the child; False if the child is gone (its exit comes by pidfd).

        Never blocks: what the socket does not take now (a task larger than its
        buffer, a child that stopped reading) waits in :attr:`unsent` and goes
        out by :meth:`flush` when the selector says the socket is writable. A
        child that never reads its task is killed at the task's deadline.
        """
        data = encode(message)
        if self.unsent:
            self.unsent += data
            return True
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent < len(data):
            self.unsent = bytearray(data[sent:])
        return True

    def flush(self) -> bool:
        """Send more of what :meth:`send` could not; False if the child is gone."""
        try:
            sent = self.sock.send(self.unsent)
        except BlockingIOError:
            return True
        except OSError:
            self.unsent.clear()
            return False
        del self.unsent[:sent]
        return True

    def receive(self) -> tuple[list[Message], bool]:
        """Messages available now, and whether the child closed its end.

        Raises :class:`~supervisor.protocol.ProtocolError` on a malformed line.
        """
        try:
            data = self.sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return [], False
        except OSError:
            return [], True
        if not data:
            return [], True
        return [decode(line) for line in self._buffer.feed(data)], False

    def receive_rest(self) -> list[Message]:
        """Every message left in the socket, read until it is empty or closed (the child exited).

        Reads at most :data:`REST_MAX_BYTES`, so a process that inherited the
        child's end and keeps writing cannot hold the loop here.
        """
        messages: list[Message] = []
        for _ in range(REST_MAX_BYTES // RECV_BYTES):
            try:
                data = self.sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
            except OSError:  # BlockingIOError: nothing more for now
                break
            if not data:
                break
            messages.extend(decode(line) for line in self._buffer.feed(data))
        return messages

    def request_stack(self) -> bool:
        """Ask faulthandler in the child to dump every thread's stack into the dump file.

        False, and nothing sent, when the child does not catch the signal (see
        :func:`catches`): its default action would kill the child, which a
        deadline would then record as a panic and an operator's ``stack`` as a
        dead task.
        """
        if not catches(self.pid, STACK_SIGNAL):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, STACK_SIGNAL)
        return True

    def dump_size(self) -> int:
        """How much the dump file holds now: a stack asked for next is written after it."""
        try:
            return self.dump_path.stat().st_size
        except OSError:
            return 0

    def read_dump(self, since: int = 0) -> str:
        """The last :data:`DUMP_TAIL_BYTES` of the dump file (after offset ``since``), decoded
        leniently.

        The file is the child's, so a handler can write anything there (gigabytes
        before it dies): only a bounded tail is read. faulthandler writes the
        innermost frames first, so a cut-off dump loses only its start.
        ``since`` (a :meth:`dump_size` taken before a stack was asked for) leaves
        out what earlier stacks of the same attempt wrote.
        """
        try:
            with self.dump_path.open("rb") as dump:
                size = os.fstat(dump.fileno()).st_size
                dump.seek(max(0, since, size - DUMP_TAIL_BYTES))
                data = dump.read(DUMP_TAIL_BYTES)
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace").strip()

    def descendants(self) -> list[psutil.Process]:
        """The processes below the child, from one scan of the process table."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except (psutil.Error, OSError):  # out of fds, say: the group kill still reaches most
            return []

    def kill_tree(self, descendants: Sequence[psutil.Process] | None = None) -> None:
        """SIGKILL the child, its process group, and every descendant found before the kill.

        The descendants are listed first (or given: the caller listed them just
        before): once the child is dead its orphans are re-parented and can no
        longer be found through it. Descendants that moved to a new session or
        group are killed by pid.
        """
        self.killed_by_parent = True
        self.state = ChildState.STOPPING
        if descendants is None:
            descendants = self.descendants()
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
        status, maxrss_kib, cpu_s = waited
        if self.process is not None:  # so Popen does not think it still runs
            self.process.returncode = os.waitstatus_to_exitcode(status)
        return ExitStatus.from_wait(
            status, maxrss_kib, killed_by_parent=self.killed_by_parent, cpu_s=cpu_s
        )

    def close(self) -> None:
        self.sock.close()
        os.close(self.pidfd)
        if self.output is not None:
            self.output.close()
        with contextlib.suppress(OSError):
            self.dump_path.unlink()


@attrs.define
class _Ends:
    """What a new child is started with: the two ends of its socket and of its output pipe,
    and an empty dump file (owned by the ``--child-user`` if there is one: the child opens it
    after its drop; the parent reads only a bounded tail of it).

    The child's ends are closed in the parent once the child holds its copies;
    the parent's ends too if the child could not be started.
    """

    parent_sock: socket.socket
    child_sock: socket.socket
    output_r: int
    output_w: int
    dump_path: Path

    @classmethod
    @contextlib.contextmanager
    def open(cls, runtime_dir: Path, slot: int, user: ChildUser | None = None) -> Iterator[_Ends]:
        dump_path = runtime_dir / f"child-{slot}.dump"
        dump_path.write_bytes(b"")
        if user is not None:
            os.chown(dump_path, user.uid, user.gid)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        output_r, output_w = os.pipe()
        ends = cls(parent_sock, child_sock, output_r, output_w, dump_path)
        try:
            yield ends
        except BaseException:
            parent_sock.close()
            os.close(output_r)
            raise
        finally:
            child_sock.close()
            os.close(output_w)

    def child(
        self,
        cls: type[Child],
        *,
        slot: int,
        pid: int,
        process: subprocess.Popen[bytes] | None = None,
    ) -> Child:
        self.parent_sock.setblocking(False)  # the loop never waits on a child: see Child.send
        return cls(
            slot=slot,
            pid=pid,
            pidfd=os.pidfd_open(pid),
            sock=self.parent_sock,
            dump_path=self.dump_path,
            process=process,
            output_fd=self.output_r,
        )
