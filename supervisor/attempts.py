"""Attempts: a claimed task's life in the parent, from dispatch to the one place it is settled.

An attempt starts when a claim is handed to an idle child and ends in
exactly one of these ways, each decided here and nowhere else:

* the child reports ``done`` or ``error`` (completed, retried, failed);
* its deadline passes: the child's tree is killed (``timeout``), with the
  stack faulthandler dumped just before; or its per-attempt ``TIMEOUT`` (the
  claim's ``timeout_s``) passes first: the same kill, but a failed attempt,
  retried while attempts remain (``attempt_timeout`` on the last one);
* its tree goes over the handler's ``MAX_RSS`` (:mod:`supervisor.memory_watch`):
  the same kill, with the stack, and the task fails ``memory``, not retried;
* the child dies (``panic``), or breaks the protocol (treated the same);
* the heartbeat finds the claim lost: the child is killed, nothing is written;
* the drain deadline passes: the child is killed and the attempt refunded.

Every ending goes through :meth:`Attempts.settle`, which takes the attempt
from the child and hands its result to the database link, with what the
attempt used (:mod:`supervisor.usage`): the child's own figures when it
reported, else the parent reads them just before a kill, or from a dead
child's exit status, against the CPU total the child last reported. Claims that arrive
when no child is idle wait in a short backlog (they are leased, so they are
renewed) and go to the next child that frees up.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import attrs
from loguru import logger

from supervisor.dblink import DatabaseLink
from supervisor.lifecycle import (
    STACK_LEAD_S,
    Backoff,
    Decision,
    Failure,
    Outcome,
    Status,
    attempt_limit,
    attempt_timeout_error,
    decide_attempt_timeout,
    decide_error,
    exception_type,
    handler_error,
    memory_error,
    panic_error,
    timeout_error,
)
from supervisor.memory_watch import MEMORY_STACK_LEAD_S, MemoryWatch
from supervisor.policy import HandlerPolicy
from supervisor.pool import Pool
from supervisor.protocol import (
    DoneMessage,
    ErrorMessage,
    Message,
    ProgressMessage,
    ProtocolError,
    ReadyMessage,
    TaskMessage,
)
from supervisor.records import Claim
from supervisor.results import PendingResult, completion, failure_result, refund
from supervisor.telemetry import Telemetry
from supervisor.usage import exit_usage, measure_live
from supervisor.workers import Child, Running

# Prefetch: while attempts take less than this (a moving average), each busy child gets one
# claim ahead, so a child that frees up finds work at once instead of waiting a round trip.
SHORT_ATTEMPT_S = 0.05
# A prefetched claim no child took within this long goes back (attempt refunded), and
# prefetching stops until attempts are seen to be short again.
BACKLOG_WAIT_MAX_S = 0.5

ResultFor = Callable[[Running, float], PendingResult | None]


class Attempts:
    def __init__(
        self,
        *,
        pool: Pool,
        link: DatabaseLink,
        telemetry: Telemetry,
        backoff: Backoff,
        handlers: Callable[[], Mapping[str, Path]],
        fresh_s: float,
        policies: Callable[[], Mapping[str, HandlerPolicy]],
        memory: MemoryWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._link = link
        self._telemetry = telemetry
        self._backoff = backoff
        self._handlers = handlers
        self._policies = policies
        self._clock = clock
        self._memory = memory or MemoryWatch(clock=clock)
        # A claim is dispatched only this soon after it was made: its lease then surely still
        # holds (it is a heartbeat interval, so the lease has two left and the next renewal is due).
        self._fresh_s = fresh_s
        self.backlog: collections.deque[tuple[Claim, float]] = collections.deque()
        self._typical_s = math.inf  # moving average of attempt durations

    def prefetch(self) -> int:
        """Claims wanted ahead of free children: one per busy child that will take another
        task, while attempts are short."""
        return self._pool.busy_and_staying() if self._typical_s < SHORT_ATTEMPT_S else 0

    def _observe(self, duration_s: float) -> None:
        if self._typical_s == math.inf:
            self._typical_s = duration_s
        else:
            self._typical_s += (duration_s - self._typical_s) / 8

    # ------------------------------------------------------------ dispatch

    def claimed(self, claims: tuple[Claim, ...], claimed_at: float) -> None:
        """Queue the claims for idle children; a row that cannot run fails here, at once.

        Such a row (see ``Claim.defect``) never waits for a child or goes back
        to the queue: refunded, it would be claimed again forever.
        """
        for claim in claims:
            if claim.defect is not None:
                self._link.submit(failure_result(claim, Failure.ERROR, claim.defect, 0.0))
            else:
                self.backlog.append((claim, claimed_at))
        self.dispatch_backlog()

    def dispatch_backlog(self) -> None:
        """Hand waiting claims to idle children while there are both.

        A claim that cannot run (expired, its handler gone) leaves its child
        idle: that child takes the next claim. A claim with ``MAX_RSS`` skips
        (and retires) a child that already holds half of it (``Pool.too_heavy_for``).
        """
        while self.backlog:
            idle = self._pool.idle()
            if not idle:
                return
            claim, claimed_at = self.backlog[0]
            limit = self._max_rss_of(claim.type)
            if limit is not None and self._pool.too_heavy_for(idle[0], limit):
                continue  # that child is retired now; the claim waits for the next one
            self.backlog.popleft()
            self._dispatch(idle[0], claim, claimed_at)

    def _max_rss_of(self, task_type: str) -> int | None:
        declared = self._policies().get(task_type)
        return None if declared is None else declared.max_rss_bytes

    def _dispatch(self, child: Child, claim: Claim, claimed_at: float) -> None:
        now = self._clock()
        if now - claimed_at >= self._fresh_s:
            # Held too long (the parent was stopped, or the reply was slow): its lease may have
            # run out and the task be running elsewhere. Put it back (fenced) instead of running it.
            self._link.submit(refund(claim))
            return
        task_deadline = claimed_at + claim.remaining_s
        if task_deadline <= now:
            self._link.submit(
                failure_result(
                    claim, Failure.EXPIRED, "deadline passed before the task was dispatched", 0.0
                )
            )
            return
        path = self._handlers().get(claim.type)
        if path is None:
            # Claimed before a reload removed its handler file: not ours to run any more.
            self._link.submit(refund(claim))
            return
        limit = attempt_limit(started=now, task_deadline=task_deadline, timeout_s=claim.timeout_s)
        child.start(
            Running(
                claim=claim,
                started=now,
                deadline=limit.at,
                stack_at=max(now, limit.at - STACK_LEAD_S),
                limit=limit.failure,
            )
        )
        self._telemetry.dispatched(claim, child.pid)
        max_rss = self._max_rss_of(claim.type)
        if max_rss is not None:
            self._memory.start(child.pid, max_rss)
        message = TaskMessage(
            id=claim.id,
            type=claim.type,
            path=str(path),
            options=claim.options,
            attempt=claim.attempt,
            max_attempts=claim.max_attempts,
            remaining_s=limit.at - now,
        )
        if not child.send(message):
            # The child died between ready and now. The attempt counts (retried after the
            # backoff, or failed on the last one): refunded, a task whose dispatch kills its
            # child every time would be claimed again forever and starve the others.
            logger.warning("child vanished at dispatch", pid=child.pid)
            self.settle(child, self._undelivered, kill="died_idle")

    def expire_backlog(self, now: float) -> None:
        """Prefetched claims no child took in time go back: attempts are not short after all."""
        while self.backlog and now - self.backlog[0][1] > BACKLOG_WAIT_MAX_S:
            claim, _ = self.backlog.popleft()
            self._link.submit(refund(claim))
            self._typical_s = math.inf

    def hand_back(self, claims: Iterable[Claim]) -> None:
        """Claims that will not run here (a drain began): back to the queue, attempt refunded."""
        for claim in claims:
            self._link.submit(refund(claim))

    def refund_backlog(self) -> None:
        while self.backlog:
            claim, _ = self.backlog.popleft()
            self._link.submit(refund(claim))

    # ------------------------------------------------------------ the one way an attempt ends

    def settle(
        self,
        child: Child,
        result_for: ResultFor,
        *,
        kill: str | None = None,
        died: bool = False,
        measure: bool = True,
    ) -> None:
        """End the child's attempt and hand its result over.

        The attempt is taken from the child, which is then free again (it
        reported), killed with its whole tree (``kill`` names the reason), or
        already gone (``died``). ``result_for(running, duration_s)`` builds the
        result; None writes nothing (a lost claim is not ours to write).
        ``measure=False`` skips reading a killed child's figures (a refund writes none).
        """
        self._memory.stop(child.pid)
        if died:
            running = child.died()
        elif kill is not None:
            descendants = None
            if measure and child.running is not None:  # alive: a kill leaves nothing to read
                descendants = child.descendants()  # one scan serves the figures and the kill
                child.running.usage = measure_live(
                    child.pid, child.cpu_total_s, descendants=descendants
                )
            running = child.kill(kill, descendants)
        else:
            running = child.release()
        if running is None:
            return
        duration_s = self._clock() - running.started
        result = result_for(running, duration_s)
        if result is not None:
            if running.usage is not None and not result.refund:
                result = attrs.evolve(
                    result,
                    cpu_s=running.usage.cpu_s,
                    peak_rss_bytes=running.usage.peak_rss_bytes,
                )
            self._link.submit(result)
        if kill is None and not died:
            self._observe(duration_s)
            self._pool.after_task(child)

    # ------------------------------------------------------------ what children say

    def on_readable(self, child: Child) -> None:
        try:
            messages, closed = child.receive()
        except ProtocolError as exc:
            logger.error(
                "child sent a malformed message; killing it", pid=child.pid, error=str(exc)
            )
            error = f"child sent a malformed message: {exc}"
            self.settle(child, self._failed(Failure.PANIC, error), kill=Failure.PANIC.value)
            return
        for message in messages:
            self.on_message(child, message)
        if closed:
            self._pool.close_socket(child)

    def on_message(self, child: Child, message: Message) -> None:
        if isinstance(message, ReadyMessage):
            child.cpu_total_s = message.cpu_total_s
            self._pool.on_ready(child)
            self.dispatch_backlog()
            return
        if child.killed_by_parent:
            return  # its attempt was settled when it was killed; what it still says is moot
        running = child.running
        if running is None or getattr(message, "id", None) != running.claim.id:
            logger.warning("child reported on a task it does not hold; ignored", pid=child.pid)
            return
        if isinstance(message, ProgressMessage):
            running.pct = message.pct
            self._link.progress(running.claim, message.pct)
        elif isinstance(message, DoneMessage | ErrorMessage) and self._too_late(running):
            self._time_out(child, running)
        elif isinstance(message, DoneMessage):
            self.settle(
                child,
                lambda r, seconds: completion(
                    r.claim, seconds, message.cpu_s, message.peak_rss_bytes
                ),
            )
            child.cpu_total_s = message.cpu_total_s
            self.dispatch_backlog()
        elif isinstance(message, ErrorMessage):
            self.settle(child, self._errored(message))
            child.cpu_total_s = message.cpu_total_s
            self.dispatch_backlog()

    def _too_late(self, running: Running) -> bool:
        """Whether an outcome reported now belongs to the deadline, not to the handler.

        The rule: once the parent has asked for the stack (``STACK_LEAD_S``
        before the deadline), or the deadline itself has passed, the attempt is
        a timeout whatever the child says. The stack signal interrupts a handler
        blocked in a C call (libc ``sleep()`` returns early, a read fails with
        EINTR), so a ``done`` or ``error`` after it may be the signal's doing,
        not the handler's: a task is never ``completed`` (or retried as an
        ordinary error) when it ran into the last ``STACK_LEAD_S`` of its budget.
        """
        return running.stack_requested or self._clock() >= running.deadline

    def _time_out(self, child: Child, running: Running) -> None:
        """Record the attempt's end with the stack dump, and kill the child's tree.

        At the task's deadline the task fails ``timeout``; at the per-attempt
        ``TIMEOUT`` the attempt failed, retried while attempts remain.
        """
        stack = child.read_dump(since=running.dump_seen)  # not the stacks taken on demand
        if running.limit is Failure.MEMORY:
            self._kill_over_memory(child, running, stack)
            return
        per_attempt = running.limit is Failure.ATTEMPT_TIMEOUT
        self._telemetry.deadline_kill(running.claim, child.pid, per_attempt=per_attempt)
        if per_attempt:
            error = attempt_timeout_error(running.deadline - running.started, stack)
            self.settle(child, self._attempt_timed_out(error), kill=running.limit.value)
        else:
            error = timeout_error(running.deadline - running.started, stack)
            self.settle(child, self._failed(Failure.TIMEOUT, error), kill=running.limit.value)

    def _kill_over_memory(self, child: Child, running: Running, stack: str) -> None:
        reading = self._memory.last_reading(child.pid)
        assert reading is not None, "a memory kill is set only for a watched child"
        peak, limit = reading
        self._telemetry.memory_kill(running.claim, child.pid, peak, limit)
        error = memory_error(peak, limit, stack)
        self.settle(child, self._failed(Failure.MEMORY, error), kill=Failure.MEMORY.value)

    def _attempt_timed_out(self, error: str) -> ResultFor:
        def result_for(running: Running, duration_s: float) -> PendingResult:
            claim = running.claim
            return PendingResult(
                claim=claim,
                decision=decide_attempt_timeout(
                    attempt=claim.attempt,
                    max_attempts=claim.max_attempts,
                    backoff=self.backoff_for(claim.type),
                ),
                error=error,
                summary=error.splitlines()[0],
                duration_s=duration_s,
                progress_pct=running.pct,
            )

        return result_for

    def backoff_for(self, task_type: str) -> Backoff:
        """The handler's ``BACKOFF`` for its type's retries, else the supervisor's ``--backoff``."""
        declared = self._policies().get(task_type)
        if declared is not None and declared.backoff is not None:
            return Backoff(declared.backoff)
        return self._backoff

    def _errored(self, message: ErrorMessage) -> ResultFor:
        def result_for(running: Running, duration_s: float) -> PendingResult:
            claim = running.claim
            import_failed = message.permanent and not message.traceback
            return PendingResult(
                claim=claim,
                decision=decide_error(
                    attempt=claim.attempt,
                    max_attempts=claim.max_attempts,
                    permanent=message.permanent,
                    backoff=self.backoff_for(claim.type),
                ),
                error=handler_error(message.message, message.traceback),
                summary="handler could not be imported"
                if import_failed
                else exception_type(message.message),
                duration_s=duration_s,
                progress_pct=running.pct,
                cpu_s=message.cpu_s,
                peak_rss_bytes=message.peak_rss_bytes,
            )

        return result_for

    @staticmethod
    def _undelivered(running: Running, duration_s: float) -> PendingResult:
        """Back to the queue at once with the attempt counted; on the last attempt, a panic."""
        claim = running.claim
        error = "the child was gone when this task was sent to it"
        if claim.attempt >= claim.max_attempts:
            return failure_result(claim, Failure.PANIC, f"panic: {error}", duration_s)
        return PendingResult(
            claim=claim,
            decision=Decision(outcome=Outcome.RETRIED, status=Status.QUEUED, retry_in_s=0.0),
            error=error,
            summary=error,
            duration_s=duration_s,
        )

    @staticmethod
    def _failed(failure: Failure, error: str) -> ResultFor:
        def result_for(running: Running, duration_s: float) -> PendingResult:
            return failure_result(running.claim, failure, error, duration_s, running.pct)

        return result_for

    def on_exit(self, child: Child) -> None:
        """The child's pidfd fired: read its last words, reap it, settle a panic, refill."""
        if child.sock.fileno() >= 0:
            # Messages written just before the exit are still in the socket: read them first,
            # all of them (a report can span several reads).
            with contextlib.suppress(ProtocolError):
                for message in child.receive_rest():
                    self.on_message(child, message)
        status = child.reap()
        if status is None:
            return
        if child.exit_reason == Failure.MEMORY.value:
            self._telemetry.memory_killed_reaped(child.pid, status.peak_rss_bytes)
        if child.running is not None and not child.killed_by_parent:
            child.running.usage = exit_usage(status.cpu_s, status.peak_rss_bytes, child.cpu_total_s)
            error = panic_error(status.describe(), child.read_dump(since=child.running.dump_seen))
            child.exit_reason = Failure.PANIC.value
            self.settle(child, self._failed(Failure.PANIC, error), died=True)
        self._pool.on_exit(child, status)

    # ------------------------------------------------------------ time

    def next_due(self) -> float | None:
        due = [
            r.deadline if r.stack_requested else r.stack_at
            for r in (c.running for c in self._pool.busy())
            if r is not None
        ]
        if self.backlog:
            due.append(self.backlog[0][1] + BACKLOG_WAIT_MAX_S)
        return min(due, default=None)

    def enforce_memory(self, now: float) -> None:
        """Ask for the stack of each child the watch found over its ``MAX_RSS``; kill it soon.

        The kill is the deadline mechanism's: the attempt's deadline moves to
        :data:`~supervisor.memory_watch.MEMORY_STACK_LEAD_S` from now, with
        ``Failure.MEMORY`` as its limit, and :meth:`enforce_deadlines` kills
        then (with the stack faulthandler wrote meanwhile). So the timeout's
        rule holds: an outcome the child reports after this moment is not the
        handler's (:meth:`_too_late`), and the task fails ``memory``. A child
        whose stack was already asked for (its deadline is at most
        :data:`STACK_LEAD_S` away) is left to that kill: the first limit wins.
        The lead is shorter than the deadline's because the handler may be
        allocating all along: at 100 MB/s, 20 ms is 2 MB more.
        """
        for breach in self._memory.sample(now):
            for child in self._pool.busy():
                running = child.running
                if child.pid != breach.pid or running is None or running.stack_requested:
                    continue
                running.stack_requested = True
                running.limit = Failure.MEMORY
                running.deadline = min(running.deadline, now + MEMORY_STACK_LEAD_S)
                if not child.request_stack():  # no stack will come: kill at once
                    running.deadline = now

    def enforce_deadlines(self, now: float) -> None:
        for child in self._pool.busy():
            running = child.running
            if running is None:
                continue
            if not running.stack_requested and now >= running.stack_at:
                running.stack_requested = True
                child.request_stack()
            if now >= running.deadline:
                self._time_out(child, running)

    # ------------------------------------------------------------ claims lost, drain

    def leases_lost(self, ids: frozenset[int], cancelled: frozenset[int] = frozenset()) -> None:
        """A claim no longer ours is someone else's now: kill its child, write nothing.

        ``cancelled`` names those an operator cancelled, counted apart from rescues.
        """
        for child in self._pool.busy():
            running = child.running
            if running is not None and running.claim.id in ids:
                self.drop(child, cancelled=running.claim.id in cancelled)
        kept = [(c, at) for c, at in self.backlog if c.id not in ids]
        self.backlog = collections.deque(kept)

    def drop(self, child: Child, *, cancelled: bool) -> None:
        """Kill the child of a claim that is not ours any more; write nothing."""

        def lost(r: Running, seconds: float) -> None:
            self._telemetry.claim_lost(r.claim, seconds, cancelled=cancelled, usage=r.usage)

        self.settle(child, lost, kill="cancelled" if cancelled else "lost")

    def abandon_all(self) -> None:
        """Drain time is up: kill what still runs and put those tasks back, attempt refunded."""
        self.refund_backlog()
        for child in list(self._pool.children.values()):
            self.settle(
                child,
                lambda r, seconds: refund(r.claim, seconds),
                kill=child.exit_reason,
                measure=False,
            )
