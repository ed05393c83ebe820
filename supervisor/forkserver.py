"""The fork server ("template"): a new child costs a fork, not an interpreter start.

With ``--max-tasks-per-child 1`` every task runs in a fresh process, and a
fresh ``python -m supervisor.child`` costs about 0.2 s of CPU (interpreter
start-up and imports) before it runs a line of handler code. The template
pays that once: the parent starts it with the environment children get (no
DSN, no password), it imports what a child needs and nothing more (never the
store, a database driver or loguru, and it creates no metric), and then forks
children on request.

The parent's side is :class:`Template`; the template's side is :func:`main`
(:mod:`supervisor.template`, ``python -m supervisor.template --control FD --lifeline FD``).

Protocol, over a ``SOCK_SEQPACKET`` socket pair (one datagram = one JSON object)::

    template -> parent   {"ready": pid}                      once, when it can fork
    parent -> template   {"seq", "slot", "dump", "metrics_id"}
                         + the child's end of its socket pair and, if any, the write
                           end of its output pipe (SCM_RIGHTS)
    template -> parent   {"seq", "pid", "intermediate"}  or  {"seq", "error"}

Double fork, done ahead of time: the template forks an intermediate process,
which forks a *spare* child, puts it in a process group of its own, reports
its pid and waits. A request goes to the spare (with the descriptor), and a
byte to the intermediate, which exits: the orphaned child is re-parented to
the nearest subreaper among its ancestors, the supervisor's parent. That one
must have called ``become_subreaper()`` *before* starting the template (the
kernel only looks among ancestors that were subreapers when the descendants
were forked; :meth:`Template.start` checks). The template replies at once and
forks the next spare after replying, so no fork is on the parent's critical
path. :meth:`Template.spawn` waits on the intermediate's pidfd (the kernel
re-parents before it reports the exit) and checks with ``waitid(WNOWAIT)``
that the child is its own: from then on it is exactly like a ``Popen`` child,
for ``pidfd_open``, ``wait4`` (wait status and ``ru_maxrss``) and ``killpg``.
Until it is handed out a spare is the intermediate's child, invisible to the
parent (and to its orphan killer); if the template goes, the intermediate
kills and reaps it.

The child then runs :func:`supervisor.child.run_child`, the same code a
spawned child runs after parsing its arguments (signals, metrics binding,
subreaper, lifeline thread, faulthandler on its own dump file). Before that it
closes the template's control socket, joins its own process group, and
rewrites its command line to ``... -m supervisor.child --forked --slot N`` so
``ps`` tells it from the template. Its standard input (``/dev/null``) is the
template's; its fds 1 and 2 become the output pipe the parent passed with the
request, as a spawned child's are (the parent re-emits what comes through as
log records: see :mod:`supervisor.output`). What a fork could leak is reset by the interpreter's
fork hooks: ``random`` reseeds itself (``os.register_at_fork``), threading
forgets the template's (non-existent) threads, OpenSSL (imported with
prometheus_client) reseeds on its own. What cannot be reset is the string
hash seed (fixed at interpreter start): forked children share the template's.

A forked child ends as the interpreter's shutdown begins (non-daemon threads
joined, ``atexit`` callbacks run - coverage.py saves its data there -,
standard streams flushed) and then skips the module teardown with
``os._exit`` (:func:`exit_forked`): tearing down modules inherited from the
template costs ~10 ms of CPU per child, more than the fork and a no-op task.

The template holds the lifeline's read end like every child and exits when it
reads EOF (the parent is gone), or when the parent closes the control socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from supervisor.template import MAX_DATAGRAM

PR_GET_CHILD_SUBREAPER = 37
START_TIMEOUT_S = 10.0  # interpreter start-up and imports, on a loaded machine, under coverage
SPAWN_TIMEOUT_S = 1.0
CLOSE_TIMEOUT_S = 1.0
MODULE = "supervisor.template"  # the template's program


def is_pid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def is_our_child(pid: int) -> bool:
    """Whether ``pid`` is this process's child (it can be waited for); reaps nothing."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def is_subreaper() -> bool:
    """Whether this process adopts its descendants' orphans (PR_SET_CHILD_SUBREAPER)."""
    libc = ctypes.CDLL(None, use_errno=True)
    flag = ctypes.c_int(0)
    if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
        return False
    return bool(flag.value)


# ---------------------------------------------------------------- the parent's side


class Template:
    """The parent's handle on the fork server.

    Usage: ``start`` once (after ``become_subreaper()``), ``spawn`` per child,
    ``close`` at the end. After any failure of :meth:`spawn` (an ``OSError``)
    the template is unusable and every later call fails at once: the caller
    closes it and starts children with ``subprocess.Popen`` instead.
    """

    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket) -> None:
        self._process = process
        self._control = control
        self._seq = 0
        self._broken: str | None = None

    @classmethod
    def start(
        cls,
        *,
        env: Mapping[str, str],
        lifeline_fd: int,
        on_process: Callable[[int], None] | None = None,
    ) -> Template:
        """Start the template and wait until it can fork; OSError if it cannot start.

        ``env`` is the children's environment (no secrets), ``lifeline_fd`` the
        read end of the parent's lifeline pipe. Blocks for the template's
        start-up (about 0.1 s; at most :data:`START_TIMEOUT_S`). ``on_process(pid)``
        learns the template's pid as soon as it exists, before that wait.
        """
        if not is_subreaper():
            raise OSError(
                "this process is not a subreaper: forked children would be re-parented to init "
                "(call become_subreaper() before starting the template)"
            )
        parent_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    MODULE,
                    "--control",
                    str(template_end.fileno()),
                    "--lifeline",
                    str(lifeline_fd),
                ],
                pass_fds=(template_end.fileno(), lifeline_fd),
                process_group=0,  # a Ctrl-C meant for the parent does not reach it
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),  # what the children inherit
                env=dict(env),
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            template_end.close()
        if on_process is not None:
            on_process(process.pid)
        template = cls(process, parent_end)
        try:
            template._await_ready()
        except OSError:
            template.close()
            raise
        return template

    @property
    def pid(self) -> int:
        """The template's pid: the parent's orphan killer must leave it alone."""
        return self._process.pid

    def spawn(
        self,
        *,
        slot: int,
        sock: socket.socket,
        dump_path: Path,
        metrics_id: str | None,
        output_fd: int | None = None,
    ) -> int:
        """Fork a child that serves ``sock`` (the child's end; the caller closes its copy).

        ``output_fd`` (the write end of the child's output pipe; the caller closes
        its copy) becomes the child's fds 1 and 2; without it the child keeps the
        template's.

        Returns the child's pid; the child is already this process's own child
        (waitable with ``wait4``) and in a process group of its own. Raises
        OSError if the template is gone, answers with an error, or does not
        answer within :data:`SPAWN_TIMEOUT_S`.
        """
        if self._broken is not None:
            raise OSError(f"the fork server is unusable: {self._broken}")
        try:
            return self._request(slot, sock, dump_path, metrics_id, output_fd)
        except OSError as exc:
            self._broken = str(exc) or type(exc).__name__
            raise

    def close(self) -> None:
        """Stop the template (idempotent).

        Closing the control socket makes it exit normally, which is what lets
        coverage.py write its data; it is killed if it has not within a second.
        """
        if self._broken is None:
            self._broken = "closed"
        self._control.close()
        try:
            self._process.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.kill()
            self._process.wait()

    def _await_ready(self) -> None:
        self._control.settimeout(START_TIMEOUT_S)
        reply = self._receive()
        if reply.get("ready") != self._process.pid:
            raise OSError(f"the fork server said {reply!r} instead of ready")

    def _request(
        self,
        slot: int,
        sock: socket.socket,
        dump_path: Path,
        metrics_id: str | None,
        output_fd: int | None,
    ) -> int:
        self._seq += 1
        seq = self._seq
        request = {"seq": seq, "slot": slot, "dump": str(dump_path), "metrics_id": metrics_id}
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        self._control.settimeout(SPAWN_TIMEOUT_S)
        fds = [sock.fileno(), *([] if output_fd is None else [output_fd])]
        socket.send_fds(self._control, [json.dumps(request).encode()], fds)
        self._control.settimeout(max(0.001, deadline - time.monotonic()))
        reply = self._receive()
        if reply.get("seq") != seq:
            raise OSError(f"the fork server answered out of turn: {reply!r}")
        pid, intermediate = reply.get("pid"), reply.get("intermediate")
        if not (is_pid(pid) and is_pid(intermediate)):
            raise OSError(f"the fork server could not fork: {reply.get('error', reply)!r}")
        assert isinstance(pid, int) and isinstance(intermediate, int)
        self._await_adoption(pid, intermediate, deadline)
        return pid

    def _receive(self) -> dict[str, Any]:
        data = self._control.recv(MAX_DATAGRAM)
        if not data:
            raise OSError(f"the fork server exited (status {self._process.poll()})")
        try:
            reply = json.loads(data)
        except ValueError:
            raise OSError("the fork server sent a malformed reply") from None
        if not isinstance(reply, dict):
            raise OSError("the fork server sent a malformed reply")
        return reply

    @staticmethod
    def _await_adoption(pid: int, intermediate: int, deadline: float) -> None:
        """Wait for the child to be ours (re-parented to us), or it could be neither waited for
        nor timed; OSError (and the child killed) if it is not by the deadline.

        The template replies as soon as it has released the intermediate, so the
        reply may come before the intermediate's exit: a pidfd on it becomes
        readable when it has exited, and the kernel re-parents its children
        before it reports that exit. ``waitid(WNOWAIT)`` fails with ECHILD for
        anyone else's process, and reaps nothing.
        """
        if not is_our_child(pid):
            with contextlib.suppress(OSError):  # gone already: then it has exited
                pidfd = os.pidfd_open(intermediate)
                try:
                    select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
                finally:
                    os.close(pidfd)
        if not is_our_child(pid):
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)  # a pidfd: never a recycled pid
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                finally:
                    os.close(pidfd)
            raise OSError(f"forked child {pid} was not re-parented to this process")
