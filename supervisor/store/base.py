"""The store interface shared by both backends, and the records it returns.

A store method is one short transaction. Writes made on behalf of a running
attempt take a :class:`Claim` and are *fenced*: they match only while the row
is still ``running`` under the same ``claimed_by`` and ``attempts``, and they
return whether they won. A supervisor that lost its claim (lease expired, task
rescued by another) can therefore never overwrite the new owner's state.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import attrs

from supervisor.lifecycle import Failure, Status
from supervisor.policy import HandlerPolicy
from supervisor.records import Claim, Overwritten, SupervisorInfo
from supervisor.usage import Usage

__all__ = [
    "Claim",
    "Enqueued",
    "NewTask",
    "Overwritten",
    "Rescued",
    "StackRequest",
    "StatusCount",
    "Store",
    "SupervisorInfo",
    "TaskControl",
    "TaskFilter",
    "TaskRow",
    "TaskSummary",
    "Transition",
    "TypeInfo",
]


@attrs.frozen(kw_only=True)
class NewTask:
    """What a producer asks for; validated before it reaches a store."""

    type: str
    options: str | None = None
    delay_s: float = 0.0
    budget_s: float = 3600.0
    # None: the handler's MAX_ATTEMPTS / TIMEOUT applies (else 3 attempts, no per-attempt
    # limit). A value given here is explicit and beats the handler's.
    max_attempts: int | None = None
    timeout_s: float | None = None
    concurrency_key: str | None = None
    # At most one live (queued or running) task per (type, unique_key): a duplicate
    # creates nothing, and the enqueue answers with the live task's id.
    unique_key: str | None = None
    priority: int = 0


class Enqueued(int):
    """A task id that says whether the enqueue created the task (``existed`` False) or
    found a live one with the same type and unique key (``existed`` True).

    It is an ``int`` that prints as the id, so callers that only want the id
    use it as before.
    """

    existed: bool

    def __new__(cls, task_id: int, *, existed: bool = False) -> Enqueued:
        made = super().__new__(cls, task_id)
        made.existed = existed
        return made


@attrs.frozen(kw_only=True)
class TaskRow:
    """A whole row, for ``show`` and for tests."""

    id: int
    type: str
    status: Status
    options: str | None = attrs.field(repr=False)
    priority: int
    attempts: int
    max_attempts: int | None
    timeout_s: float | None
    concurrency_key: str | None
    unique_key: str | None
    progress_pct: int
    failure: Failure | None
    last_error: str | None
    claimed_by: str | None
    created_at: datetime
    run_at: datetime
    deadline_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    lease_expires_at: datetime | None
    updated_at: datetime
    # What the last attempt used (None until an attempt has ended, or written by an older version).
    cpu_s: float | None = None
    peak_rss_bytes: int | None = None
    wall_s: float | None = None
    # The last stack taken of the running child (``supervisor stack ID``, a cancel), and when;
    # stack_requested_at: an operator's request not answered yet.
    stack: str | None = attrs.field(default=None, repr=False)
    stack_at: datetime | None = None
    stack_requested_at: datetime | None = None

    @property
    def was_claimed(self) -> bool:
        """Whether a claim has written its effective values into the row (see ``policy``)."""
        return self.started_at is not None or self.attempts > 0


@attrs.frozen(kw_only=True)
class TaskFilter:
    """Which tasks an operator means: the web page's listing and the bulk ``retry``/``cancel``.

    Every field narrows; an empty filter matches every task. ``statuses`` empty
    means any status. ``since``/``until`` (naive UTC, the database clock's zone)
    bound the moment a task *finished*, or for a live task the moment it was
    created: "failed since 14:00" means failed after 14:00, whenever it was
    enqueued. ``error_match`` is a case-sensitive substring of ``last_error``
    (the same on every backend: no LIKE wildcards, no collation surprises).
    """

    type: str | None = None
    statuses: frozenset[Status] = frozenset()
    failure: Failure | None = None
    since: datetime | None = None
    until: datetime | None = None
    error_match: str | None = None

    def matches(self, row: TaskRow) -> bool:
        """The rule in Python, for MemoryStore and for tests to state what SQL must do."""
        moment = row.completed_at or row.created_at
        return (
            (self.type is None or row.type == self.type)
            and (not self.statuses or row.status in self.statuses)
            and (self.failure is None or row.failure is self.failure)
            and (self.since is None or moment >= self.since)
            and (self.until is None or moment < self.until)
            and (
                self.error_match is None
                or (row.last_error is not None and self.error_match in row.last_error)
            )
        )


# How much of last_error a listing carries: enough to recognise an error, never a whole stack.
ERROR_HEAD_CHARS = 300


@attrs.frozen(kw_only=True)
class TaskSummary:
    """One line of a task listing: no ``task_options``, and only the head of ``last_error``.

    A listing may show hundreds of rows every few seconds; the options (up to
    1 MiB, and possibly secret) and whole stacks stay on the one-task page.
    """

    id: int
    type: str
    status: Status
    failure: Failure | None
    attempts: int
    max_attempts: int | None
    progress_pct: int
    claimed_by: str | None
    unique_key: str | None
    error_head: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    deadline_at: datetime


@attrs.frozen(kw_only=True)
class StatusCount:
    """One line of ``status``: how many tasks of a type are in a status.

    ``oldest_age_s`` is the age of the oldest such task by the database clock.
    For ``queued`` it is how long the head of the queue has waited, counted
    from ``run_at`` (a delayed task is not waiting before it is due), and 0
    when no queued task is due yet. It is ``None`` when none of the dates can
    be read (zero dates a permissive MariaDB or a plain INSERT left).

    ``status`` is the raw text for a value outside the lifecycle (the empty
    status a permissive MariaDB stores for an invalid one): such rows are
    still counted, so an operator sees them.
    """

    type: str
    status: Status | str
    count: int
    oldest_age_s: float | None


@attrs.frozen(kw_only=True)
class TypeInfo:
    """What the fleet knows about a task type (the ``task_types`` table).

    ``paused``: an operator paused it; no supervisor claims it until resumed.
    ``policy``: what the handler file declares, as the last supervisor that has
    the file wrote it (``declared_by``); None when no supervisor ever declared
    one, which is how ``status`` knows that no handler exists for a paused type.
    """

    type: str
    paused: bool
    paused_at: datetime | None
    policy: HandlerPolicy | None
    declared_by: str | None
    declared_at: datetime | None
    schedule: str | None = None
    schedule_last_slot: datetime | None = None


@attrs.frozen(kw_only=True)
class StackRequest:
    """What ``supervisor stack ID`` asked: the status found, and if it was running, the moment
    (database clock) the request was written; a stack taken at or after it answers it."""

    before: Status | str | None
    requested_at: datetime | None
    claimed_by: str | None


@attrs.frozen(kw_only=True)
class TaskControl:
    """What operators may have changed on a row a supervisor runs (read once per poll interval).

    The owner compares it with its claim: no longer ``running`` under its name and attempt
    means cancelled or rescued; ``stack_requested_at`` set means a stack is wanted.
    """

    id: int
    status: Status | str
    claimed_by: str | None
    attempts: int
    stack_requested_at: datetime | None


@attrs.frozen(kw_only=True)
class Transition:
    """The result of an operator's cancel or retry: the status found, and whether it applied.

    ``blocked_by``: a retry that did not apply because another live task holds
    the same type and unique key (two would break the key's promise).
    """

    before: Status | None
    applied: bool
    blocked_by: int | None = None


@attrs.frozen(kw_only=True)
class Rescued:
    """What a sweep of expired leases did: put back to ``queued``, or failed as ``lost``.

    ``lost`` counts by task type, so the sweeper can label its metrics.
    """

    requeued: int
    lost: dict[str, int] = attrs.field(factory=dict)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())


class Store(abc.ABC):
    """One interface, two backends (SQLite embedded, MySQL/MariaDB for fleets), and MemoryStore.

    :class:`~supervisor.store.memory.MemoryStore` keeps the same contract in one
    process, for unit tests of the loop.
    """

    @abc.abstractmethod
    def migrate(self) -> None:
        """Create the table and indexes if missing (idempotent)."""

    @abc.abstractmethod
    def enqueue_many(self, tasks: Sequence[NewTask]) -> list[Enqueued]:
        """Insert tasks in one transaction; return their ids in order.

        A task whose (type, unique key) a live task holds already is not
        inserted: its entry is that task's id, marked ``existed``.
        """

    def enqueue(self, task: NewTask) -> Enqueued:
        return self.enqueue_many([task])[0]

    @abc.abstractmethod
    def claim(
        self,
        owner: str,
        types: Iterable[str],
        limit: int,
        lease_s: float,
        *,
        policies: Mapping[str, HandlerPolicy] | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` runnable tasks of ``types`` (priority, then id).

        Runnable: ``queued``, ``run_at`` reached, deadline not passed. The claim
        increments ``attempts``, sets the lease, and returns the remaining budget.

        ``policies`` are the claiming supervisor's handler policies by type (a
        type missing from it has the default policy): they give the effective
        ``max_attempts`` and per-attempt timeout of a row that sets none
        (written into the row by the claim), and the concurrency limits the
        claim must keep, counted across every supervisor on the database.
        """

    @abc.abstractmethod
    def has_claimable(
        self, types: Iterable[str], *, policies: Mapping[str, HandlerPolicy] | None = None
    ) -> bool:
        """Whether a claim would find anything now: cheap, non-locking reads for idle polls.

        With ``policies``, a type at its concurrency limit (or whose runnable tasks
        all have a full key) counts as having nothing: a supervisor whose limited
        type is full then idles on this read instead of opening a claim
        transaction that would take nothing, every poll.
        """

    def complete_and_claim(
        self,
        completions: Sequence[Claim],
        owner: str,
        types: Iterable[str],
        limit: int,
        lease_s: float,
        *,
        policies: Mapping[str, HandlerPolicy] | None = None,
        usages: Sequence[Usage | None] | None = None,
    ) -> tuple[set[int], list[Claim]]:
        """Complete ``owner``'s ``completions`` and claim up to ``limit`` more.

        Returns (ids that won their fence, new claims). A backend may do both in
        one transaction; this default does them one after the other. ``usages``
        as for :meth:`complete_many`.
        """
        won = self.complete_many(completions, usages) if completions else set()
        return won, self.claim(owner, types, limit, lease_s, policies=policies)

    @abc.abstractmethod
    def progress(self, claim: Claim, pct: int) -> bool:
        """Record progress 0..100 (fenced)."""

    # Every outcome write but a refund stores the attempt's ``usage`` (cpu_s, peak_rss_bytes,
    # wall_s; see supervisor.usage) in the row, NULL for a figure not given: the row holds
    # the last attempt's figures, never a mix with an earlier attempt's.

    @abc.abstractmethod
    def complete(self, claim: Claim, usage: Usage | None = None) -> bool:
        """Mark the attempt completed with progress 100 (fenced)."""

    @abc.abstractmethod
    def complete_many(
        self, claims: Sequence[Claim], usages: Sequence[Usage | None] | None = None
    ) -> set[int]:
        """Complete several attempts in one statement; return the ids that won their fence.

        ``usages``, if given, holds each claim's figures in the order of ``claims``.
        """

    @abc.abstractmethod
    def fail(self, claim: Claim, failure: Failure, error: str, usage: Usage | None = None) -> bool:
        """Terminal failure of the attempt (fenced)."""

    @abc.abstractmethod
    def requeue(self, claim: Claim, delay_s: float, error: str, usage: Usage | None = None) -> bool:
        """Put the task back, ``run_at = database now + delay`` (fenced); the attempt stays used."""

    @abc.abstractmethod
    def refund(self, claim: Claim) -> bool:
        """Put the task back as if this attempt never started (drain deadline) (fenced).

        No figures: the row keeps those of the last attempt that counts.
        """

    @abc.abstractmethod
    def renew_leases(self, owner: str, claims: Sequence[Claim], lease_s: float) -> set[int]:
        """Extend the leases of ``claims``; return the ids still held (the others were lost)."""

    @abc.abstractmethod
    def cancelled_claims(self, owner: str, claims: Sequence[Claim]) -> set[int]:
        """The ids among ``claims`` (attempts ``owner`` lost) that an operator cancelled.

        A lost claim was either rescued elsewhere or cancelled; metrics and logs
        tell the two apart (``lost`` versus ``cancelled``), so this read runs
        only when a fence or a renewal was lost, never on the common path.
        """

    @abc.abstractmethod
    def task_controls(self, task_ids: Sequence[int]) -> list[TaskControl]:
        """The control state of these rows, by primary key (missing rows are left out).

        A supervisor reads its running rows with it once per poll interval, and
        only while it runs any: that is how a cancel, a rescue or a stack request
        reaches it within a poll interval instead of at the next heartbeat.
        """

    @abc.abstractmethod
    def request_stack(self, task_id: int) -> StackRequest:
        """Ask the supervisor running ``task_id`` for its child's stack (``supervisor stack``).

        Applies only to a running task; the request time is read back in the
        same transaction, so an answer that comes at once cannot hide it.
        """

    @abc.abstractmethod
    def record_stack(self, claim: Claim, stack: str, *, status: Status) -> bool:
        """Write the stack taken of ``claim``'s child and clear the request (fenced).

        ``status`` is what the row must be in: ``running`` for a stack on
        demand, ``cancelled`` for the one taken as a cancelled task is killed.
        """

    @abc.abstractmethod
    def rescue_expired(self, limit: int) -> Rescued:
        """Requeue running tasks whose lease ran out; fail them ``lost`` if no attempt is left."""

    @abc.abstractmethod
    def expire_overdue(self, limit: int) -> dict[str, int]:
        """Fail ``queued`` tasks whose deadline passed before dispatch (``expired``).

        Returns how many of each type were expired.
        """

    @abc.abstractmethod
    def register(self, info: SupervisorInfo, ttl_s: float) -> None:
        """Record (or refresh) a live supervisor; it counts as alive for ``ttl_s``."""

    @abc.abstractmethod
    def deregister(self, supervisor_id: str) -> None:
        """Remove a supervisor that stopped cleanly."""

    @abc.abstractmethod
    def supervisors(self) -> list[SupervisorInfo]:
        """The registry: live supervisors, and dead ones not yet forgotten."""

    @abc.abstractmethod
    def forget_supervisors(self, dead_for_s: float) -> int:
        """Drop registry entries of supervisors silent for longer than ``dead_for_s``."""

    @abc.abstractmethod
    def set_paused(self, task_type: str, paused: bool) -> bool:
        """Pause or resume claims of ``task_type`` fleet-wide; True if that changed its state.

        A type no supervisor knows may be paused: its producer may come first.
        """

    @abc.abstractmethod
    def paused_types(self) -> frozenset[str]:
        """The types paused now: one small read, made by each claiming supervisor every poll."""

    @abc.abstractmethod
    def type_infos(self) -> list[TypeInfo]:
        """Every type the fleet knows of: paused ones, and ones whose policy was declared."""

    @abc.abstractmethod
    def utc_now(self) -> datetime:
        """The database clock in UTC (naive): schedules are cron in UTC, read off one clock."""

    @abc.abstractmethod
    def fire_slot(self, task: NewTask, schedule: str, slot: datetime) -> Enqueued | None:
        """Fire ``slot`` of ``task.type``'s schedule unless another supervisor did; one transaction.

        Under the lock of the type's ``task_types`` row: a schedule seen for the
        first time records ``slot`` as fired without enqueueing (None); a mark
        at or past ``slot`` means it fired already (None); otherwise the mark
        moves to ``slot`` and ``task`` is enqueued (with its unique key).
        """

    @abc.abstractmethod
    def cancel(self, task_id: int) -> Transition:
        """Cancel a queued or running task.

        A running task's supervisor sees the cancellation within a poll interval
        (:meth:`task_controls`), takes its child's stack and kills it.
        """

    @abc.abstractmethod
    def retry(self, task_id: int) -> Transition:
        """Put a failed or cancelled task back with fresh attempts and a fresh budget."""

    @abc.abstractmethod
    def prune(self, older_than_s: float) -> int:
        """Delete terminal tasks that finished more than ``older_than_s`` ago."""

    @abc.abstractmethod
    def counts(self, *, live_only: bool = False) -> list[StatusCount]:
        """Counts by type and status; ``live_only``: queued and running only (a cheap read)."""

    @abc.abstractmethod
    def find_tasks(
        self,
        where: TaskFilter,
        *,
        before_id: int | None = None,
        min_id: int | None = None,
        limit: int = 50,
    ) -> list[TaskSummary]:
        """Up to ``limit`` tasks matching ``where``, newest (highest id) first, below ``before_id``.

        Keyset pagination: the next page passes the last id of this one, so a
        page costs the same on the thousandth page as on the first. ``min_id``
        (inclusive) bounds the ids examined: a filter that matches few tasks
        would otherwise read the whole table to fill one page.
        """

    @abc.abstractmethod
    def count_tasks(self, where: TaskFilter) -> int:
        """How many tasks match ``where`` (a ``--dry-run``'s answer; a read, no locks)."""

    @abc.abstractmethod
    def finished_counts(self, within_s: float) -> list[StatusCount]:
        """Counts by type and terminal status of tasks finished in the last ``within_s``.

        The overview's history: a range of the ``(status, completed_at)`` index,
        so its cost follows the window, not the years a table keeps until pruned.
        ``oldest_age_s`` is None here.
        """

    @abc.abstractmethod
    def retry_many(self, task_ids: Sequence[int]) -> int:
        """Retry each failed or cancelled task of ``task_ids`` that has no unique key; one
        transaction. Returns how many were put back.

        Tasks with a unique key go one by one through :meth:`retry`, which
        explains a refusal (another live task holds the key).
        """

    @abc.abstractmethod
    def cancel_many(self, task_ids: Sequence[int]) -> int:
        """Cancel each queued or running task of ``task_ids``; one transaction; how many."""

    @abc.abstractmethod
    def get(self, task_id: int) -> TaskRow | None:
        """One whole row."""

    @abc.abstractmethod
    def declare_types(
        self, supervisor_id: str, policies: Mapping[str, HandlerPolicy]
    ) -> list[Overwritten]:
        """Record what each handler file declares in ``task_types`` (``paused`` untouched).

        Returns the declarations it replaced that another live supervisor had
        made with a different policy.
        """

    def declared_policy(self, task_type: str) -> HandlerPolicy | None:
        """The policy last declared for ``task_type``; None if no supervisor declared one.

        Read from :meth:`type_infos` (a table of a row per type), so ``show``,
        ``status`` and the web page agree on what counts as declared.
        """
        return next((info.policy for info in self.type_infos() if info.type == task_type), None)

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise :class:`~supervisor.errors.StoreUnavailable` unless the database answers."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; the store reconnects if used again."""
