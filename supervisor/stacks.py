"""Stacks of running children, taken without disturbing them; and a cancel that takes one first.

Every child has faulthandler registered on ``SIGUSR1`` (``STACK_SIGNAL``),
writing every thread's stack to its dump file, which it opened ``O_APPEND``.
So a stack is taken by noting the file's size, sending the signal, and a short
moment later (:data:`STACK_READ_LEAD_S`, a due time of the loop: it never
sleeps) reading what was appended after that offset. Stacks taken earlier in
the same attempt are thereby left out.

The child is neither paused nor killed: faulthandler writes from its C signal
handler and returns. A handler blocked in a system call sees that call
interrupted; Python retries those itself (PEP 475: ``time.sleep``, reads,
waits), so a Python handler carries on exactly as before, which the
end-to-end tests check with a handler that sleeps. (A C extension that does
not retry, such as libc ``sleep()`` called through ctypes, may return early;
the deadline logic treats its stack request as the start of the kill for that
reason, see ``Attempts._too_late``; an on-demand stack does not, since the
task carries on.) A handler that reset ``SIGUSR1`` to its default action
(which terminates) is not signalled for an on-demand stack at all: see
:func:`supervisor.workers.catches`.

Two uses:

* an operator's request (``supervisor stack ID``, passed on by the link as
  :class:`~supervisor.link_events.StacksWanted`): the stack is written to the
  running row, which answers the request;
* a cancel of a running task: the stack is taken, then the child's tree is
  killed, and the stack is written to the cancelled row, so the operator sees
  where the task was when it was cancelled.

If the attempt ends while its stack is being taken (the handler returned, the
deadline passed, the child died), nothing is written: the dump may already
belong to the child's next task, and the attempt's ending was settled as
usual (a result of a cancelled task loses its fence and counts as cancelled).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from supervisor.attempts import Attempts
from supervisor.dblink import DatabaseLink
from supervisor.lifecycle import Status
from supervisor.pool import Pool
from supervisor.workers import Child, Running

STACK_READ_LEAD_S = 0.05  # time faulthandler has to write every thread's stack
NO_STACK = "(no stack: the child wrote none within {lead_ms:.0f} ms of the signal)"
NOT_CAUGHT = (
    "(no stack: the handler reset the child's SIGUSR1 to its default action, which would"
    " kill it; no signal was sent)"
)


@attrs.define(kw_only=True)
class _Taking:
    running: Running  # the attempt the stack is of: the child's attempt must still be it
    offset: int  # the dump file's size before the signal
    due: float
    cancel: bool


class StackTaker:
    """Stacks being taken, by child; each read and written (or the child killed) when due."""

    def __init__(
        self,
        *,
        pool: Pool,
        attempts: Attempts,
        link: DatabaseLink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._attempts = attempts
        self._link = link
        self._clock = clock
        self._taking: dict[Child, _Taking] = {}

    def wanted(self, ids: frozenset[int]) -> None:
        """Operators asked for these tasks' stacks: signal the children that run them.

        A task not on a child yet (its claim waits in the backlog) is asked for
        again by the link a little later.
        """
        for child in self._children_of(ids):
            if not self._in_progress(child):
                self._start(child, cancel=False)

    def cancelled(self, ids: frozenset[int]) -> frozenset[int]:
        """Start the cancel of these tasks' children: stack first, kill when it is read.

        Returns the ids this took over; the others (not on a child) are the
        caller's to drop as before.
        """
        taken = set()
        for child in self._children_of(ids):
            assert child.running is not None
            taken.add(child.running.claim.id)
            if self._in_progress(child):  # a stack was being taken already: it serves the cancel
                self._taking[child].cancel = True
            else:
                self._start(child, cancel=True)
        return frozenset(taken)

    def _in_progress(self, child: Child) -> bool:
        """Whether a stack of the child's current attempt is being taken (one of an attempt
        that ended meanwhile does not count: its entry is replaced)."""
        taking = self._taking.get(child)
        return taking is not None and taking.running is child.running

    def next_due(self) -> float | None:
        return min((t.due for t in self._taking.values()), default=None)

    def collect(self, now: float) -> None:
        """Read each stack that is due; write it; kill the child of a cancelled task."""
        for child, taking in list(self._taking.items()):
            if now < taking.due:
                continue
            del self._taking[child]
            if child.running is not taking.running:
                continue  # the attempt ended meanwhile (see the module's docstring)
            stack = child.read_dump(since=taking.offset) or NO_STACK.format(
                lead_ms=STACK_READ_LEAD_S * 1000
            )
            # A timeout's or a panic's error shows what the child writes after this; unless the
            # deadline or the memory watch asked for a stack meanwhile: their kill reads it.
            if not taking.running.stack_requested:
                taking.running.dump_seen = child.dump_size()
            claim = taking.running.claim
            if taking.cancel:
                self._attempts.drop(child, cancelled=True)
                self._link.record_stack(claim, stack, status=Status.CANCELLED)
            else:
                self._link.record_stack(claim, stack, status=Status.RUNNING)

    def _start(self, child: Child, *, cancel: bool) -> None:
        running = child.running
        assert running is not None
        offset = child.dump_size()
        if not child.request_stack():  # the handler reset the signal: sending it would kill
            self._taking.pop(child, None)
            if cancel:
                self._attempts.drop(child, cancelled=True)
                self._link.record_stack(running.claim, NOT_CAUGHT, status=Status.CANCELLED)
            else:
                self._link.record_stack(running.claim, NOT_CAUGHT, status=Status.RUNNING)
            return
        self._taking[child] = _Taking(
            running=running,
            offset=offset,
            due=self._clock() + STACK_READ_LEAD_S,
            cancel=cancel,
        )

    def _children_of(self, ids: frozenset[int]) -> list[Child]:
        return [
            child
            for child in self._pool.busy()
            if child.running is not None
            and child.running.claim.id in ids
            and not child.killed_by_parent
        ]
