"""The fork server's own program: ``python -m supervisor.template --control FD --lifeline FD``.

It runs in the template process that :class:`supervisor.forkserver.Template`
starts: it imports what a child needs and nothing more, then forks spare
children (double fork, through an intermediate) and hands one out per
request. The protocol and the guarantees are described in
:mod:`supervisor.forkserver`, the parent's side.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import faulthandler
import gc
import itertools
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any, NoReturn

import attrs

MAX_DATAGRAM = 64 * 1024
# What a child waits, after its last task, for threads a handler left running: then it exits.
THREAD_GRACE_S = 1.0


@attrs.frozen(kw_only=True)
class Request:
    """One child to fork, as the template received it."""

    seq: int
    slot: int
    dump: str
    metrics_id: str | None
    socket_fd: int
    output_fd: int | None = None  # the write end of the child's output pipe

    @property
    def fds(self) -> list[int]:
        """The descriptors that travel with the request."""
        return [self.socket_fd, *([] if self.output_fd is None else [self.output_fd])]

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)


def parse_request(data: bytes, fds: list[int], flags: int) -> Request:
    """Validate a request datagram and its passed descriptor; ValueError if it is not one."""
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        raise ValueError("truncated request")
    if len(fds) not in (1, 2):
        raise ValueError(f"a request carries one or two descriptors, not {len(fds)}")
    raw: Any = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("a request is a JSON object")
    seq, slot, dump, metrics_id = (raw.get(k) for k in ("seq", "slot", "dump", "metrics_id"))
    if not (isinstance(seq, int) and isinstance(slot, int) and isinstance(dump, str)):
        raise ValueError("a request needs an integer seq and slot and a dump path")
    if metrics_id is not None and not isinstance(metrics_id, str):
        raise ValueError("metrics_id is a string or null")
    output_fd = fds[1] if len(fds) == 2 else None
    return Request(
        seq=seq, slot=slot, dump=dump, metrics_id=metrics_id, socket_fd=fds[0], output_fd=output_fd
    )


def encode_request(request: Request) -> bytes:
    """The request as the spare receives it (its descriptor travels beside it)."""
    fields = {"seq": request.seq, "slot": request.slot, "dump": request.dump}
    return json.dumps({**fields, "metrics_id": request.metrics_id}).encode()


@attrs.define(kw_only=True)
class Spare:
    """A child forked ahead of its request, held back by its intermediate process.

    Forking on request put two forks, the intermediate's start and its exit on
    the parent's critical path (4-8 ms on a busy 2-core machine, during which
    the parent's loop waits). A spare is forked after the previous reply, so
    handing it out costs one message and the intermediate's exit. Until then
    it is the intermediate's child, not the supervisor's: the parent never
    sees it, its orphan killer included.
    """

    pid: int
    intermediate: int
    sock: socket.socket  # the template's end; the request travels through it
    release_fd: int  # a byte orphans the spare; EOF kills it (the intermediate does both)

    def hand_out(self, request: Request) -> None:
        """Give ``request`` to the spare and tell the intermediate to exit, orphaning the spare.

        Does not wait for that exit (:meth:`reap` does, after the reply): the
        parent waits for it itself. OSError if the spare is gone.
        """
        try:
            socket.send_fds(self.sock, [encode_request(request)], request.fds)
        except OSError:
            self.discard()
            raise
        os.write(self.release_fd, b"x")
        self._close()

    def discard(self) -> None:
        """Kill the spare: its intermediate reads EOF, kills and reaps it, and exits."""
        self._close()
        self.reap()

    def reap(self) -> None:
        os.waitpid(self.intermediate, 0)

    def _close(self) -> None:
        os.close(self.release_fd)
        self.sock.close()


def serve_template(control: socket.socket, lifeline_fd: int) -> Request | None:
    """Hand out children on request until the parent is gone.

    Returns None in the template once the parent closed the control socket or
    the lifeline. In a spare child it returns the request the spare was given:
    the child unwinds back to :func:`main` and becomes a worker there.
    """
    poller = select.poll()  # no descriptor of its own, so nothing to close in a child
    poller.register(control, select.POLLIN)
    poller.register(lifeline_fd, select.POLLIN)
    spare: Spare | None = None
    while True:
        if spare is None:
            try:
                made = fork_spare(control)
            except OSError as exc:
                print(f"fork server: cannot fork a spare child: {exc}", file=sys.stderr)
            else:
                if isinstance(made, socket.socket):
                    return await_request(made)  # in the spare
                spare = made
        events = dict(poller.poll())
        data, fds, flags = b"", list[int](), 0
        if lifeline_fd not in events:  # nobody writes to it: readable means EOF, parent gone
            with contextlib.suppress(OSError):
                data, fds, flags, _ = socket.recv_fds(control, MAX_DATAGRAM, 2)
        if not data:
            for fd in fds:
                os.close(fd)
            if spare is not None:
                spare.discard()
            return None
        try:
            request = parse_request(data, fds, flags)
        except ValueError as exc:
            for fd in fds:
                os.close(fd)
            if not reply(control, {"seq": None, "error": str(exc)}):
                return None
            continue
        answer: dict[str, object] = {"seq": request.seq, "error": "cannot fork"}
        handed_out = None
        if spare is not None:
            try:
                spare.hand_out(request)
            except OSError as exc:
                answer["error"] = str(exc)
            else:
                answer = {"seq": request.seq, "pid": spare.pid, "intermediate": spare.intermediate}
                handed_out = spare
            spare = None
        request.close_fds()
        answered = reply(control, answer)
        if handed_out is not None:
            handed_out.reap()
        if not answered:
            return None


def reply(control: socket.socket, answer: Mapping[str, object]) -> bool:
    """Send ``answer`` to the parent; False when it is gone."""
    try:
        control.send(json.dumps(answer).encode())
    except OSError:
        return False
    return True


def fork_spare(control: socket.socket) -> Spare | socket.socket:
    """Double-fork a spare: its handle in the template; in the spare, its end of the request socket.

    The intermediate forks the spare, puts it in a process group of its own,
    reports its pid, and then waits for the template's word (see :class:`Spare`).
    Raises OSError (in the template) if a fork failed.
    """
    template_end, spare_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    release_r, release_w = os.pipe()
    report_r, report_w = os.pipe()
    try:
        intermediate = os.fork()
    except OSError:
        for fd in (release_r, release_w, report_r, report_w):
            os.close(fd)
        template_end.close()
        spare_end.close()
        raise
    if intermediate == 0:
        for fd in (release_w, report_r):
            os.close(fd)
        template_end.close()
        in_intermediate(report_w, release_r)  # returns only in the spare
        for fd in (release_r, report_w):
            os.close(fd)
        control.close()  # or the parent would not see EOF when the template dies
        set_title(f"{sys.executable} -m supervisor.child --forked")
        return spare_end
    for fd in (release_r, report_w):
        os.close(fd)
    spare_end.close()
    try:
        data = read_all(report_r)
    finally:
        os.close(report_r)
    spare = Spare(pid=0, intermediate=intermediate, sock=template_end, release_fd=release_w)
    if not data:
        spare.discard()
        raise OSError("the intermediate process failed to fork")
    spare.pid = int(data)
    return spare


def in_intermediate(report_w: int, release_r: int) -> None:
    """Fork the spare, report its pid, then orphan it or kill it, as the template says.

    Returns only in the spare. The group is set here as well as in the child,
    so that it exists by the time the parent learns the pid (the shells' idiom).
    """
    try:
        pid = os.fork()
    except OSError:  # pragma: no cover - the intermediate exits, writing no coverage data
        os._exit(1)
    if pid != 0:  # pragma: no cover - the intermediate exits, writing no coverage data
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        keep = sorted({0, 1, 2, report_w, release_r})
        for low, high in itertools.pairwise([*keep, os.sysconf("SC_OPEN_MAX")]):
            os.closerange(low + 1, high)  # the control socket, the lifeline, the spare's socket
        with contextlib.suppress(OSError):
            os.write(report_w, str(pid).encode())
        os.close(report_w)
        try:
            released = os.read(release_r, 1)
        except OSError:
            released = b""
        if not released:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os._exit(0)


def await_request(sock: socket.socket) -> Request | None:
    """In a spare: wait for the request to serve; None if the template went away first."""
    try:
        data, fds, flags, _ = socket.recv_fds(sock, MAX_DATAGRAM, 2)
    except OSError:
        return None
    finally:
        sock.close()
    try:
        return parse_request(data, fds, flags) if data else None
    except ValueError:
        return None


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 64):
        chunks.append(chunk)
    return b"".join(chunks)


def set_title(title: str) -> None:
    """Rewrite what ``ps`` and ``/proc/PID/cmdline`` show for this process, as setproctitle does.

    A forked child would otherwise show the template's command line. The
    argument strings live in this process's own stack area, whose bounds
    ``/proc/self/stat`` gives (fields 48 and 49); the title is written there,
    truncated to fit, followed by NULs, and the area's last byte is made
    non-NUL, which tells the kernel to show the text up to the first NUL.
    Nothing reads those strings after start-up (Python copied them).
    """
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if start <= 0 or size < 2:
        return
    text = title.encode("utf-8", errors="replace")[: size - 2]
    ctypes.memmove(start, text + b"\0" * (size - len(text) - 1) + b".", size)


def become_child(request: Request, lifeline_fd: int) -> int:
    """In the new child: shed the template's state, then run as any child does.

    The template's control socket was closed when the spare was forked. The
    output pipe replaces fds 1 and 2, under ``sys.stdout`` and ``sys.stderr``
    too (they write to those fds), for the child and whatever it execs.
    """
    from supervisor import child

    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if request.output_fd is not None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(request.output_fd, 1)
        os.dup2(request.output_fd, 2)
        os.close(request.output_fd)
    set_title(f"{sys.executable} -m supervisor.child --forked --slot {request.slot}")
    return child.run_child(
        socket_fd=request.socket_fd,
        lifeline_fd=lifeline_fd,
        dump_path=request.dump,
        metrics_id=request.metrics_id,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supervisor.template")
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--lifeline", type=int, required=True)
    args = parser.parse_args(argv)
    # What every child runs, imported once here so that a fork inherits it ready to use.
    from supervisor import child

    child.ignore_stop_signals()  # like a child: only the parent decides when it stops
    faulthandler.enable()  # the template's own crash goes to stderr; a child uses its dump file
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Modules only: bind_process_files is then cheap. No metric is created here.
        import prometheus_client.values  # noqa: F401

        import supervisor.metrics  # noqa: F401
    # Children never collect the template's objects: their pages stay shared with it.
    gc.freeze()
    control = socket.socket(fileno=args.control)
    if not reply(control, {"ready": os.getpid()}):
        return 0
    request = serve_template(control, args.lifeline)
    if request is None:
        return 0
    try:
        status = become_child(request, args.lifeline)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # noqa: BLE001 - reported as the interpreter would, then exit 1
        traceback.print_exc()
        status = 1
    exit_forked(status)


def join_threads(grace_s: float) -> None:
    """Wait for non-daemon threads, as ``Py_FinalizeEx`` would, but at most ``grace_s`` in all.

    A handler that leaves a thread running forever would otherwise keep its
    child alive after the parent said ``stop``; the parent would then have to
    kill it at its stop deadline, late, and a drain would wait for that.
    """
    main_thread = threading.main_thread()
    until = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is not main_thread and not thread.daemon:
            thread.join(max(0.0, until - time.monotonic()))


def exit_forked(status: int) -> NoReturn:
    """End a child as the interpreter's own shutdown begins, then skip the module teardown.

    Like ``Py_FinalizeEx``: wait (a bounded time) for non-daemon threads, run ``atexit`` callbacks
    (coverage.py saves its data there), flush the standard streams. Then
    ``os._exit``, as :mod:`multiprocessing`'s forked processes end: tearing down
    every module the child inherited from the template would write to all of
    their pages (reference counts), and costs about 10 ms of CPU per child,
    more than the fork and the task together. Objects still alive at that point
    are not finalized; Python never promised that they would be.
    """
    join_threads(THREAD_GRACE_S)
    atexit._run_exitfuncs()  # coverage.py saves its data here: what follows is never measured
    flush_and_exit(status)


def flush_and_exit(status: int) -> NoReturn:  # pragma: no cover - runs after coverage saved
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
