"""Prometheus metrics aggregated across the parent and every child (multiprocess mode).

Bounded files: prometheus-client writes one set of value files per process
id, so a supervisor that recycles children (``--max-tasks-per-child 1``)
would grow the directory without bound (prometheus-client issues 204, 367,
443). Here every process names its files after its *worker slot* instead
(``counter_slot-3.db``, ``counter_parent.db``) by installing
``MultiProcessValue`` with a fixed identifier before any metric exists. A
child that replaces another in the same slot reopens the same files and
continues their counts, so counters stay exact and the directory holds at
most (slots + 1) files per metric kind, whatever the churn. Only one process
uses a slot at a time: a slot's new child is spawned after the old one was
reaped. When a child exits the parent calls ``mark_process_dead`` for its
slot, which drops its live gauges.

Import order matters: ``prometheus_client`` reads ``PROMETHEUS_MULTIPROC_DIR``
when it is first imported, so :func:`prepare_directory` runs before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Container, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from supervisor.privileges import ChildUser

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PARENT_ID = "parent"
DURATION_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)
# An attempt's CPU: from trivial (a millisecond) to hours.
CPU_BUCKETS = (0.001, 0.005, *DURATION_BUCKETS)
# An attempt's peak RSS: 1 MiB to 16 GiB in powers of two (an interpreter alone is ~10-30 MiB).
RSS_BUCKETS = tuple(float(2**power * 1024 * 1024) for power in range(15))
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
UNKNOWN_TYPE = "unknown"


def slot_id(slot: int) -> str:
    return f"slot-{slot}"


@attrs.frozen(kw_only=True)
class MetricsDirectory:
    path: Path
    owned: bool  # created by us, so removed on exit

    def cleanup(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def prepare_directory(environ: dict[str, str] | Any = os.environ) -> MetricsDirectory:
    """Use the operator's ``PROMETHEUS_MULTIPROC_DIR`` or a private one; wipe stale files."""
    given = environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        directory = MetricsDirectory(path=path, owned=False)
    else:
        directory = MetricsDirectory(
            path=Path(tempfile.mkdtemp(prefix="supervisor-metrics-")), owned=True
        )
    environ[MULTIPROC_ENV] = str(directory.path)
    return directory


def children_directory(runtime_dir: Path, user: ChildUser) -> Path:
    """A folder of the ``--child-user``'s own for the children's value files; the parent's stay
    where they are.

    The children cannot write into the parent's folder: had they a shared one, a
    handler could create a file (or a symlink) under a name the parent opens
    later, and the parent, root, would write its values through it. Here they
    own their folder and can put anything in it; the scrape reads it as it
    reads any value file (regular files only: symlinks and FIFOs are skipped,
    and a file that does not parse is left out).
    """
    path = runtime_dir / "metrics"
    path.mkdir(mode=0o700)
    os.chown(path, user.uid, user.gid)
    return path


def bind_process_files(identifier: str) -> None:
    """Name this process's value files after ``identifier`` (a slot), not its pid.

    Must run before any metric object is created in this process.
    """
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue(lambda: identifier)  # type: ignore[no-untyped-call]


def mark_slot_dead(directory: Path, slot: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(slot_id(slot), str(directory))  # type: ignore[no-untyped-call]


class Metrics:
    """The supervisor's own metrics. Labels for ``type`` are limited to handled types."""

    def __init__(
        self,
        handled_types: Callable[[], Container[str]],
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``registry``: the process-wide one unless given (a test makes its own per loop)."""
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        self._handled_types = handled_types
        to = registry if registry is not None else REGISTRY
        self.claimed = Counter(
            "tasks_claimed",
            "Attempts claimed and started by this supervisor.",
            ["type"],
            registry=to,
        )
        self.processed = Counter(
            "tasks_processed",
            "Attempts finished, by outcome: completed, retried, error, panic, timeout, "
            "expired, lost.",
            ["type", "outcome"],
            registry=to,
        )
        self.duration = Histogram(
            "task_duration_seconds",
            "Wall-clock time of an attempt.",
            ["type"],
            buckets=DURATION_BUCKETS,
            registry=to,
        )
        self.cpu = Histogram(
            "task_cpu_seconds",
            "CPU time (user + system) of an attempt, its waited-for subprocesses included.",
            ["type"],
            buckets=CPU_BUCKETS,
            registry=to,
        )
        self.peak_rss = Histogram(
            "task_peak_rss_bytes",
            "Peak resident memory of an attempt: its largest single process.",
            ["type"],
            buckets=RSS_BUCKETS,
            registry=to,
        )
        self.in_flight = Gauge(
            "tasks_in_flight",
            "Attempts running now.",
            multiprocess_mode="livesum",
            registry=to,
        )
        self.restarts = Counter(
            "supervisor_child_restarts",
            "Children replaced, by reason.",
            ["reason"],
            registry=to,
        )
        self.db_errors = Counter("supervisor_db_errors", "Failed database operations.", registry=to)
        self.claim_seconds = Histogram(
            "supervisor_claim_seconds",
            "Latency of one claim transaction.",
            buckets=CLAIM_BUCKETS,
            registry=to,
        )
        self.workers = Gauge(
            "supervisor_workers",
            "Worker slots configured.",
            multiprocess_mode="livesum",
            registry=to,
        )
        self.busy = Gauge(
            "supervisor_workers_busy",
            "Worker slots running a task.",
            multiprocess_mode="livesum",
            registry=to,
        )
        self.child_rss = Gauge(
            "supervisor_child_rss_bytes",
            "Resident memory of each child.",
            ["slot"],
            multiprocess_mode="livesum",
            registry=to,
        )
        self.queue_depth = Gauge(
            "supervisor_queue_depth",
            "Live tasks in the table by type and status.",
            ["type", "status"],
            multiprocess_mode="livesum",
            registry=to,
        )
        self.paused = Gauge(
            "supervisor_type_paused",
            "1 while an operator has paused claims of this handled type, else 0.",
            ["type"],
            multiprocess_mode="livemax",
            registry=to,
        )
        self._depth_labels: set[tuple[str, str]] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._rss_slots: set[str] = set()

    def type_label(self, task_type: str) -> str:
        """A producer must not be able to create time series: unknown types share one label."""
        return task_type if task_type in self._handled_types() else UNKNOWN_TYPE

    def observe_outcome(
        self, task_type: str, outcome: str, duration_s: float | None, count: int = 1
    ) -> None:
        label = self.type_label(task_type)
        self._child(self.processed, label, outcome).inc(count)
        if duration_s is not None:
            self._child(self.duration, label).observe(duration_s)

    def observe_usage(
        self, task_type: str, cpu_s: float | None, peak_rss_bytes: int | None
    ) -> None:
        """An attempt's figures (see :mod:`supervisor.usage`); the ones not measured are skipped."""
        label = self.type_label(task_type)
        if cpu_s is not None:
            self._child(self.cpu, label).observe(cpu_s)
        if peak_rss_bytes is not None:
            self._child(self.peak_rss, label).observe(peak_rss_bytes)

    def observe_claim_transaction(self, seconds: float) -> None:
        self.claim_seconds.observe(seconds)

    def observe_started(self, task_type: str) -> None:
        """A claimed attempt handed to a child (one taken ahead and handed back is not counted)."""
        self._child(self.claimed, self.type_label(task_type)).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: it sits on the per-task path."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def set_queue_depth(self, counts: Iterable[tuple[str, str, int]]) -> None:
        totals: dict[tuple[str, str], int] = {}
        for task_type, status, count in counts:
            key = (self.type_label(task_type), status)
            totals[key] = totals.get(key, 0) + count
        for key in self._depth_labels - set(totals):
            totals[key] = 0
        for (label, status), count in totals.items():
            self.queue_depth.labels(type=label, status=status).set(count)
        self._depth_labels = set(totals)

    def set_paused(self, paused: Container[str], handled: Iterable[str]) -> None:
        """One series per handled type (other types would let a producer create series)."""
        for task_type in handled:
            self.paused.labels(type=task_type).set(1 if task_type in paused else 0)

    def set_child_rss(self, rss_by_slot: dict[int, int]) -> None:
        current = {str(slot): rss for slot, rss in rss_by_slot.items()}
        for gone in self._rss_slots - set(current):
            # Multiprocess files cannot forget a series, so a vanished slot reads 0.
            current[gone] = 0
        for slot, rss in current.items():
            self.child_rss.labels(slot=slot).set(rss)
        self._rss_slots = {slot for slot, rss in current.items() if rss}
