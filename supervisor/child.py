"""The child's side: receive a task, run its handler, report, repeat.

A child is started by the parent as ``python -m supervisor.child`` with the
parent's end of a socket pair, a lifeline pipe and a dump file, or forked with
the same three by the fork server (:mod:`supervisor.forkserver`), which then
calls :func:`run_child` just as :func:`main` does. Either way it

* ignores SIGINT and SIGTERM: only the parent decides when it stops;
* lives in its own process group, and becomes a subreaper so that whatever a
  handler starts stays in its tree (and is killed with it);
* dies within moments if the parent dies: a thread blocks on the lifeline
  pipe, whose only writer is the parent, and reads EOF when the parent is gone;
* has faulthandler write to the dump file on a fatal signal and on SIGUSR1,
  which is how the parent learns where a hung or crashed handler was.
* with ``--child-user``, drops to that user before anything of a handler
  runs (:mod:`supervisor.privileges`), and exits rather than run one as root.

It never sees a DSN or a database connection.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib.util
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

from supervisor.errors import PermanentError
from supervisor.policy import CONSTANTS
from supervisor.privileges import enter_child_user
from supervisor.protocol import (
    RECV_BYTES,
    DoneMessage,
    ErrorMessage,
    LineBuffer,
    Message,
    ProgressMessage,
    ReadyMessage,
    StopMessage,
    TaskMessage,
    decode,
    encode,
)
from supervisor.reaping import become_subreaper
from supervisor.task import Task
from supervisor.usage import AttemptMeter, cpu_total_s

STACK_SIGNAL = signal.SIGUSR1
PROGRESS_MIN_INTERVAL_S = 0.1
TRACEBACK_LIMIT = 8000


class Channel:
    """Line-framed JSON messages over the child's end of the socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = LineBuffer()
        self._lines: list[bytes] = []
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        with self._lock:
            self._sock.sendall(encode(message))

    def receive(self) -> Message | None:
        """The next message, or None when the parent closed its end."""
        while not self._lines:
            data = self._sock.recv(RECV_BYTES)
            if not data:
                return None
            self._lines.extend(self._buffer.feed(data))
        return decode(self._lines.pop(0))


class Progress:
    """The ``progress(pct)`` callable: clamps, and coalesces bursts into at most 10 messages/s.

    The last value is always delivered (by :meth:`flush` before the outcome).
    """

    def __init__(self, channel: Channel, task_id: int) -> None:
        self._channel = channel
        self._task_id = task_id
        self._sent: int | None = None
        self._pending: int | None = None
        self._last_send = 0.0

    def __call__(self, pct: float) -> None:
        """Record ``pct``; a value that is not a finite number is ignored, never raised.

        Progress is advisory: a handler's bad value (``10**400``, NaN, a string, an
        object whose ``__float__`` raises) must not fail a task that is doing its work.
        """
        value = progress_value(pct)
        if value is None:
            return
        self._pending = value
        if time.monotonic() - self._last_send >= PROGRESS_MIN_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self._pending is not None and self._pending != self._sent:
            self._channel.send(ProgressMessage(id=self._task_id, pct=self._pending))
            self._sent = self._pending
            self._last_send = time.monotonic()
        self._pending = None


def progress_value(pct: object) -> int | None:
    """``pct`` clamped to 0..100 as an int; None for anything that is not a usable number.

    Integers too large for a float (``10**400``) are clamped by sign, not converted.
    """
    if isinstance(pct, int) and not isinstance(pct, bool):
        return max(0, min(100, pct))
    try:
        number = float(pct)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - a handler's __float__ may raise anything
        return None
    if not isinstance(number, float) or math.isnan(number):
        return None
    return int(max(0.0, min(100.0, number)))


class HandlerCache:
    """Import each handler file once per child, lazily, as its own module."""

    def __init__(self) -> None:
        self._modules: dict[str, ModuleType] = {}

    def module(self, task_type: str, path: str) -> ModuleType:
        module = self._modules.get(path)
        if module is None:
            module = import_handler(task_type, path)
            self._modules[path] = module
        return module

    def handle_function(self, task_type: str, path: str) -> Callable[..., Any]:
        handle = getattr(self.module(task_type, path), "handle", None)
        if not callable(handle):
            raise HandlerImportError(f"handler {path} does not define handle(task, progress)")
        return handle  # type: ignore[no-any-return]


class HandlerImportError(Exception):
    """The handler file could not be loaded: its tasks fail without retry."""


def import_handler(task_type: str, path: str) -> ModuleType:
    """Load a handler file as its own module, ``supervisor_handlers.<type>``.

    The handlers folder is *appended* to ``sys.path``, never put first: a
    handler can still import its sibling helper modules, but a handler file
    named like a standard or installed module (``email.py``, ``csv.py``) does
    not shadow that module for every other handler in this child.

    Whatever the file raises while it is executed, ``SystemExit`` and
    ``KeyboardInterrupt`` included, is an import failure of that handler: its
    tasks fail with the reason, and the child (or the import check) lives on.
    """
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.append(folder)  # after stdlib and site-packages: siblings, never shadows
    spec = importlib.util.spec_from_file_location(f"supervisor_handlers.{task_type}", path)
    if spec is None or spec.loader is None:
        raise HandlerImportError(f"cannot load handler file {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - sys.exit() at import is a broken handler too
        detail = "".join(traceback.format_exception(exc, limit=-5))
        raise HandlerImportError(
            f"handler {path} failed to import: {type(exc).__name__}: {exc}\n{detail}"
        ) from None
    return module


def shadowed_module(task_type: str, path: str) -> str | None:
    """Why the handler file ``path`` is named like a standard or installed module, or None.

    Such a file no longer shadows that module (see :func:`import_handler`), but
    ``import <name>`` from a sibling then gets the other module, not this file:
    worth a warning at the import check. Checked before any handler is imported,
    and the file itself found on ``sys.path`` (the check run from the handlers
    folder) is not a clash.
    """
    name = Path(path).stem
    if "." in name or not name.isidentifier():
        return None  # cannot be imported by that name, so it cannot shadow anything
    if name in sys.stdlib_module_names:
        return f"handler file {path} is named like the standard module {name!r}; rename it"
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # noqa: BLE001 - a broken installed package is not this handler's fault
        return None
    if spec is None or (spec.origin and Path(spec.origin).resolve() == Path(path).resolve()):
        return None
    where = spec.origin or "a namespace package"
    return f"handler file {path} is named like the installed module {name!r} ({where}); rename it"


def run_task(
    channel: Channel, handlers: HandlerCache, message: TaskMessage, meter: AttemptMeter
) -> None:
    """Run one attempt and report it, with what it used (measured around the import too:
    a handler's first import is part of its first attempt's cost)."""
    meter.start()
    progress = Progress(channel, message.id)
    task = Task.starting_now(
        id=message.id,
        type=message.type,
        options=message.options,
        attempt=message.attempt,
        max_attempts=message.max_attempts,
        remaining_s=message.remaining_s,
    )
    try:
        handle = handlers.handle_function(message.type, message.path)
    except HandlerImportError as exc:
        used = meter.finish()
        channel.send(
            ErrorMessage(
                id=message.id,
                message=str(exc),
                traceback="",
                permanent=True,
                cpu_s=used.cpu_s,
                peak_rss_bytes=used.peak_rss_bytes,
                cpu_total_s=used.cpu_total_s,
            )
        )
        return
    try:
        handle(task, progress)
    except BaseException as exc:  # noqa: BLE001 - any exception from a handler is its outcome
        used = meter.finish()
        progress.flush()
        flush_std_streams()
        channel.send(
            ErrorMessage(
                id=message.id,
                message=f"{type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:],
                permanent=isinstance(exc, PermanentError),
                cpu_s=used.cpu_s,
                peak_rss_bytes=used.peak_rss_bytes,
                cpu_total_s=used.cpu_total_s,
            )
        )
        return
    used = meter.finish()
    progress.flush()
    flush_std_streams()
    channel.send(
        DoneMessage(
            id=message.id,
            cpu_s=used.cpu_s,
            peak_rss_bytes=used.peak_rss_bytes,
            cpu_total_s=used.cpu_total_s,
        )
    )


def flush_std_streams() -> None:
    """Push what the handler printed into the output pipe before the outcome is reported.

    The parent reads the pipe before the socket, so output flushed now is logged
    under this attempt's task id rather than under the next one (or none).
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def kill_own_tree() -> None:
    """The parent is gone: take everything this child started down with it."""
    with contextlib.suppress(Exception):
        import psutil

        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)
    os._exit(1)


def watch_lifeline(fd: int) -> None:
    """Block until the parent (the lifeline's only writer) is gone, then die."""
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:  # pragma: no cover - PEP 475 retries reads
            continue
        except OSError:
            break
    kill_own_tree()


def open_dump(path: str) -> BinaryIO:
    dump = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open for faulthandler's lifetime
    faulthandler.enable(file=dump, all_threads=True)
    faulthandler.register(STACK_SIGNAL, file=dump, all_threads=True, chain=False)
    return dump


def serve(sock: socket.socket, dump: BinaryIO, meter: AttemptMeter) -> int:
    channel = Channel(sock)
    handlers = HandlerCache()
    channel.send(ReadyMessage(pid=os.getpid(), cpu_total_s=cpu_total_s()))
    while True:
        message = channel.receive()
        if message is None or isinstance(message, StopMessage):
            return 0
        if not isinstance(message, TaskMessage):
            return 3
        os.ftruncate(dump.fileno(), 0)
        run_task(channel, handlers, message, meter)


def policy_constants(module: ModuleType) -> dict[str, object]:
    """The policy constants a handler module sets, as JSON values for the parent to validate.

    A value JSON cannot carry (a set, an object) goes as its ``repr``: the
    parent then refuses it with a message that shows what the handler wrote.
    """
    found: dict[str, object] = {}
    for name in CONSTANTS:
        if not hasattr(module, name):
            continue
        value = getattr(module, name)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = repr(value)
        found[name] = value
    return found


def check_imports(handlers: dict[str, str]) -> int:
    """``--check=JSON``: import each handler, print a report of errors and warnings as JSON.

    The parent runs this at start-up and on reload to report broken handlers
    loudly without ever importing handler code itself. The handlers come as one
    JSON object ``{type: path}`` attached to the option, so no file name (a
    ``--help.py``) is ever parsed as an option. Before each import a line
    ``{"checking": type}`` is printed, so that if a handler ends the whole
    process (``os._exit`` at import) the parent still knows which one it was.
    After each handler that imports fine, ``{"checked": type, "constants": {...}}``
    carries the policy constants it sets (see :func:`policy_constants`), so the
    parent learns each type's policy even if a later handler ends the process.
    The last line is ``{"errors": {type: error or null}, "warnings": {type: text}}``.
    """
    # The report goes out on a private copy of stdout; fd 1 becomes stderr, so what a
    # handler prints at import can never glue itself to (or forge) a report line.
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    warnings: dict[str, str] = {}
    for task_type, path in handlers.items():
        why = shadowed_module(task_type, path)
        if why is not None:
            warnings[task_type] = why
    errors: dict[str, str | None] = {}
    for task_type, path in handlers.items():
        report.write(json.dumps({"checking": task_type}) + "\n")
        report.flush()
        cache = HandlerCache()
        try:
            cache.handle_function(task_type, path)
            errors[task_type] = None
        except HandlerImportError as exc:
            errors[task_type] = str(exc)
            continue
        constants = policy_constants(cache.module(task_type, path))
        report.write(json.dumps({"checked": task_type, "constants": constants}) + "\n")
        report.flush()
    report.write(json.dumps({"errors": errors, "warnings": warnings}) + "\n")
    report.close()
    return 0


def _ignore_signal(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: only the parent decides when a child stops (it sends ``stop``)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supervisor.child")
    parser.add_argument("--check", metavar="JSON", help='--check={"type": "path", ...}')
    parser.add_argument("--socket", type=int)
    parser.add_argument("--lifeline", type=int)
    parser.add_argument("--dump")
    parser.add_argument("--metrics-id", help="name of this slot's metrics files")
    args = parser.parse_args(argv)
    if args.check is not None:
        enter_child_user()  # --child-user: before the first handler is imported
        return check_imports(json.loads(args.check))
    if args.socket is None or args.lifeline is None or args.dump is None:
        parser.error("--socket, --lifeline and --dump are required")
    return run_child(
        socket_fd=args.socket,
        lifeline_fd=args.lifeline,
        dump_path=args.dump,
        metrics_id=args.metrics_id,
    )


def ignore_stop_signals() -> None:
    """SIGINT and SIGTERM do nothing here: only the parent decides when a child stops.

    Ignored through a handler that does nothing, not SIG_IGN: an ignored disposition is
    inherited across exec, and whatever a handler starts must still stop on TERM and INT.
    """
    signal.signal(signal.SIGINT, _ignore_signal)
    signal.signal(signal.SIGTERM, _ignore_signal)


def line_buffered_std_streams() -> None:
    """fds 1 and 2 are the output pipe: flush each line as it is written, as on a terminal.

    A pipe makes Python block-buffer stdout, which would hold a handler's lines
    back until the buffer fills, and then log them late and under another task.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def run_child(*, socket_fd: int, lifeline_fd: int, dump_path: str, metrics_id: str | None) -> int:
    """Everything a child does once it has its socket, lifeline and dump file; its exit status.

    Shared by a child started as ``python -m supervisor.child`` and one forked by
    the fork server (:mod:`supervisor.forkserver`), so both give the same guarantees.
    """
    ignore_stop_signals()
    line_buffered_std_streams()
    if metrics_id and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from supervisor.metrics import bind_process_files

        bind_process_files(metrics_id)  # before any handler creates a metric
    meter = AttemptMeter.open()  # before the drop: see AttemptMeter
    # --child-user: the drop, after the last import of the child's own and before anything of
    # a handler (or any file of the child's) exists; a child that cannot drop exits here.
    enter_child_user()
    become_subreaper()
    threading.Thread(target=watch_lifeline, args=(lifeline_fd,), daemon=True).start()
    sock = socket.socket(fileno=socket_fd)
    with open_dump(dump_path) as dump:
        return serve(sock, dump, meter)


if __name__ == "__main__":
    # Ended as a forked child ends: a thread a handler left running must not keep it alive.
    from supervisor.template import exit_forked

    exit_forked(main())
