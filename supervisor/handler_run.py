"""One handler attempt in a real child process, settled by the supervisor's own rules.

This is what :func:`supervisor.testing.run_handler` runs. The child is the
supervisor's child, started the way the pool starts one when the fork server
is unavailable (:meth:`supervisor.workers.Child.spawn`: ``python -m
supervisor.child``, its own process group, a lifeline, a faulthandler dump
file, its output on a pipe), and it is told about the task with the same
``task`` message. The attempt then ends the way it ends in production, by the
same rules (:mod:`supervisor.lifecycle`): a return is ``completed``, a raise is
retried or failed by the backoff and attempts left, the deadline kills the
child's tree after asking for its stack (``timeout``), a ``max_rss`` limit
is watched and enforced as ``MAX_RSS`` is (:mod:`supervisor.memory_watch`:
the stack, then the kill, ``memory``), and a child that dies is a ``panic``.
Nothing of it raises into the caller: the outcome is a record.

Only the database is missing: nothing is claimed or written, so a test needs
no queue to see what its handler would do to a row.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import tempfile
import time
from pathlib import Path

import attrs

from supervisor.errors import UsageError
from supervisor.handlers import discover
from supervisor.lifecycle import (
    COMPLETED,
    STACK_LEAD_S,
    Backoff,
    Decision,
    Failure,
    Outcome,
    Status,
    decide_error,
    decision_for_failure,
    handler_error,
    memory_error,
    panic_error,
    timeout_error,
    trim_error,
)
from supervisor.memory_watch import MEMORY_STACK_LEAD_S, MemoryWatch
from supervisor.protocol import (
    DoneMessage,
    ErrorMessage,
    Message,
    ProgressMessage,
    ProtocolError,
    ReadyMessage,
    StopMessage,
    TaskMessage,
)
from supervisor.reaping import ExitStatus
from supervisor.usage import Usage, exit_usage
from supervisor.workers import Child, child_environment

START_TIMEOUT_S = 60.0  # a child that is not ready by then is broken, not slow
STOP_GRACE_S = 5.0  # as the pool: a child still alive this long after ``stop`` is killed


class ChildStartError(RuntimeError):
    """The child could not even start: the environment is broken, not the handler."""


@attrs.frozen(kw_only=True)
class HandlerRun:
    """What one attempt did, in the words of the task's row.

    ``status``, ``failure`` and ``last_error`` are what the supervisor would
    store; ``outcome`` is the word of logs and metrics (``retried`` when the
    attempt failed but attempts remain, with ``retry_in_s`` the backoff).
    ``stack`` is where the handler was: its traceback when it raised, the
    faulthandler dump at a timeout or a crash. ``progress`` holds the values the
    child reported, in order (the child coalesces bursts to ten a second, and
    always sends the last). ``output`` holds the lines the handler printed.
    ``cpu_s`` and ``peak_rss_bytes`` are the attempt's, as the row records them
    (:mod:`supervisor.usage`): the child's own report when it reported, else
    its exit figures against its CPU when it said ``ready``; None where the
    platform does not say.
    """

    outcome: Outcome
    status: Status
    failure: Failure | None
    retry_in_s: float | None
    last_error: str | None
    stack: str
    progress: tuple[int, ...]
    output: tuple[str, ...]
    duration_s: float
    cpu_s: float | None
    peak_rss_bytes: int | None
    exit: ExitStatus | None = None

    @property
    def completed(self) -> bool:
        return self.outcome is Outcome.COMPLETED


@attrs.define
class _Attempt:
    """The attempt while it runs: what the child said, and when it must end."""

    started: float
    deadline: float
    budget_s: float
    progress: list[int] = attrs.Factory(list)
    output: list[str] = attrs.Factory(list)
    stack_requested: bool = False
    over_memory: bool = False  # the watch found the tree over max_rss: the kill is ``memory``
    decision: Decision | None = None
    last_error: str | None = None
    stack: str = ""
    usage: Usage | None = None  # what the child reported with its done or error


def handler_path(task_type: str, handlers: Path) -> Path:
    """The file the supervisor would run for ``task_type``; a clear error if it has none."""
    path = discover(handlers).get(task_type)
    if path is None:
        raise UsageError(
            f"no handler for type {task_type!r} in {handlers.resolve()}"
            " (a <type>.py file not starting with '_')"
        )
    return path


def run_attempt(
    message: TaskMessage,
    *,
    backoff: Backoff,
    env: dict[str, str] | None = None,
    max_rss_bytes: int | None = None,
) -> HandlerRun:
    """Start a child, hand it ``message``, and settle the attempt as the parent would.

    ``max_rss_bytes``: the child's tree is watched and killed over it, as under ``MAX_RSS``.
    """
    runtime_dir = Path(tempfile.mkdtemp(prefix="supervisor-test-"))
    lifeline_r, lifeline_w = os.pipe()
    try:
        child = Child.spawn(
            slot=0,
            runtime_dir=runtime_dir,
            lifeline_fd=lifeline_r,
            env=child_environment(os.environ if env is None else env, {}),
        )
        os.close(lifeline_r)
        lifeline_r = -1
        runner = _Runner(child, backoff, max_rss_bytes)
        try:
            return runner.run(message)
        finally:
            runner.close()
    finally:
        for fd in (lifeline_r, lifeline_w):
            if fd >= 0:
                os.close(fd)  # the lifeline closing takes whatever is left of the child down
        shutil.rmtree(runtime_dir, ignore_errors=True)


class _Runner:
    """The parent's side of one attempt: a selector on the child's socket, exit and output."""

    def __init__(self, child: Child, backoff: Backoff, max_rss_bytes: int | None = None) -> None:
        self._child = child
        self._backoff = backoff
        self._max_rss_bytes = max_rss_bytes
        self._memory = MemoryWatch(clock=time.monotonic)
        self._selector = selectors.DefaultSelector()
        self._selector.register(child.sock, selectors.EVENT_READ, "socket")
        self._selector.register(child.pidfd, selectors.EVENT_READ, "exit")
        assert child.output is not None, "a spawned child always has an output pipe"
        self._output = child.output
        self._selector.register(child.output.fd, selectors.EVENT_READ, "output")
        self._ready = False
        self._exited: ExitStatus | None = None
        self._ready_cpu_s: float | None = None  # the child's CPU total when it said ready

    def run(self, message: TaskMessage) -> HandlerRun:
        try:
            self._wait_ready()
            started = time.monotonic()
            attempt = _Attempt(
                started=started,
                deadline=started + message.remaining_s,
                budget_s=message.remaining_s,
            )
            self._child.send(message)
            if self._max_rss_bytes is not None:
                self._memory.start(self._child.pid, self._max_rss_bytes)
            while attempt.decision is None:
                self._turn(attempt, message)
            duration_s = time.monotonic() - started
            self._stop(attempt)
            self._read_output(attempt, final=True)
        finally:
            self._selector.close()
        usage = attempt.usage
        if usage is None and self._exited is not None:  # killed or died: as the parent measures
            usage = exit_usage(self._exited.cpu_s, self._exited.peak_rss_bytes, self._ready_cpu_s)
        decision = attempt.decision
        return HandlerRun(
            outcome=decision.outcome,
            status=decision.status,
            failure=decision.failure,
            retry_in_s=decision.retry_in_s,
            last_error=None if attempt.last_error is None else trim_error(attempt.last_error),
            stack=attempt.stack,
            progress=tuple(attempt.progress),
            output=tuple(attempt.output),
            duration_s=duration_s,
            cpu_s=None if usage is None else usage.cpu_s,
            peak_rss_bytes=None if usage is None else usage.peak_rss_bytes,
            exit=self._exited,
        )

    def close(self) -> None:
        """Whatever happened, no process of this attempt outlives it."""
        if self._exited is None:
            self._child.kill_tree()
            self._reap()
        self._child.close()

    # ------------------------------------------------------------ start and stop

    def _wait_ready(self) -> None:
        limit = time.monotonic() + START_TIMEOUT_S
        while not self._ready:
            left = limit - time.monotonic()
            if left <= 0:
                raise ChildStartError(f"the child was not ready within {START_TIMEOUT_S:.0f} s")
            for key, _ in self._selector.select(left):
                if key.data == "socket":
                    messages, _closed = self._child.receive()
                    for ready in (m for m in messages if isinstance(m, ReadyMessage)):
                        self._ready, self._ready_cpu_s = True, ready.cpu_total_s
                elif key.data == "exit":
                    status = self._reap()
                    output = " / ".join(line.text for line in self._output.read())
                    raise ChildStartError(
                        f"the child exited before it was ready: {status.describe()}: {output}"
                    )
                else:
                    self._output.read()  # start-up noise, not the handler's

    def _stop(self, attempt: _Attempt) -> None:
        """Let a child that reported go as the pool does: ``stop``, then a kill if it lingers."""
        if self._exited is not None:
            return
        self._child.send(StopMessage())
        limit = time.monotonic() + STOP_GRACE_S
        while self._exited is None and time.monotonic() < limit:
            for key, _ in self._selector.select(max(0.0, limit - time.monotonic())):
                if key.data == "exit":
                    self._reap()
                elif key.data == "output":
                    self._read_output(attempt)  # a thread the handler left may still print
        if self._exited is None:
            self._child.kill_tree()
            self._reap()

    def _reap(self) -> ExitStatus:
        """Collect the child with its resource usage (wait4: its CPU and peak memory).

        Called when its pidfd said it exited, or right after killing it, so the
        wait is at most the moment a kill takes.
        """
        if self._exited is not None:
            return self._exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._child.pid, 9)  # what the child left behind in its group goes too
        _pid, status, usage = os.wait4(self._child.pid, 0)
        if self._child.process is not None:  # so Popen does not think it still runs
            self._child.process.returncode = os.waitstatus_to_exitcode(status)
        self._exited = ExitStatus.from_wait(
            status,
            usage.ru_maxrss,
            killed_by_parent=self._child.killed_by_parent,
            cpu_s=usage.ru_utime + usage.ru_stime,
        )
        return self._exited

    # ------------------------------------------------------------ the attempt

    def _turn(self, attempt: _Attempt, message: TaskMessage) -> None:
        now = time.monotonic()
        due = attempt.deadline if attempt.stack_requested else attempt.deadline - STACK_LEAD_S
        sample_due = self._memory.next_due()
        if sample_due is not None:
            due = min(due, sample_due)
        for key, _ in self._selector.select(max(0.0, due - now)):
            if key.data == "output":
                self._read_output(attempt)
            elif key.data == "socket":
                self._read_messages(attempt, message)
            elif key.data == "exit":
                self._died(attempt, message)
            if attempt.decision is not None:
                return
        now = time.monotonic()
        if not attempt.stack_requested and now >= attempt.deadline - STACK_LEAD_S:
            attempt.stack_requested = True
            self._child.request_stack()
        if now >= attempt.deadline:
            self._time_out(attempt)
            return
        if self._memory.sample(now) and not attempt.stack_requested:
            # As the parent does: the stack now, the kill MEMORY_STACK_LEAD_S later.
            attempt.stack_requested = attempt.over_memory = True
            attempt.deadline = now + MEMORY_STACK_LEAD_S
            self._child.request_stack()

    def _read_output(self, attempt: _Attempt, *, final: bool = False) -> None:
        reader = self._output
        lines = reader.read()
        while final and not reader.eof and lines:
            lines += reader.read()
        if final:
            lines += reader.flush()
        attempt.output.extend(line.text for line in lines)

    def _read_messages(self, attempt: _Attempt, message: TaskMessage) -> None:
        try:
            messages, _closed = self._child.receive()
        except ProtocolError as exc:
            self._settle_failure(
                attempt, Failure.PANIC, f"child sent a malformed message: {exc}", kill=True
            )
            return
        for received in messages:
            self._on_message(attempt, message, received)
            if attempt.decision is not None:
                return

    def _on_message(self, attempt: _Attempt, task: TaskMessage, received: Message) -> None:
        if isinstance(received, ProgressMessage):
            attempt.progress.append(received.pct)
            return
        if not isinstance(received, DoneMessage | ErrorMessage):
            return
        # The parent's rule: an outcome that arrives once the stack was asked for (or after
        # the deadline) belongs to the deadline, since the stack signal may have caused it.
        if attempt.stack_requested or time.monotonic() >= attempt.deadline:
            self._time_out(attempt)
            return
        attempt.usage = Usage(cpu_s=received.cpu_s, peak_rss_bytes=received.peak_rss_bytes)
        if isinstance(received, DoneMessage):
            attempt.decision = COMPLETED
        else:
            attempt.decision = decide_error(
                attempt=task.attempt,
                max_attempts=task.max_attempts,
                permanent=received.permanent,
                backoff=self._backoff,
            )
            attempt.last_error = handler_error(received.message, received.traceback)
            attempt.stack = received.traceback

    def _died(self, attempt: _Attempt, task: TaskMessage) -> None:
        # Its last words first: a report written just before the exit still counts.
        with contextlib.suppress(ProtocolError):
            for received in self._child.receive_rest():
                self._on_message(attempt, task, received)
        if attempt.decision is not None:
            return
        status = self._reap()
        dump = self._child.read_dump()
        attempt.stack = dump
        self._settle_failure(attempt, Failure.PANIC, panic_error(status.describe(), dump))

    def _time_out(self, attempt: _Attempt) -> None:
        dump = self._child.read_dump()
        attempt.stack = dump
        reading = self._memory.last_reading(self._child.pid)
        if attempt.over_memory and reading is not None:
            peak, limit = reading
            error = memory_error(peak, limit, dump)
            self._settle_failure(attempt, Failure.MEMORY, error, kill=True)
            return
        self._settle_failure(
            attempt, Failure.TIMEOUT, timeout_error(attempt.budget_s, dump), kill=True
        )

    def _settle_failure(
        self, attempt: _Attempt, failure: Failure, error: str, *, kill: bool = False
    ) -> None:
        attempt.decision = decision_for_failure(failure)
        attempt.last_error = error
        if kill:
            self._child.kill_tree()
            self._reap()
