"""What one attempt used: CPU seconds, peak resident memory, wall-clock seconds.

The row keeps the last attempt's figures (``cpu_s``, ``peak_rss_bytes``,
``wall_s``); the metrics ``task_cpu_seconds`` and ``task_peak_rss_bytes``
observe every attempt's. What they mean exactly:

``cpu_s``
    User + system CPU time of the child process during the attempt, plus that
    of every process the handler started *and waited for* (``RUSAGE_CHILDREN``:
    a ``subprocess.run`` counts, with what that process waited for in turn; a
    process nobody waits for is not counted). At a kill, the processes of the
    tree still alive are added (they were never waited for).
``peak_rss_bytes``
    The largest resident set size of any *single* process of the tree during
    the attempt, not a sum: the child's own high-water mark (``VmHWM``), reset
    at the attempt's start, or a waited-for subprocess's peak if larger. The
    child's baseline (the interpreter, the handler modules it imported) is
    part of its resident set, so it is part of the peak.
``wall_s``
    The attempt's duration as the parent timed it, from dispatch to its end.

Where it is measured, and why there: the parent is the supervisor's
bottleneck (thousands of trivial tasks a second), so it makes no system call
per task for this. For an attempt the child reports (``done``, ``error``) the
child measures itself, before and after ``handle()`` (:class:`AttemptMeter`),
and sends the figures with its report. The child is reused across attempts,
so it takes baselines: its cumulative CPU before the attempt, and it resets
its peak (``/proc/self/clear_refs``, Linux 4.0+). It also sends its
cumulative CPU in every ``ready``/``done``/``error`` message, so the parent
knows the CPU an attempt started from without asking. An attempt that ends by
a kill (deadline, ``TIMEOUT``, cancel, lost claim) is measured by the parent
just before the kill (:func:`measure_live`), and a panic from the dead
child's ``wait4`` usage (:func:`exit_usage`); both are rare.

Limits, all on the side of reporting less: a subprocess's peak is seen only
when it is the largest the child ever waited for (``RUSAGE_CHILDREN`` keeps a
maximum that cannot be reset), which matters only if it is also larger than
the child itself during the attempt; at a kill, descendants that already
exited without being waited for are missed. A panic's peak comes from
``wait4``, which also remembers the peak at which any earlier thread of the
child exited (a handler's thread from an earlier attempt could make it larger).
A refund writes no figures (:attr:`supervisor.results.PendingResult.usage`);
a lost or cancelled attempt's go to the histograms only (the row is not ours).

A handler runs inside the child, so a hostile one can make the child report
anything plausible; the parent only refuses figures that are not figures
(wrong type, negative, not finite, too large for the column) as a malformed
message (:mod:`supervisor.protocol`).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:  # imported where it is used: the store imports this module (Usage)
    import psutil

# ``echo 5 > /proc/PID/clear_refs`` resets the process's peak RSS (VmHWM) to its current RSS.
CLEAR_REFS_HIWATER = b"5"
MAX_RSS_BYTES = 2**63 - 1  # what the columns hold (BIGINT, SQLite INTEGER): the protocol's limit
_MIB = 1024 * 1024
PAGE_KIB = resource.getpagesize() // 1024
# ru_maxrss just after the reset may exceed the resident size by what the child allocated in
# between (a few pages); more than this means a peak kept from an exited thread.
STALE_SLACK_KIB = 256


@attrs.frozen(kw_only=True)
class Usage:
    """An attempt's figures; None where they could not be measured."""

    cpu_s: float | None = None
    peak_rss_bytes: int | None = None
    wall_s: float | None = None


def describe(cpu_s: float | None, peak_rss_bytes: int | None, wall_s: float | None) -> str | None:
    """``cpu 1.02 s, peak RSS 312.4 MiB, wall 1.50 s``; None if there are no figures at all."""
    parts = []
    if cpu_s is not None:
        parts.append(f"cpu {cpu_s:.2f} s")
    if peak_rss_bytes is not None:
        parts.append(f"peak RSS {peak_rss_bytes / _MIB:.1f} MiB")
    if wall_s is not None:
        parts.append(f"wall {wall_s:.2f} s")
    return ", ".join(parts) or None


# ------------------------------------------------------------------ the child's side


def cpu_total_s() -> float:
    """This process's CPU so far, user + system, its waited-for descendants included."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


def read_hwm_bytes(status: bytes) -> int | None:
    """``VmHWM`` (peak RSS, in kB) from the text of a ``/proc/PID/status``, in bytes."""
    start = status.find(b"VmHWM:")
    if start < 0:
        return None
    end = status.find(b"\n", start)
    fields = status[start + 6 : end if end >= 0 else len(status)].split()
    try:
        return int(fields[0]) * 1024
    except (IndexError, ValueError):
        return None


@attrs.frozen(kw_only=True)
class Measured:
    """What the child reports at an attempt's end."""

    cpu_s: float
    peak_rss_bytes: int | None
    cpu_total_s: float


class AttemptMeter:
    """The child's measure of each attempt: :meth:`start` before ``handle()``, :meth:`finish` after.

    The peak: :meth:`start` resets the child's high-water mark (``clear_refs``),
    and ``getrusage``'s ``ru_maxrss`` then reads it (a system call, ~1 us, where
    generating ``/proc/self/status`` costs ~10 us: this runs for every task).
    ``ru_maxrss`` is the larger of the high-water mark and a peak the kernel may
    keep from threads that exited, which no reset clears; so :meth:`start` checks
    it against the resident size (``/proc/self/statm``, cheap). When it is larger
    (stale) and the attempt did not go past it, the attempt's own peak is read
    from ``VmHWM`` in ``/proc/self/status`` instead.

    Opened before the child drops to ``--child-user``: a process that changed
    its uid is not dumpable, so its ``/proc/self`` files belong to root and
    ``clear_refs`` can no longer be opened for writing. The kernel checks the
    permission at open only, so the descriptor opened before the drop keeps
    working. Where ``clear_refs`` cannot be used (not Linux, an old kernel) the
    peak is not reported: the high-water mark would be the child's lifetime's,
    which is not this attempt's.
    """

    def __init__(self, clear_refs: int | None, status: int | None, statm: int | None) -> None:
        self._clear_refs = clear_refs
        self._status = status
        self._statm = statm
        self._cpu_start = 0.0
        self._own_peak_start = 0
        self._reaped_peak_start = 0
        self._reset = False
        self._stale = False

    @classmethod
    def open(cls, proc: str = "/proc/self") -> AttemptMeter:
        """Open this process's ``clear_refs``, ``status`` and ``statm`` (None if unavailable)."""
        fds: list[int | None] = []
        for name, flags in (
            ("clear_refs", os.O_WRONLY),
            ("status", os.O_RDONLY),
            ("statm", os.O_RDONLY),
        ):
            try:
                fds.append(os.open(f"{proc}/{name}", flags | os.O_CLOEXEC))
            except OSError:
                fds.append(None)
        return cls(*fds)

    def start(self) -> float:
        """Reset the peak and take the baselines; returns the CPU total the attempt starts at."""
        self._reset = False
        if self._clear_refs is not None:
            with contextlib.suppress(OSError):
                self._reset = os.write(self._clear_refs, CLEAR_REFS_HIWATER) == 1
        own = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._cpu_start = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
        self._own_peak_start = own.ru_maxrss
        self._reaped_peak_start = reaped.ru_maxrss
        if self._reset:
            resident = self._resident_kib()
            self._stale = resident is None or own.ru_maxrss > resident + STALE_SLACK_KIB
        return self._cpu_start

    def finish(self) -> Measured:
        own = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
        return Measured(
            cpu_s=max(0.0, total - self._cpu_start),
            peak_rss_bytes=self._peak_bytes(own.ru_maxrss, reaped.ru_maxrss),
            cpu_total_s=total,
        )

    def _peak_bytes(self, own_kib: int, reaped_kib: int) -> int | None:
        if not self._reset:
            return None
        if own_kib > self._own_peak_start or not self._stale:
            peak: int | None = own_kib * 1024  # a new maximum is the reset mark's own
        else:
            peak = self._hwm_bytes()
        if peak is None:
            return None
        # RUSAGE_CHILDREN's peak is the largest of every process ever reaped, and cannot be
        # reset: only a new maximum is surely this attempt's.
        if reaped_kib > self._reaped_peak_start:
            return max(peak, reaped_kib * 1024)
        return peak

    def _resident_kib(self) -> int | None:
        if self._statm is None:
            return None
        try:
            return int(os.pread(self._statm, 256, 0).split()[1]) * PAGE_KIB
        except (OSError, IndexError, ValueError):
            return None

    def _hwm_bytes(self) -> int | None:
        if self._status is None:
            return None
        try:
            return read_hwm_bytes(os.pread(self._status, 16384, 0))
        except OSError:
            return None


# ------------------------------------------------------------------ the parent's side


def since(total_s: float | None, start_s: float | None) -> float | None:
    """CPU spent since ``start_s`` (a child's total when its attempt began); None if unknown."""
    if total_s is None or start_s is None:
        return None
    return max(0.0, total_s - start_s)


def exit_usage(cpu_total: float | None, peak_rss_bytes: int, start_s: float | None) -> Usage:
    """A dead child's attempt, from its ``wait4`` usage.

    ``wait4`` counts the child and its waited-for descendants, as the child's
    own measure does, and its peak is the child's high-water mark since the
    reset at the attempt's start (the kernel takes it from the same counter).
    """
    return Usage(cpu_s=since(cpu_total, start_s), peak_rss_bytes=peak_rss_bytes)


def measure_live(
    pid: int,
    start_s: float | None,
    *,
    descendants: Sequence[psutil.Process] | None = None,
    proc: str = "/proc",
) -> Usage:
    """A live child's attempt, read just before it is killed (a few /proc reads, on kills only).

    CPU: the child's total (with its waited-for descendants) since ``start_s``,
    plus all CPU of the descendants still running. Peak: the largest
    ``VmHWM`` among the child and those descendants. ``descendants``: the
    caller's listing, when it has one (the kill needs the same list, and
    listing scans the whole process table); else they are listed here.
    """
    import psutil

    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        if descendants is None:
            descendants = process.children(recursive=True)
    except (psutil.Error, OSError):
        return Usage()
    total = times.user + times.system + times.children_user + times.children_system
    cpu = since(total, start_s)
    peaks = [_hwm_of(pid, proc)]
    for descendant in descendants:
        with contextlib.suppress(psutil.Error, OSError):
            more = descendant.cpu_times()
            if cpu is not None:
                cpu += more.user + more.system + more.children_user + more.children_system
            peaks.append(_hwm_of(descendant.pid, proc))
    known = [peak for peak in peaks if peak is not None]
    return Usage(cpu_s=cpu, peak_rss_bytes=max(known) if known else None)


def _hwm_of(pid: int, proc: str) -> int | None:
    try:
        with open(f"{proc}/{pid}/status", "rb") as status:
            return read_hwm_bytes(status.read())
    except OSError:
        return None
