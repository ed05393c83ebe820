"""The pool of children: how many there are, which slot each fills, when one is started or retired.

Policy only; the process work is :class:`~supervisor.workers.Child`'s. Each
child fills a numbered *slot* (its metrics files are named after it, which
keeps their number bounded). A slot whose child exited is refilled at once,
unless the child died before it was ever ready: then the slot waits a
doubling delay, so a child that cannot start is not restarted in a tight
loop. Scaling (TTIN/TTOU), reload (HUP) and drain retire children gently: a
busy child finishes its attempt first.
"""

from __future__ import annotations

import contextlib
import selectors
import time
from collections.abc import Callable

from loguru import logger

from supervisor.lifecycle import doubling_delay, should_recycle
from supervisor.memory_watch import MIB, RssReader, statm_rss
from supervisor.reaping import ExitStatus
from supervisor.workers import Child, ChildState

SPAWN_RETRY_MIN_S, SPAWN_RETRY_MAX_S = 0.5, 30.0
# How long a child told to ``stop`` may take to exit before its tree is killed. A handler
# that leaves a non-daemon thread keeps its child alive after ``stop``: without this the
# slot was lost for good and a drain waited out its whole timeout.
STOP_GRACE_S = 5.0
MAX_CHILD_RSS_MESSAGE = "child over --max-child-rss after its task; recycling it"
HEAVY_CHILD_MESSAGE = (
    "child already holds half of this task's MAX_RSS (left by earlier tasks); replacing it first"
)

Spawner = Callable[[int], Child]


def log_rss(message: str, child: Child, rss: int, limit_bytes: int) -> None:
    logger.info(
        message,
        pid=child.pid,
        slot=child.slot,
        rss_mib=round(rss / MIB, 1),
        limit_mib=round(limit_bytes / MIB, 1),
    )


class Pool:
    def __init__(
        self,
        *,
        spawner: Spawner,
        selector: selectors.BaseSelector,
        workers: int,
        max_tasks_per_child: int,
        max_child_rss_bytes: int = 0,
        on_restart: Callable[[str], None],
        on_slot_dead: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spawner = spawner
        self._selector = selector
        self._max_tasks_per_child = max_tasks_per_child
        self._max_child_rss_bytes = max_child_rss_bytes
        self.read_rss: RssReader = statm_rss  # replaceable: unit tests have no real children
        self._on_restart = on_restart
        self._on_slot_dead = on_slot_dead
        self._clock = clock
        self.target = workers
        self.children: dict[int, Child] = {}
        self.draining = False
        self._spawn_at: dict[int, float] = {}
        self._spawn_failures: dict[int, int] = {}
        self._writing: set[int] = set()  # slots whose socket is watched for writability
        self._stop_by: dict[Child, float] = {}  # children told to stop: when they are killed

    # ------------------------------------------------------------ views

    def idle(self) -> list[Child]:
        return [c for c in self.children.values() if c.state is ChildState.IDLE]

    def busy(self) -> list[Child]:
        return [c for c in self.children.values() if c.state is ChildState.BUSY]

    def busy_and_staying(self) -> int:
        """Busy children that will take another task after this one (not retiring or recycled)."""
        return sum(
            1
            for c in self.busy()
            if not c.retire_when_idle
            and c.slot < self.target
            and not should_recycle(c.tasks_done + 1, self._max_tasks_per_child)
        )

    def pids(self) -> set[int]:
        return {c.pid for c in self.children.values()}

    def next_due(self) -> float | None:
        return min([*self._spawn_at.values(), *self._stop_by.values()], default=None)

    # ------------------------------------------------------------ starting

    def start(self) -> None:
        for slot in range(self.target):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._spawn_at.pop(slot, None)
        try:
            child = self._spawner(slot)
        except OSError as exc:
            logger.error("cannot start a child", slot=slot, error=str(exc))
            self._retry_later(slot)
            return
        self.children[slot] = child
        self._selector.register(child.sock, selectors.EVENT_READ, ("socket", child))
        self._selector.register(child.pidfd, selectors.EVENT_READ, ("exit", child))
        if child.output is not None:
            self._selector.register(child.output.fd, selectors.EVENT_READ, ("output", child))

    def _retry_later(self, slot: int) -> None:
        failures = self._spawn_failures.get(slot, 0) + 1
        self._spawn_failures[slot] = failures
        delay = doubling_delay(failures, minimum=SPAWN_RETRY_MIN_S, maximum=SPAWN_RETRY_MAX_S)
        logger.warning("child failed at start-up; retrying later", slot=slot, delay_s=delay)
        self._spawn_at[slot] = self._clock() + delay

    def _retire(self, child: Child, reason: str) -> None:
        """Retire ``child``; once it is told to stop, it has :data:`STOP_GRACE_S` to exit."""
        child.retire(reason)
        if child.state is ChildState.STOPPING and child not in self._stop_by:
            self._stop_by[child] = self._clock() + STOP_GRACE_S

    def kill_overdue(self, now: float) -> None:
        """Kill the tree of each child that was told to stop and has not exited in time.

        Its exit then comes through the pidfd like any other, which refills the slot.
        """
        for child, when in list(self._stop_by.items()):
            if when <= now:
                del self._stop_by[child]
                logger.warning(
                    "child did not exit after stop; killing its tree",
                    pid=child.pid,
                    slot=child.slot,
                    grace_s=STOP_GRACE_S,
                )
                child.kill_tree()

    def respawn_due(self, now: float) -> None:
        for slot, when in list(self._spawn_at.items()):
            if when <= now and slot not in self.children:
                self._spawn(slot)

    def on_ready(self, child: Child) -> None:
        self._spawn_failures.pop(child.slot, None)
        if child.ready() and (self.draining or child.slot >= self.target):
            self._retire(child, child.exit_reason)

    # ------------------------------------------------------------ after a task, after an exit

    def after_task(self, child: Child) -> None:
        """The child is idle again: keep it, or let it go (recycling, reload, scaling, drain)."""
        if should_recycle(child.tasks_done, self._max_tasks_per_child):
            self._retire(child, "recycled")
        elif self.draining or child.retire_when_idle or child.slot >= self.target:
            self._retire(child, child.exit_reason)
        elif self._over_rss(child):  # last: a child that goes anyway is not read
            self._retire(child, "max_rss")

    def too_heavy_for(self, child: Child, max_rss_bytes: int) -> bool:
        """Whether an idle child already holds half of a task's ``MAX_RSS``: then replace it.

        A child is reused across tasks and types, and CPython seldom gives memory
        back: a heap another type grew would count against this task's limit,
        and a ``memory`` failure is never retried. So a task with ``MAX_RSS``
        starts only in a child that holds less than half of it (a fresh child
        always qualifies: it is not read). One ``statm`` read, only for such tasks.
        """
        if child.tasks_done == 0:
            return False
        rss = self.read_rss(child.pid)
        if rss is None or 2 * rss < max_rss_bytes:
            return False
        log_rss(HEAVY_CHILD_MESSAGE, child, rss, max_rss_bytes)
        self._retire(child, "max_rss")
        return True

    def _over_rss(self, child: Child) -> bool:
        """``--max-child-rss``: the child's own RSS, read (one ``statm``) only when it is set.

        Not a failure: the task it ran is done; the child is replaced before its next one.
        """
        if not self._max_child_rss_bytes:
            return False
        rss = self.read_rss(child.pid)
        if rss is None or rss <= self._max_child_rss_bytes:
            return False
        log_rss(MAX_CHILD_RSS_MESSAGE, child, rss, self._max_child_rss_bytes)
        return True

    def on_exit(self, child: Child, status: ExitStatus) -> None:
        """The child is reaped: forget it and refill its slot if the slot is still wanted."""
        if child.state in (ChildState.IDLE, ChildState.STARTING):
            logger.warning("idle child died; replacing it", pid=child.pid, exit=status.describe())
        self.forget(child)
        self._on_slot_dead(child.slot)
        if child.slot >= self.target or self.draining:
            return
        failed_start = not child.saw_ready and not child.killed_by_parent
        self._on_restart("startup_failed" if failed_start else child.exit_reason)
        if failed_start:
            self._retry_later(child.slot)
        else:
            self._spawn_failures.pop(child.slot, None)
            self._spawn(child.slot)

    def forget(self, child: Child) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(child.sock)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(child.pidfd)
        self.close_output(child)
        self._stop_by.pop(child, None)
        if self.children.get(child.slot) is child:
            del self.children[child.slot]
            self._writing.discard(child.slot)
        child.close()

    def watch_writes(self) -> None:
        """Children with bytes waiting to go out are watched for writability, the rest not."""
        for child in self.children.values():
            wanted = bool(child.unsent)
            if wanted == (child.slot in self._writing):
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
            try:
                self._selector.modify(child.sock, events, ("socket", child))
            except (KeyError, ValueError):  # it closed its end: nothing will be read any more
                child.unsent.clear()
                self._writing.discard(child.slot)
                continue
            if wanted:
                self._writing.add(child.slot)
            else:
                self._writing.discard(child.slot)

    def close_output(self, child: Child) -> None:
        """Stop watching the child's output pipe (at its end of file, or when it is forgotten).

        Its read end is closed with the child (:meth:`Child.close`): a grandchild that
        still holds the write end then gets EPIPE, and never blocks the parent.
        """
        if child.output is not None and child.output.fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.output.fd)

    def close_socket(self, child: Child) -> None:
        """The child closed its end: stop watching it (its exit comes through the pidfd)."""
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(child.sock)

    # ------------------------------------------------------------ operator actions

    def drain(self) -> None:
        """No new work: idle and starting children stop now, busy ones after their attempt."""
        self.draining = True
        self._spawn_at.clear()
        for child in list(self.children.values()):
            if child.state in (ChildState.IDLE, ChildState.STARTING):
                self._retire(child, child.exit_reason)

    def reload(self) -> None:
        """Replace every child, each as soon as it is idle (running tasks finish first)."""
        for child in list(self.children.values()):
            self._retire(child, "reload")

    def grow(self) -> None:
        self.target += 1
        slot = self.target - 1
        current = self.children.get(slot)
        if current is None:
            self._spawn(slot)
        else:
            current.retire_when_idle = False

    def shrink(self) -> bool:
        if self.target <= 1:
            return False
        self.target -= 1
        self._spawn_at.pop(self.target, None)
        child = self.children.get(self.target)
        if child is not None:
            self._retire(child, child.exit_reason)
        return True

    def kill_all(self) -> None:
        for child in list(self.children.values()):
            child.kill_tree()
            self.forget(child)
