"""What children write to stdout and stderr, turned into the supervisor's own log records.

Children used to share the supervisor's stderr, which is its log stream: a
handler's ``print`` without a final newline was glued to the next JSON record,
and a handler could print a line that looked exactly like one of the
supervisor's records (a forged ``task completed``). Now each child's fds 1 and 2
(and those of whatever it starts) point at a pipe of its own. The parent reads
the other end without ever blocking, cuts it into lines and logs each one as a
``handler output`` record tagged with the attempt the child was running: the
text is a field's value, so it can neither break the JSON lines nor pass for a
record.

Bounds, since the child is untrusted: a line is cut at :data:`LINE_MAX_BYTES`
(the rest of it, up to its newline, is dropped and the record says
``truncated``), and one turn of the loop reads at most :data:`TURN_MAX_BYTES`
or about :data:`TURN_MAX_LINES` lines of a child, so a chatty child cannot
starve the others; what is left waits for the next turn (the selector is
level-triggered). A child that writes faster than that fills its pipe and
waits in ``write``: the flood slows the handler, not the loop.
"""

from __future__ import annotations

import array
import fcntl
import os
import termios
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from supervisor.records import Claim

LINE_MAX_BYTES = 8 * 1024
READ_BYTES = 4 * 1024  # small reads, so that the line limit below is never overshot by much
TURN_MAX_BYTES = 64 * 1024
TURN_MAX_LINES = 256
# What is read of an exited child's pipe at once: its capacity (64 KiB unless the child raised
# it; 1 MiB at most by default), so what it printed before exiting is not lost with the fd.
EXIT_MAX_BYTES = 1024 * 1024
MESSAGE = "handler output"


@attrs.frozen
class OutputLine:
    text: str
    truncated: bool


@attrs.define
class Tail:
    """An ended attempt whose output is still in the pipe: the next ``left`` bytes are its."""

    claim: Claim | None
    left: int


class OutputReader:
    """The parent's end of one child's output pipe, and the line it is in the middle of."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)  # a grandchild may hold the write end for ever
        self.fd = fd
        self.eof = False
        # Attempts that ended while some of their output was still in the pipe (a turn
        # reads a bounded share), oldest first: the bytes read next are theirs.
        self.tails: deque[Tail] = deque()
        self._partial = bytearray()
        self._truncated = False

    def read(
        self, limit: int = TURN_MAX_BYTES, max_lines: int = TURN_MAX_LINES
    ) -> list[OutputLine]:
        """The complete lines available now, reading at most ``limit`` bytes (one turn's share).

        At end of file (every writer gone) the partial last line comes too and
        :attr:`eof` is set. Never blocks. While an ended attempt's output is
        still in the pipe, only its bytes are read (see :meth:`end_attempt`).
        """
        lines: list[OutputLine] = []
        total = 0
        if self.tails:
            limit = min(limit, self.tails[0].left)
        while total < limit and len(lines) < max_lines and not self.eof:
            try:
                data = os.read(self.fd, min(READ_BYTES, limit - total))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # closed under us: nothing more will come
                data = b""
            if not data:
                self.eof = True
                lines.extend(self.flush())
                break
            total += len(data)
            lines.extend(self._feed(data))
        if self.tails:
            self.tails[0].left -= total
        return lines

    def owner(self, running: Claim | None) -> Claim | None:
        """Whose output :meth:`read` returns next: the oldest ended attempt's, or ``running``'s."""
        return self.tails[0].claim if self.tails else running

    def finished_tails(self) -> list[tuple[OutputLine, Claim | None]]:
        """The last lines of ended attempts whose output has now been read in full."""
        done: list[tuple[OutputLine, Claim | None]] = []
        while self.tails and (self.tails[0].left <= 0 or self.eof):
            tail = self.tails.popleft()
            done.extend((line, tail.claim) for line in self.flush())
        return done

    def end_attempt(self, claim: Claim | None) -> list[OutputLine]:
        """The attempt ended (its child flushed its streams before reporting).

        Everything in the pipe now was written before the outcome, so it is the
        attempt's: if the pipe is empty its partial last line is complete and is
        returned; otherwise the bytes still to read are counted and tagged as
        its when they are read.
        """
        pending = self.pending() - sum(t.left for t in self.tails)
        if self.tails or pending > 0:
            self.tails.append(Tail(claim, max(0, pending)))
            return []
        return self.flush()

    def pending(self) -> int:
        """Bytes waiting in the pipe (FIONREAD); 0 once it is closed."""
        if self.fd < 0:
            return 0
        count = array.array("i", [0])
        try:
            fcntl.ioctl(self.fd, termios.FIONREAD, count)
        except OSError:
            return 0
        return count[0]

    def flush(self) -> list[OutputLine]:
        """The partial line, if any, as a line of its own (the child exited, its attempt ended)."""
        if not self._partial and not self._truncated:
            return []
        return [self._take()]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _feed(self, data: bytes) -> list[OutputLine]:
        lines = []
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            self._append(data[start:newline])
            lines.append(self._take())
            start = newline + 1
        self._append(data[start:])
        return lines

    def _append(self, chunk: bytes) -> None:
        room = LINE_MAX_BYTES - len(self._partial)
        if len(chunk) > room:
            self._truncated = True
            chunk = chunk[:room]
        self._partial += chunk

    def _take(self) -> OutputLine:
        line = OutputLine(self._partial.decode("utf-8", errors="replace"), self._truncated)
        self._partial = bytearray()
        self._truncated = False
        return line


def record_fields(line: OutputLine, claim: Claim | None) -> dict[str, Any]:
    """The fields of a ``handler output`` record: the attempt it belongs to (None when idle)."""
    fields: dict[str, Any] = {
        "task_id": claim.id if claim else None,
        "type": claim.type if claim else None,
        "attempt": claim.attempt if claim else None,
        "stream": "output",
        "line": line.text,
    }
    if line.truncated:
        fields["truncated"] = True
    return fields
