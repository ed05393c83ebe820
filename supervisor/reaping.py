"""Turn a child's wait status into a frozen record: the one place that tells a panic from an exit.

``os.wait4`` gives the child's own resource usage (with its waited-for
descendants'), so a panic report can say how much memory the child had reached
when it died, and the attempt it died in gets its CPU and peak figures.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

import attrs

PR_SET_CHILD_SUBREAPER = 36


@attrs.frozen(kw_only=True)
class ExitStatus:
    """How a child ended: an exit code, or the signal that killed it."""

    exit_code: int | None
    signal_name: str | None
    peak_rss_bytes: int
    killed_by_parent: bool
    cpu_s: float | None = None  # user + system over the child's life, its reaped tree included

    @classmethod
    def from_wait(
        cls,
        status: int,
        rusage_maxrss_kib: int,
        *,
        killed_by_parent: bool,
        cpu_s: float | None = None,
    ) -> ExitStatus:
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            return cls(
                exit_code=None,
                signal_name=signal_name(-code),
                peak_rss_bytes=rusage_maxrss_kib * 1024,
                killed_by_parent=killed_by_parent,
                cpu_s=cpu_s,
            )
        return cls(
            exit_code=code,
            signal_name=None,
            peak_rss_bytes=rusage_maxrss_kib * 1024,
            killed_by_parent=killed_by_parent,
            cpu_s=cpu_s,
        )

    @property
    def clean(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        """What an operator needs in ``last_error`` to tell a segfault from an OOM kill."""
        rss = f"peak RSS {self.peak_rss_bytes / (1024 * 1024):.1f} MiB"
        if self.signal_name is None:
            return f"child process exited with code {self.exit_code} ({rss})"
        text = f"child process was killed by {self.signal_name} ({rss})"
        if self.signal_name == "SIGKILL" and not self.killed_by_parent:
            text += "; the supervisor did not send it: possibly out of memory (OOM killer)"
        return text


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def reap(pid: int) -> tuple[int, int, float] | None:
    """Collect a finished child without blocking: ``(wait status, peak RSS KiB, CPU s)`` or None."""
    try:
        waited, status, usage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if waited == 0:
        return None
    return status, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def become_subreaper() -> None:
    """Orphans of this process's descendants re-parent to it instead of init (Linux).

    A child does this so that whatever a handler starts stays in its tree and
    dies with it; the parent does it so that what survives a dead child (a
    process in a session of its own) is re-parented to the parent, which then
    kills it (:func:`kill_orphans`).
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def kill_orphans(known: set[int]) -> int:
    """SIGKILL and reap this process's children that are not ``known``: leftovers of dead children.

    Only pids we do not otherwise wait for are reaped here, so exit statuses of
    real children are never stolen.
    """
    import psutil

    killed = 0
    pids = child_pids()
    if pids is None:
        try:
            pids = {proc.pid for proc in psutil.Process().children()}
        except psutil.Error:
            return 0
    for pid in pids - known:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()  # psutil refuses if the pid now names another process
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # not yet dead: reaped on a later call
        killed += 1
    return killed


def child_pids() -> set[int] | None:
    """This process's children, read from ``/proc/self/task/*/children``; None if unavailable.

    The parent looks for orphans after every child exit: this reads one small
    file per thread, where listing children with psutil reads the stat file of
    every process on the host (milliseconds, on the per-task path when every
    task gets a fresh child). Needs a kernel with CONFIG_PROC_CHILDREN.
    """
    pids: set[int] = set()
    found = False
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as listing:
                pids.update(int(pid) for pid in listing.read().split())
        except OSError:
            continue  # a thread that just ended, or no such file on this kernel
        found = True
    return pids if found else None
