"""Handler output relayed into the supervisor's own log, line by line, tagged with its attempt.

Each child's stdout and stderr go to a pipe the parent reads without waiting
(:class:`~supervisor.output.OutputReader`). This room decides which attempt a
line belongs to, around the moments an attempt ends or its child exits, so
that output printed just before an outcome keeps that attempt's tag and a
partial last line is never glued to the next task's output.
"""

from __future__ import annotations

from typing import Any

from supervisor.output import EXIT_MAX_BYTES, MESSAGE, OutputLine, record_fields
from supervisor.pool import Pool
from supervisor.records import Claim
from supervisor.workers import Child, Running


class OutputRelay:
    def __init__(self, pool: Pool, log: Any) -> None:
        self._pool = pool
        self._log = log

    def relay(self, child: Child, *, exiting: bool = False) -> Running | None:
        """Log what the child printed so far, tagged with its attempt; return that attempt.

        Called before the child's messages are handled, so output printed before
        the outcome (the child flushes its streams before reporting) is tagged with
        the attempt it belongs to, not with none. Output of an attempt that ended
        before its pipe was drained (a turn reads a bounded share) keeps that
        attempt's tag (see :meth:`OutputReader.end_attempt`). When the child is
        ``exiting`` the whole pipe is read: its fd goes with it.
        """
        running = child.running
        output = child.output
        if output is None:
            return running
        while True:  # once more after each ended attempt's output is read in full
            tails = len(output.tails)
            if output.fd >= 0:
                claim = output.owner(running.claim if running is not None else None)
                if exiting:
                    lines = output.read(EXIT_MAX_BYTES, max_lines=EXIT_MAX_BYTES)
                else:
                    lines = output.read()
                for line in lines:
                    self.log_output(line, claim)
                if output.eof:
                    self._pool.close_output(child)
            for line, owner in output.finished_tails():
                self.log_output(line, owner)
            if output.fd < 0 or not tails or len(output.tails) == tails:
                return running

    def attempt_ended(self, child: Child, running: Running | None, *, exited: bool = False) -> None:
        """Flush the partial last line of an attempt that ended (or of a child that exited).

        Without this, ``print("x", end="")`` would wait for the next task's output and
        be glued to it, under the wrong task id.
        """
        output = child.output
        if output is None:  # its fd may be closed already: the partial line is kept
            return
        if not exited and (running is None or child.running is running):
            return
        claim = running.claim if running is not None else None
        if exited:
            for line, owner in output.finished_tails():
                self.log_output(line, owner)
            for line in output.flush():
                self.log_output(line, output.owner(claim))
            output.tails.clear()
            return
        for line in output.end_attempt(claim):
            self.log_output(line, claim)

    def log_output(self, line: OutputLine, claim: Claim | None) -> None:
        self._log.info(MESSAGE, **record_fields(line, claim))
