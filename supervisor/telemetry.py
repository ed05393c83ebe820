"""Telemetry: what the parent tells operators, as metrics and log lines, in one place.

The rooms say what happened (a result was recorded, a claim was lost, the
database failed); this module decides which counters move and which fields a
log line carries. Log lines use keyword fields rather than ``bind()`` on the
per-task path. Task options never appear: a handler's error is logged by
exception type only (its message may quote the options; the whole text is in
the row's ``last_error``).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import TYPE_CHECKING, Any

import psutil
from loguru import logger

from supervisor import metrics
from supervisor.lifecycle import Outcome
from supervisor.link_events import (
    Claimed,
    DbBack,
    DbFailed,
    DepthSampled,
    PausedChanged,
    ScheduleFired,
    Swept,
)
from supervisor.records import Claim
from supervisor.results import PendingResult
from supervisor.usage import Usage

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# The parent logs this when it kills a child at its deadline; the benchmark times kills by it.
DEADLINE_KILL_MESSAGE = "deadline reached; killing the child's tree"
ATTEMPT_TIMEOUT_KILL_MESSAGE = "attempt TIMEOUT reached; killing the child's tree"
MEMORY_KILL_MESSAGE = "over the handler's MAX_RSS; killing the child's tree"
MEMORY_REAPED_MESSAGE = "child killed over MAX_RSS reaped"
MIB = 1024 * 1024


def task_fields(claim: Claim) -> dict[str, Any]:
    return {"task_id": claim.id, "type": claim.type, "attempt": claim.attempt}


class Telemetry:
    def __init__(
        self,
        handled_types: Callable[[], Container[str]],
        owner: str,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.metrics = metrics.Metrics(handled_types, registry=registry)
        self.log = logger.bind(owner=owner)
        self._published: tuple[int, int] | None = None
        self._paused_ours: list[str] = []

    # ------------------------------------------------------------ attempts

    def recorded(self, result: PendingResult, won: bool, *, cancelled: bool = False) -> None:
        claim = result.claim
        outcome = result.decision.outcome
        fields = {**task_fields(claim), "duration_s": round(result.duration_s, 4)}
        if result.refund:
            self.log.info(
                "task put back to queued (attempt refunded)" if won else "refund lost its claim",
                **fields,
                outcome="refunded",
                won=won,
            )
            return
        lost_as = Outcome.CANCELLED if cancelled else Outcome.LOST
        self.metrics.observe_outcome(
            claim.type, outcome.value if won else lost_as.value, result.duration_s
        )
        self.metrics.observe_usage(claim.type, result.cpu_s, result.peak_rss_bytes)
        if not won:
            self.log.warning(
                "result discarded: the task was cancelled by an operator"
                if cancelled
                else "result discarded: the claim was lost (rescued or cancelled elsewhere)",
                **fields,
                outcome=lost_as.value,
                would_have_been=outcome.value,
            )
        elif outcome is Outcome.COMPLETED:
            self.log.info("task completed", **fields, outcome=outcome.value)
        elif outcome is Outcome.RETRIED:
            self.log.warning(
                "task failed; retrying",
                **fields,
                outcome=outcome.value,
                retry_in_s=result.decision.retry_in_s,
                error=result.summary,
            )
        else:
            self.log.error(
                "task failed",
                **fields,
                outcome=outcome.value,
                failure=outcome.value,
                error=result.summary,
            )

    def not_recorded(self, result: PendingResult) -> None:
        self.log.error(
            "result not recorded (database unavailable); the task will be rescued when "
            "its lease expires",
            **task_fields(result.claim),
            would_have_been=result.decision.outcome.value,
        )

    def claim_lost(
        self,
        claim: Claim,
        duration_s: float,
        *,
        cancelled: bool = False,
        usage: Usage | None = None,
    ) -> None:
        """A claim the heartbeat could not renew; an operator's cancel counts ``cancelled``.

        The row is not ours to write, but what the killed attempt used still
        goes to the ``task_cpu_seconds``/``task_peak_rss_bytes`` histograms.
        """
        if usage is not None:
            self.metrics.observe_usage(claim.type, usage.cpu_s, usage.peak_rss_bytes)
        if cancelled:
            self.log.info(
                "task cancelled by an operator; killing the child",
                **task_fields(claim),
                outcome=Outcome.CANCELLED.value,
            )
            self.metrics.observe_outcome(claim.type, Outcome.CANCELLED.value, duration_s)
            return
        self.log.warning(
            "claim lost (lease expired and rescued, or cancelled); killing the child",
            **task_fields(claim),
            outcome=Outcome.LOST.value,
        )
        self.metrics.observe_outcome(claim.type, Outcome.LOST.value, duration_s)

    def deadline_kill(self, claim: Claim, pid: int, *, per_attempt: bool = False) -> None:
        message = ATTEMPT_TIMEOUT_KILL_MESSAGE if per_attempt else DEADLINE_KILL_MESSAGE
        self.log.warning(message, **task_fields(claim), pid=pid)

    def memory_kill(self, claim: Claim, pid: int, peak_bytes: int, limit_bytes: int) -> None:
        self.log.warning(
            MEMORY_KILL_MESSAGE,
            **task_fields(claim),
            pid=pid,
            rss_mib=round(peak_bytes / MIB, 1),
            limit_mib=round(limit_bytes / MIB, 1),
        )

    def memory_killed_reaped(self, pid: int, peak_rss_bytes: int) -> None:
        """The kernel's count of the killed child's peak (wait4's ``ru_maxrss``, the child
        itself only): a figure independent of the watch's own readings."""
        self.log.info(MEMORY_REAPED_MESSAGE, pid=pid, peak_rss_mib=round(peak_rss_bytes / MIB, 1))

    def dispatched(self, claim: Claim, pid: int) -> None:
        self.metrics.observe_started(claim.type)
        self.log.debug("task dispatched", **task_fields(claim), pid=pid)

    # ------------------------------------------------------------ the database link

    def claimed(self, event: Claimed) -> None:
        self.metrics.observe_claim_transaction(event.seconds)

    def swept(self, event: Swept) -> None:
        for task_type, count in event.expired.items():
            self.log.warning(
                "expired queued tasks whose deadline passed before dispatch",
                type=task_type,
                outcome=Outcome.EXPIRED.value,
                count=count,
            )
            self.metrics.observe_outcome(task_type, Outcome.EXPIRED.value, None, count)
        for task_type, count in event.lost.items():
            self.log.warning(
                "failed tasks whose lease ran out on their last attempt",
                type=task_type,
                outcome=Outcome.LOST.value,
                count=count,
            )
            self.metrics.observe_outcome(task_type, Outcome.LOST.value, None, count)
        if event.requeued:
            self.log.warning(
                "rescued tasks whose lease ran out; back to queued", count=event.requeued
            )

    def depth(self, event: DepthSampled) -> None:
        self.metrics.set_queue_depth(event.counts)

    def paused(self, event: PausedChanged, handled: Iterable[str]) -> None:
        """Pauses of our types are logged when seen, so an operator can tell a pause took."""
        ours = sorted(t for t in handled if t in event.paused)
        if ours != self._paused_ours:
            self.log.info("paused types changed; these are not claimed", paused=ours)
            self._paused_ours = ours
        self.metrics.set_paused(event.paused, handled)

    def schedule_fired(self, event: ScheduleFired) -> None:
        self.log.info(
            "schedule fired",
            type=event.type,
            slot=event.slot.strftime("%Y-%m-%dT%H:%M:%SZ"),
            task_id=event.task_id,
        )

    def db_failed(self, event: DbFailed) -> None:
        self.metrics.db_errors.inc()
        self.log.error(
            "database error; holding results and retrying",
            error=event.error,
            retry_in_s=round(event.retry_in_s, 2),
            held=event.held,
        )

    def db_back(self, event: DbBack) -> None:
        self.log.info("database is back", after_failures=event.after_failures)

    # ------------------------------------------------------------ the pool

    def restart(self, reason: str) -> None:
        self.metrics.restarts.labels(reason=reason).inc()

    def publish(self, *, workers: int, busy: int) -> None:
        """Gauges after a turn of the loop that changed them (each is a store into a mmap)."""
        if (workers, busy) == self._published:
            return
        self._published = (workers, busy)
        self.metrics.in_flight.set(busy)
        self.metrics.busy.set(busy)
        self.metrics.workers.set(workers)

    def sample_rss(self, pids_by_slot: Iterable[tuple[int, int]]) -> None:
        rss = {}
        for slot, pid in pids_by_slot:
            try:
                rss[slot] = psutil.Process(pid).memory_info().rss
            except (psutil.Error, OSError):  # gone, or out of fds: sampled next time
                continue
        self.metrics.set_child_rss(rss)
