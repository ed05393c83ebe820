"""The memory watch: the RSS of each busy child whose handler sets ``MAX_RSS``, sampled often.

A handler's ``MAX_RSS`` is a hard limit for its task type: a child whose
process tree goes over it is killed and the task fails ``memory``. The kernel
could enforce that by itself (cgroup v2 ``memory.max`` on a cgroup per child),
but only where the memory controller is on the unified hierarchy and the
supervisor may create cgroups. Where this project is built and tested the
memory controller is on cgroup v1 (``/sys/fs/cgroup/unified/cgroup.controllers``
lists only ``hugetlb``), so that path could not be proven, and it is not
written. The watch works on any Linux with ``/proc``.

How it reads a tree, cheaply:

* the child's own ``/proc/<pid>/statm`` (resident pages times the page size),
  every :data:`SAMPLE_INTERVAL_S`: one small read, microseconds;
* plus the same for each of its descendants (what the handler started). They
  are found by one scan of the process table (psutil reads every process's
  parent pid: about 2 ms for a hundred processes), so at most every
  :data:`TREE_INTERVAL_S`, for all watched children at once, and the pids are
  kept between scans. (``/proc/<pid>/task/<tid>/children`` would be cheaper,
  but needs a kernel built with ``CONFIG_PROC_CHILDREN``; the kernel this was
  built on has none.) A process started since the last scan is counted from
  the next one, within :data:`TREE_INTERVAL_S`; a listed process that exited
  reads as nothing (were its pid reused within that time, the newcomer would
  be counted until the next scan: rare, and only ever towards a kill).

The sum counts each process's RSS in full: a page shared by two processes of
the tree (after a fork, copy-on-write; a shared library) counts twice. The
limit is therefore conservative for trees of several processes; for the usual
one process it is exactly that process's RSS.

How quickly it kills: a sample every 25 ms, then (see
:meth:`supervisor.attempts.Attempts.enforce_memory`) the stack is asked for and
the tree killed :data:`MEMORY_STACK_LEAD_S` later. A child allocating R bytes a
second therefore overshoots by at most about R x (sample interval + lead + the
loop's latency), plus the last allocation that crossed the limit: at 100 MiB/s,
4.5 MiB plus latency. Measured (``scripts/memory_overshoot.py``, the real
supervisor): at most +4.6 % of a 100 MiB limit at a steady 100 MiB/s, +6.3 %
when the allocations come in 10 MiB steps.

Nothing runs while no watched task does: :meth:`MemoryWatch.next_due` is None
and the loop's wait is not shortened.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection

import attrs
import psutil

SAMPLE_INTERVAL_S = 0.025  # a watched tree's RSS is read this often
TREE_INTERVAL_S = 0.5  # and its descendants listed this often (psutil reads all of /proc)
# From the breach to the kill: long enough for faulthandler to write the stack (it does so
# in the signal handler itself), short enough to keep what is allocated meanwhile small.
MEMORY_STACK_LEAD_S = 0.02
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024

RssReader = Callable[[int], int | None]
# The descendants of each of the given pids, from one scan of the process table.
DescendantLister = Callable[[Collection[int]], dict[int, tuple[int, ...]] | None]


def statm_rss(pid: int) -> int | None:
    """The resident set size of ``pid`` in bytes, from ``/proc/<pid>/statm``; None if gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def descendants(roots: Collection[int]) -> dict[int, tuple[int, ...]] | None:
    """Every process below each of ``roots`` (children, their children...), from one scan.

    Processes that vanish during the scan are skipped. None if the table cannot
    be read at all (out of fds): the descendants known from the last scan are
    then kept (read again at every sample) until the next scan succeeds.
    """
    children: dict[int, list[int]] = {}
    try:
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info["ppid"]
            if isinstance(ppid, int):
                children.setdefault(ppid, []).append(proc.pid)
    except (psutil.Error, OSError):
        return None
    found = {}
    for root in roots:
        below: dict[int, None] = {}  # ordered, and a pid reused mid-scan cannot loop us
        todo = list(children.get(root, ()))
        while todo:
            pid = todo.pop()
            if pid not in below and pid != root:
                below[pid] = None
                todo.extend(children.get(pid, ()))
        found[root] = tuple(below)
    return found


@attrs.frozen(kw_only=True)
class Breach:
    """A watched tree was seen over its limit."""

    pid: int
    rss_bytes: int
    limit_bytes: int


@attrs.define
class _Watched:
    limit_bytes: int
    next_at: float  # the next sample
    descendants: tuple[int, ...] = ()  # as the last scan found them
    peak_bytes: int = 0
    breached: bool = False  # reported once; no more samples until the child is killed


class MemoryWatch:
    """Samples the trees of the children it is told to watch; says which went over their limit.

    The watch decides nothing about tasks: :meth:`sample` returns the
    breaches and the attempts room kills. ``read_rss`` and
    ``list_descendants`` are replaceable so the decisions are tested with
    neither real processes nor sleeps.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        read_rss: RssReader = statm_rss,
        list_descendants: DescendantLister = descendants,
        interval_s: float = SAMPLE_INTERVAL_S,
        tree_interval_s: float = TREE_INTERVAL_S,
    ) -> None:
        self.read_rss = read_rss
        self.list_descendants = list_descendants
        self._clock = clock
        self._interval_s = interval_s
        self._tree_interval_s = tree_interval_s
        self._watched: dict[int, _Watched] = {}
        self._scan_at = -math.inf  # the next scan for descendants, shared by all watched trees

    def start(self, pid: int, limit_bytes: int) -> None:
        """Watch ``pid``'s tree from now on (its task was just handed over)."""
        self._watched[pid] = _Watched(limit_bytes, next_at=self._clock() + self._interval_s)

    def stop(self, pid: int) -> None:
        """The attempt ended, however: stop watching (nothing if it was not watched)."""
        self._watched.pop(pid, None)

    def watching(self) -> int:
        return len(self._watched)

    def next_due(self) -> float | None:
        """The next sample; None while nothing is watched (the loop then never wakes for it)."""
        return min((w.next_at for w in self._watched.values() if not w.breached), default=None)

    def sample(self, now: float) -> list[Breach]:
        """Read each tree that is due; the ones over their limit, each reported once."""
        due = [
            (pid, watched)
            for pid, watched in self._watched.items()
            if not watched.breached and now >= watched.next_at
        ]
        if due and now >= self._scan_at:
            # Every watched tree at once, due or not: one scan costs the same for all.
            self._scan_at = now + self._tree_interval_s
            found = self.list_descendants(list(self._watched))
            if found is not None:  # a failed scan keeps what the last one found
                for pid, watched in self._watched.items():
                    watched.descendants = found.get(pid, ())
        breaches = []
        for pid, watched in due:
            watched.next_at = now + self._interval_s
            rss = self._tree_rss(watched, pid)
            if rss is None:
                continue  # the child is gone: its exit settles the attempt
            watched.peak_bytes = max(watched.peak_bytes, rss)
            if rss > watched.limit_bytes:
                watched.breached = True
                breaches.append(Breach(pid=pid, rss_bytes=rss, limit_bytes=watched.limit_bytes))
        return breaches

    def last_reading(self, pid: int) -> tuple[int, int] | None:
        """``(peak, limit)`` in bytes, the tree read once more first: called just before
        the kill, so the peak includes what was allocated since the breach."""
        watched = self._watched.get(pid)
        if watched is None:
            return None
        rss = self._tree_rss(watched, pid)
        if rss is not None:
            watched.peak_bytes = max(watched.peak_bytes, rss)
        return watched.peak_bytes, watched.limit_bytes

    def _tree_rss(self, watched: _Watched, pid: int) -> int | None:
        own = self.read_rss(pid)
        if own is None:
            return None
        found = (self.read_rss(d) for d in watched.descendants)
        return own + sum(rss for rss in found if rss is not None)
