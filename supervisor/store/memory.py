"""A store that keeps its tables in a dict: the supervisor's loop, unit-tested without a database.

It obeys the same contract suite as the SQL backends (``tests/store``), so a
loop test that passes on it tests real queue semantics, not a mock's. Three
things a database cannot give a unit test are added:

* an injected clock (``clock=``; :class:`ManualClock` moves only when told),
  so leases run out and backoffs pass without sleeping;
* :meth:`MemoryStore.fail_with`, an outage on demand: every call that would
  reach a database raises until it is cleared;
* :attr:`MemoryStore.calls`, how often each method was called, so a test can
  assert what the loop asked of the store (or did not).

One lock serialises every method, standing in for the database's own
isolation: the parent calls the store from its database-link thread while a
test inspects it from another. The state lives in one process; it cannot be
shared with supervisors in subprocesses.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from supervisor.errors import StoreError
from supervisor.lifecycle import (
    MAX_ATTEMPTS_LIMIT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    Failure,
    Status,
    claim_defect,
    clamp_max_attempts,
    trim_error,
)
from supervisor.policy import (
    DEFAULT_POLICY,
    HandlerPolicy,
    claim_defaults,
    effective_max_attempts,
    policy_of,
)
from supervisor.store import limits
from supervisor.store.base import (
    ERROR_HEAD_CHARS,
    Claim,
    Enqueued,
    NewTask,
    Overwritten,
    Rescued,
    StackRequest,
    StatusCount,
    Store,
    SupervisorInfo,
    TaskControl,
    TaskFilter,
    TaskRow,
    TaskSummary,
    Transition,
    TypeInfo,
)
from supervisor.usage import Usage

Clock = Callable[[], datetime]

# The same words the SQL backends write, so rows read the same whatever the backend.
CANCELLED_ERROR = "cancelled by an operator"
EXPIRED_ERROR = "deadline passed before the task was dispatched"


def utc_now() -> datetime:
    """The default database clock: naive UTC, the form the SQLite backend returns."""
    return datetime.now(UTC).replace(tzinfo=None)


class ManualClock:
    """A database clock that moves only when a test says so.

    Starts at a fixed instant, so rows and assertions are the same on every run.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start if start is not None else datetime(2024, 1, 1)

    def __call__(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds``; the clock never runs backwards, as leases assume."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward, got {seconds} s")
        self._now += timedelta(seconds=seconds)
        return self._now


def _refused(detail: str) -> StoreError:
    """The error a database gives for a write it will not take (not an outage)."""
    return StoreError(f"memory store refused the operation: {detail}")


def _duration(seconds: float) -> timedelta:
    """Seconds as a timedelta at the SQL backends' resolution (microseconds, as MySQL's)."""
    try:
        return timedelta(microseconds=round(seconds * 1_000_000))
    except (OverflowError, ValueError):  # infinite, NaN, or beyond timedelta's range
        raise _refused(f"{seconds} s is not a usable duration") from None


def _usage_fields(usage: Usage | None) -> dict[str, Any]:
    """The row's figures of the attempt, as the SQL stores write them (None where not given)."""
    if usage is None:
        return {"cpu_s": None, "peak_rss_bytes": None, "wall_s": None}
    return {"cpu_s": usage.cpu_s, "peak_rss_bytes": usage.peak_rss_bytes, "wall_s": usage.wall_s}


def _later(moment: datetime, seconds: float) -> datetime:
    try:
        return moment + _duration(seconds)
    except OverflowError:  # past year 9999
        raise _refused(f"{seconds} s is out of the clock's range") from None


def _check(task: NewTask) -> None:
    """Refuse what the schemas refuse (the stricter of the two), as a :class:`StoreError`.

    Producers validate before this (``supervisor.producer``); this stands in for
    the columns' NOT NULL, length and CHECK constraints, so a test that hands
    the store bad data sees the failure a database would give.
    """
    # Read as plain objects: a NewTask's hints are a promise the caller may have broken.
    type_: object = task.type
    options: object = task.options
    max_attempts: object = task.max_attempts
    priority: object = task.priority
    key: object = task.concurrency_key
    problems: list[str] = []
    if not isinstance(type_, str) or not 1 <= len(type_) <= 64:
        problems.append("type must be a string of 1 to 64 characters")
    if options is not None and not isinstance(options, str):
        problems.append("options must be a string or None")
    if max_attempts is not None and (
        not isinstance(max_attempts, int) or not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT
    ):
        problems.append(f"max_attempts must be 1 to {MAX_ATTEMPTS_LIMIT}")
    if not isinstance(priority, int) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        problems.append("priority must fit a 32-bit integer")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        problems.append("concurrency_key must be a string of 1 to 255 characters")
    if problems:
        raise _refused("; ".join(problems))


def _holds(task: TaskRow, claim: Claim) -> bool:
    """The fence every worker write passes: still running, same owner, same attempt."""
    return (
        task.status is Status.RUNNING
        and task.claimed_by == claim.owner
        and task.attempts == claim.attempt
    )


def _claim_of(running: TaskRow, owner: str, now: datetime) -> Claim:
    """The claim of a row just taken, with the SQL backends' checks (``sql.row_to_claim``):
    ``max_attempts`` clamped, and a row that cannot run marked with its defect."""
    max_attempts = clamp_max_attempts(effective_max_attempts(running.max_attempts, DEFAULT_POLICY))
    # The claim wrote the effective values into the row, so the row's own are the ones.
    options_bytes = None if running.options is None else len(running.options.encode("utf-8"))
    defect = claim_defect(
        type_name=running.type,
        options_bytes=options_bytes,
        attempt=running.attempts,
        max_attempts=max_attempts,
    )
    return Claim(
        id=running.id,
        type=running.type,
        options=None if defect else running.options,
        attempt=running.attempts,
        max_attempts=max_attempts,
        owner=owner,
        remaining_s=(running.deadline_at - now).total_seconds(),
        timeout_s=running.timeout_s,
        defect=defect,
    )


@attrs.frozen(kw_only=True)
class _Registration:
    info: SupervisorInfo
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime


def _summary(task: TaskRow) -> TaskSummary:
    head = None if task.last_error is None else task.last_error[:ERROR_HEAD_CHARS]
    return TaskSummary(
        id=task.id,
        type=task.type,
        status=task.status,
        failure=task.failure,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        progress_pct=task.progress_pct,
        claimed_by=task.claimed_by,
        unique_key=task.unique_key,
        error_head=head,
        created_at=task.created_at,
        started_at=task.started_at,
        completed_at=task.completed_at,
        deadline_at=task.deadline_at,
    )


class MemoryStore(Store):
    """The :class:`Store` contract over plain Python objects, with an injectable clock.

    ``clock`` is the database clock (naive UTC datetimes); every method reads
    it once, as a SQL statement sees one ``now``.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else utc_now
        self._lock = threading.Lock()
        self._tasks: dict[int, TaskRow] = {}
        self._last_id = 0
        self._supervisors: dict[str, _Registration] = {}
        # The task_types table: pause state, declared policy, schedule mark, by type.
        self._types: dict[str, TypeInfo] = {}
        self._calls: Counter[str] = Counter()
        self._fault: StoreError | None = None

    # --- test controls -------------------------------------------------------------------

    def fail_with(self, error: StoreError | None) -> None:
        """Behave like a database that is down (``error``) until called with ``None``.

        Each call that a real backend would send to the database raises a fresh
        copy of ``error`` (typically a :class:`StoreUnavailable`) and changes
        nothing. Calls that a real backend answers without the database (a
        claim of no types, completing or renewing nothing, ``close``) still
        succeed, so the loop sees exactly what it would see in production.
        """
        with self._lock:
            self._fault = error

    @property
    def calls(self) -> Counter[str]:
        """How often each public method was called, refused ones included (a snapshot).

        ``enqueue`` counts as ``enqueue`` and ``complete_and_claim`` as itself:
        the names are what the caller called.
        """
        with self._lock:
            return Counter(self._calls)

    # --- plumbing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _call(self, name: str, *, reaches_database: bool = True) -> Iterator[None]:
        """Hold the lock for one method, count it, and refuse it during an outage.

        ``reaches_database=False``: the method decides itself, with
        :meth:`_reach`, after the shortcuts a real backend takes without a query.
        """
        with self._lock:
            self._calls[name] += 1
            if reaches_database:
                self._reach()
            yield

    def _reach(self) -> None:
        if self._fault is not None:
            raise type(self._fault)(*self._fault.args)

    def _update(self, task: TaskRow, now: datetime, **changes: Any) -> TaskRow:
        """Replace a row, stamping ``updated_at`` as every SQLite write does."""
        new = attrs.evolve(task, updated_at=now, **changes)
        self._tasks[task.id] = new
        return new

    def _claimable(self, types: set[str], now: datetime) -> list[TaskRow]:
        """What a claim would take, in claim order (priority, then id)."""
        found = [
            task
            for task in self._tasks.values()
            if task.status is Status.QUEUED
            and task.type in types
            and task.run_at <= now
            and task.deadline_at > now
        ]
        found.sort(key=lambda task: (task.priority, task.id))
        return found

    def _admitted(
        self,
        types: set[str],
        limit: int,
        now: datetime,
        policies: Mapping[str, HandlerPolicy] | None,
    ) -> list[TaskRow]:
        """What a claim takes, keeping the concurrency limits of ``policies`` (module limits).

        The store's lock already serialises count-then-claim, as the type's row lock does
        on MySQL; types without limits are taken as before.
        """
        found = self._claimable(types, now)
        limited = limits.limited_types(types, policies)
        if not limited:
            return found[:limit]
        taken = [task for task in found if task.type not in limited]
        for task_type in limited:
            policy = policy_of(policies, task_type)
            running = limits.Running.from_counts(
                Counter(
                    task.concurrency_key
                    for task in self._tasks.values()
                    if task.type == task_type and task.status is Status.RUNNING
                ).items()
            )
            candidates = [
                limits.Candidate(id=task.id, priority=task.priority, key=task.concurrency_key)
                for task in found
                if task.type == task_type
            ]
            admitted = limits.admit(candidates, policy, running, limit)
            taken.extend(self._tasks[candidate.id] for candidate in admitted)
        taken.sort(key=lambda task: (task.priority, task.id))
        return taken[:limit]

    def _fenced(self, claim: Claim) -> TaskRow | None:
        task = self._tasks.get(claim.id)
        return task if task is not None and _holds(task, claim) else None

    # --- the Store interface -------------------------------------------------------------

    def migrate(self) -> None:
        with self._call("migrate"):
            pass

    def enqueue(self, task: NewTask) -> Enqueued:
        with self._call("enqueue"):
            return self._insert([task])[0]

    def enqueue_many(self, tasks: Sequence[NewTask]) -> list[Enqueued]:
        with self._call("enqueue_many"):
            return self._insert(tasks)

    def _live_holder(self, task_type: str, unique_key: str | None) -> int | None:
        """The live task holding (type, unique key), as the unique index finds it."""
        if unique_key is None:
            return None
        for task in self._tasks.values():
            if (
                task.type == task_type
                and task.unique_key == unique_key
                and task.status in (Status.QUEUED, Status.RUNNING)
            ):
                return task.id
        return None

    def _insert(self, tasks: Sequence[NewTask]) -> list[Enqueued]:
        """All or nothing: every task is checked and its times computed before any is stored."""
        now = self.clock()
        rows = []
        for task in tasks:
            _check(task)
            run_at = _later(now, task.delay_s)
            deadline_at = _later(now, task.delay_s + task.budget_s)
            rows.append((task, run_at, deadline_at))
        ids: list[Enqueued] = []
        for task, run_at, deadline_at in rows:
            holder = self._live_holder(task.type, task.unique_key)
            if holder is not None:
                ids.append(Enqueued(holder, existed=True))
                continue
            self._last_id += 1  # AUTOINCREMENT: an id is never reused, even after a prune
            self._tasks[self._last_id] = TaskRow(
                id=self._last_id,
                type=task.type,
                status=Status.QUEUED,
                options=task.options,
                priority=task.priority,
                attempts=0,
                max_attempts=task.max_attempts,
                timeout_s=task.timeout_s,
                concurrency_key=task.concurrency_key,
                unique_key=task.unique_key,
                progress_pct=0,
                failure=None,
                last_error=None,
                claimed_by=None,
                created_at=now,
                run_at=run_at,
                deadline_at=deadline_at,
                started_at=None,
                completed_at=None,
                lease_expires_at=None,
                updated_at=now,
            )
            ids.append(Enqueued(self._last_id))
        return ids

    def claim(
        self,
        owner: str,
        types: Iterable[str],
        limit: int,
        lease_s: float,
        *,
        policies: Mapping[str, HandlerPolicy] | None = None,
    ) -> list[Claim]:
        with self._call("claim", reaches_database=False):
            wanted = set(types)
            if not wanted or limit <= 0:
                return []
            self._reach()
            return self._claim(owner, wanted, limit, lease_s, policies)

    def _claim(
        self,
        owner: str,
        types: set[str],
        limit: int,
        lease_s: float,
        policies: Mapping[str, HandlerPolicy] | None,
    ) -> list[Claim]:
        now = self.clock()
        lease_expires_at = _later(now, lease_s)
        claims = []
        for task in self._admitted(types, limit, now, policies):
            max_attempts, timeout_s = claim_defaults(policies, task.type)
            running = self._update(
                task,
                now,
                status=Status.RUNNING,
                attempts=task.attempts + 1,
                claimed_by=owner,
                max_attempts=task.max_attempts if task.max_attempts is not None else max_attempts,
                timeout_s=task.timeout_s if task.timeout_s is not None else timeout_s,
                progress_pct=0,
                stack_requested_at=None,  # a request of an earlier attempt is not this one's
                started_at=now,
                lease_expires_at=lease_expires_at,
            )
            claims.append(_claim_of(running, owner, now))
        return claims

    def has_claimable(
        self, types: Iterable[str], *, policies: Mapping[str, HandlerPolicy] | None = None
    ) -> bool:
        with self._call("has_claimable", reaches_database=False):
            wanted = set(types)
            if not wanted:
                return False
            self._reach()
            return bool(self._admitted(wanted, 1, self.clock(), policies))

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
        """Both in one critical section, as the MySQL backend does both in one transaction."""
        with self._call("complete_and_claim", reaches_database=False):
            wanted = set(types)
            claiming = bool(wanted) and limit > 0
            if not completions and not claiming:
                return set(), []
            strangers = sorted({c.owner for c in completions if c.owner != owner})
            if strangers:
                raise ValueError(f"completions of {strangers} passed as {owner!r}'s")
            self._reach()
            won = self._complete(completions, usages)
            claims = self._claim(owner, wanted, limit, lease_s, policies) if claiming else []
            return won, claims

    def progress(self, claim: Claim, pct: int) -> bool:
        with self._call("progress"):
            return self._write_fenced(
                claim, lambda task, now: {"progress_pct": max(0, min(100, pct))}
            )

    def complete(self, claim: Claim, usage: Usage | None = None) -> bool:
        with self._call("complete"):
            return claim.id in self._complete([claim], [usage])

    def complete_many(
        self, claims: Sequence[Claim], usages: Sequence[Usage | None] | None = None
    ) -> set[int]:
        with self._call("complete_many", reaches_database=False):
            if not claims:
                return set()
            self._reach()
            return self._complete(claims, usages)

    def _complete(self, claims: Sequence[Claim], usages: Sequence[Usage | None] | None) -> set[int]:
        now = self.clock()
        won = set()
        for claim, usage in zip(claims, usages or [None] * len(claims), strict=True):
            task = self._fenced(claim)
            if task is None:
                continue
            self._update(
                task,
                now,
                status=Status.COMPLETED,
                failure=None,
                last_error=None,
                progress_pct=100,
                lease_expires_at=None,
                completed_at=now,
                **_usage_fields(usage),
            )
            won.add(claim.id)
        return won

    def fail(self, claim: Claim, failure: Failure, error: str, usage: Usage | None = None) -> bool:
        with self._call("fail"):
            return self._write_fenced(
                claim,
                lambda task, now: {
                    "status": Status.FAILED,
                    "failure": Failure(failure),
                    "last_error": trim_error(error),
                    "lease_expires_at": None,
                    "completed_at": now,
                    **_usage_fields(usage),
                },
            )

    def requeue(self, claim: Claim, delay_s: float, error: str, usage: Usage | None = None) -> bool:
        with self._call("requeue"):
            return self._write_fenced(
                claim,
                lambda task, now: {
                    "status": Status.QUEUED,
                    "last_error": trim_error(error),
                    "claimed_by": None,
                    "lease_expires_at": None,
                    "run_at": _later(now, delay_s),
                    **_usage_fields(usage),
                },
            )

    def refund(self, claim: Claim) -> bool:
        with self._call("refund"):
            return self._write_fenced(
                claim,
                lambda task, now: {
                    "status": Status.QUEUED,
                    "attempts": task.attempts - 1,
                    "claimed_by": None,
                    "lease_expires_at": None,
                    "started_at": None,
                    "progress_pct": 0,
                    "run_at": now,
                },
            )

    def _write_fenced(
        self, claim: Claim, changes: Callable[[TaskRow, datetime], dict[str, Any]]
    ) -> bool:
        """One fenced write, as the SQL backends' UPDATE ... WHERE <fence>: True if it won."""
        task = self._fenced(claim)
        if task is None:
            return False
        now = self.clock()
        self._update(task, now, **changes(task, now))
        return True

    def renew_leases(self, owner: str, claims: Sequence[Claim], lease_s: float) -> set[int]:
        """Fenced on ``owner`` (not each claim's own), as the SQL statements are."""
        with self._call("renew_leases", reaches_database=False):
            if not claims:
                return set()
            self._reach()
            now = self.clock()
            lease_expires_at = _later(now, lease_s)
            held = set()
            for claim in claims:
                task = self._fenced(attrs.evolve(claim, owner=owner))
                if task is not None:
                    self._update(task, now, lease_expires_at=lease_expires_at)
                    held.add(task.id)
            return held

    def cancelled_claims(self, owner: str, claims: Sequence[Claim]) -> set[int]:
        """Cancelled rows still naming ``owner`` and the claim's attempt, as the SQL reads them."""
        with self._call("cancelled_claims", reaches_database=False):
            if not claims:
                return set()
            self._reach()
            found = set()
            for claim in claims:
                task = self._tasks.get(claim.id)
                if (
                    task is not None
                    and task.status is Status.CANCELLED
                    and task.claimed_by == owner
                    and task.attempts == claim.attempt
                ):
                    found.add(task.id)
            return found

    def rescue_expired(self, limit: int) -> Rescued:
        """Up to ``limit`` lost and, separately, up to ``limit`` requeued, as the SQL does."""
        with self._call("rescue_expired"):
            now = self.clock()
            expired = [
                task
                for task in self._tasks.values()
                if task.status is Status.RUNNING
                # A row a plain-SQL producer inserted as running, with no lease, is rescued too.
                and (task.lease_expires_at is None or task.lease_expires_at < now)
            ]
            last = [t for t in expired if t.attempts >= (t.max_attempts or 3)][: max(limit, 0)]
            more = [t for t in expired if t.attempts < (t.max_attempts or 3)][: max(limit, 0)]
            lost: Counter[str] = Counter()
            for task in last:
                self._update(
                    task,
                    now,
                    status=Status.FAILED,
                    failure=Failure.LOST,
                    last_error=f"lease of {task.claimed_by or '?'} expired on the last attempt",
                    lease_expires_at=None,
                    completed_at=now,
                )
                lost[task.type] += 1
            for task in more:
                self._update(
                    task,
                    now,
                    status=Status.QUEUED,
                    last_error=f"lease of {task.claimed_by or '?'} expired; attempt counted",
                    claimed_by=None,
                    lease_expires_at=None,
                    run_at=now,
                )
            return Rescued(requeued=len(more), lost=dict(lost))

    def expire_overdue(self, limit: int) -> dict[str, int]:
        with self._call("expire_overdue"):
            now = self.clock()
            overdue = [
                task
                for task in self._tasks.values()
                if task.status is Status.QUEUED and task.deadline_at <= now
            ][: max(limit, 0)]
            expired: Counter[str] = Counter()
            for task in overdue:
                self._update(
                    task,
                    now,
                    status=Status.FAILED,
                    failure=Failure.EXPIRED,
                    last_error=EXPIRED_ERROR,
                    completed_at=now,
                )
                expired[task.type] += 1
            return dict(expired)

    def register(self, info: SupervisorInfo, ttl_s: float) -> None:
        """A new entry starts now; a refresh changes only workers, heartbeat and expiry."""
        with self._call("register"):
            now = self.clock()
            expires_at = _later(now, ttl_s)
            known = self._supervisors.get(info.id)
            if known is None:
                entry = _Registration(
                    info=info, started_at=now, heartbeat_at=now, expires_at=expires_at
                )
            else:
                entry = _Registration(
                    info=attrs.evolve(known.info, workers=info.workers),
                    started_at=known.started_at,
                    heartbeat_at=now,
                    expires_at=expires_at,
                )
            self._supervisors[info.id] = entry

    def declare_types(
        self, supervisor_id: str, policies: Mapping[str, HandlerPolicy]
    ) -> list[Overwritten]:
        with self._call("declare_types"):
            now = self.clock()
            overwritten = []
            for task_type, declaring in sorted(policies.items()):
                policy = declaring.declared()
                known = self._type_info(task_type)
                if (
                    known.policy is not None
                    and known.policy != policy
                    and known.declared_by not in (None, supervisor_id)
                ):
                    entry = self._supervisors.get(str(known.declared_by))
                    if entry is not None and entry.expires_at > now:
                        overwritten.append(
                            Overwritten(
                                type=task_type,
                                declared_by=str(known.declared_by),
                                before=known.policy,
                            )
                        )
                self._types[task_type] = attrs.evolve(
                    known, policy=policy, declared_by=supervisor_id, declared_at=now
                )
            return overwritten

    def deregister(self, supervisor_id: str) -> None:
        with self._call("deregister"):
            self._supervisors.pop(supervisor_id, None)

    def supervisors(self) -> list[SupervisorInfo]:
        with self._call("supervisors"):
            now = self.clock()
            entries = sorted(self._supervisors.values(), key=lambda e: (e.info.host, e.started_at))
            return [
                attrs.evolve(
                    entry.info,
                    started_at=entry.started_at,
                    heartbeat_at=entry.heartbeat_at,
                    alive=entry.expires_at > now,
                )
                for entry in entries
            ]

    def forget_supervisors(self, dead_for_s: float) -> int:
        with self._call("forget_supervisors"):
            cutoff = self.clock() - _duration(dead_for_s)
            dead = [key for key, e in self._supervisors.items() if e.expires_at < cutoff]
            for key in dead:
                del self._supervisors[key]
            return len(dead)

    def set_paused(self, task_type: str, paused: bool) -> bool:
        with self._call("set_paused"):
            known = self._type_info(task_type)
            paused_at = (known.paused_at if known.paused else self.clock()) if paused else None
            self._types[task_type] = attrs.evolve(known, paused=paused, paused_at=paused_at)
            return known.paused != paused

    def _type_info(self, task_type: str) -> TypeInfo:
        """The type's ``task_types`` row, or the blank one an upsert would create."""
        return self._types.get(task_type) or TypeInfo(
            type=task_type,
            paused=False,
            paused_at=None,
            policy=None,
            declared_by=None,
            declared_at=None,
        )

    def utc_now(self) -> datetime:
        with self._call("utc_now"):
            return self.clock()

    def fire_slot(self, task: NewTask, schedule: str, slot: datetime) -> Enqueued | None:
        with self._call("fire_slot"):
            known = self._type_info(task.type)
            mark = known.schedule_last_slot
            fires = mark is not None and mark < slot
            if mark is None or fires:
                mark = slot
            self._types[task.type] = attrs.evolve(known, schedule=schedule, schedule_last_slot=mark)
            return self._insert([task])[0] if fires else None

    def paused_types(self) -> frozenset[str]:
        with self._call("paused_types"):
            return frozenset(name for name, info in self._types.items() if info.paused)

    def type_infos(self) -> list[TypeInfo]:
        with self._call("type_infos"):
            return [self._types[name] for name in sorted(self._types)]

    def task_controls(self, task_ids: Sequence[int]) -> list[TaskControl]:
        with self._call("task_controls", reaches_database=False):
            if not task_ids:
                return []
            self._reach()
            found = [self._tasks[i] for i in sorted(set(task_ids)) if i in self._tasks]
            return [
                TaskControl(
                    id=task.id,
                    status=task.status,
                    claimed_by=task.claimed_by,
                    attempts=task.attempts,
                    stack_requested_at=task.stack_requested_at,
                )
                for task in found
            ]

    def request_stack(self, task_id: int) -> StackRequest:
        with self._call("request_stack"):
            task = self._tasks.get(task_id)
            if task is None:
                return StackRequest(before=None, requested_at=None, claimed_by=None)
            if task.status is not Status.RUNNING:
                return StackRequest(
                    before=task.status, requested_at=None, claimed_by=task.claimed_by
                )
            now = self.clock()
            self._update(task, now, stack_requested_at=now)
            return StackRequest(before=task.status, requested_at=now, claimed_by=task.claimed_by)

    def record_stack(self, claim: Claim, stack: str, *, status: Status) -> bool:
        with self._call("record_stack"):
            task = self._tasks.get(claim.id)
            if (
                task is None
                or task.status is not status
                or task.claimed_by != claim.owner
                or task.attempts != claim.attempt
            ):
                return False
            now = self.clock()
            self._update(task, now, stack=stack, stack_at=now, stack_requested_at=None)
            return True

    def cancel(self, task_id: int) -> Transition:
        with self._call("cancel"):
            task = self._tasks.get(task_id)
            if task is None:
                return Transition(before=None, applied=False)
            if task.status not in (Status.QUEUED, Status.RUNNING):
                return Transition(before=task.status, applied=False)
            self._cancel(task, self.clock())
            return Transition(before=task.status, applied=True)

    def _cancel(self, task: TaskRow, now: datetime) -> None:
        self._update(
            task,
            now,
            status=Status.CANCELLED,
            failure=None,
            lease_expires_at=None,
            last_error=CANCELLED_ERROR,
            completed_at=now,
        )

    def retry(self, task_id: int) -> Transition:
        """The fresh budget is the row's ``deadline_at - created_at``, as the SQL computes it."""
        with self._call("retry"):
            task = self._tasks.get(task_id)
            if task is None:
                return Transition(before=None, applied=False)
            if task.status not in (Status.FAILED, Status.CANCELLED):
                return Transition(before=task.status, applied=False)
            holder = self._live_holder(task.type, task.unique_key)
            if holder is not None:
                return Transition(before=task.status, applied=False, blocked_by=holder)
            self._retry(task, self.clock())
            return Transition(before=task.status, applied=True)

    def _retry(self, task: TaskRow, now: datetime) -> None:
        self._update(
            task,
            now,
            deadline_at=now + (task.deadline_at - task.created_at),
            status=Status.QUEUED,
            failure=None,
            attempts=0,
            progress_pct=0,
            claimed_by=None,
            lease_expires_at=None,
            started_at=None,
            completed_at=None,
            run_at=now,
        )

    def retry_many(self, task_ids: Sequence[int]) -> int:
        with self._call("retry_many"):
            now = self.clock()
            found = [self._tasks.get(task_id) for task_id in set(task_ids)]
            chosen = [
                task
                for task in found
                if task is not None
                and task.status in (Status.FAILED, Status.CANCELLED)
                and task.unique_key is None
            ]
            for task in chosen:
                self._retry(task, now)
            return len(chosen)

    def cancel_many(self, task_ids: Sequence[int]) -> int:
        with self._call("cancel_many"):
            now = self.clock()
            found = [self._tasks.get(task_id) for task_id in set(task_ids)]
            chosen = [
                task
                for task in found
                if task is not None and task.status in (Status.QUEUED, Status.RUNNING)
            ]
            for task in chosen:
                self._cancel(task, now)
            return len(chosen)

    def find_tasks(
        self,
        where: TaskFilter,
        *,
        before_id: int | None = None,
        min_id: int | None = None,
        limit: int = 50,
    ) -> list[TaskSummary]:
        with self._call("find_tasks"):
            ids = sorted(
                (
                    task_id
                    for task_id, task in self._tasks.items()
                    if (before_id is None or task_id < before_id)
                    and (min_id is None or task_id >= min_id)
                    and where.matches(task)
                ),
                reverse=True,
            )
            return [_summary(self._tasks[task_id]) for task_id in ids[:limit]]

    def count_tasks(self, where: TaskFilter) -> int:
        with self._call("count_tasks"):
            return sum(1 for task in self._tasks.values() if where.matches(task))

    def finished_counts(self, within_s: float) -> list[StatusCount]:
        with self._call("finished_counts"):
            cutoff = self.clock() - _duration(within_s)
            number: Counter[tuple[str, Status]] = Counter(
                (task.type, task.status)
                for task in self._tasks.values()
                if task.status.is_terminal
                and task.completed_at is not None
                and task.completed_at >= cutoff
            )
            return [
                StatusCount(type=task_type, status=status, count=count, oldest_age_s=None)
                for (task_type, status), count in sorted(
                    number.items(), key=lambda item: (item[0][0], item[0][1].value)
                )
            ]

    def prune(self, older_than_s: float, batch: int = 1000) -> int:
        """``batch`` is accepted for the SQL backends' signature; there are no locks to spare."""
        with self._call("prune"):
            cutoff = self.clock() - _duration(older_than_s)
            old = [
                task.id
                for task in self._tasks.values()
                if task.status.is_terminal
                and task.completed_at is not None
                and task.completed_at < cutoff
            ]
            for task_id in old:
                del self._tasks[task_id]
            return len(old)

    def counts(self, *, live_only: bool = False) -> list[StatusCount]:
        """Ordered by type, then status name (SQLite's order: text, not lifecycle order)."""
        with self._call("counts"):
            now = self.clock()
            oldest: dict[tuple[str, Status], datetime] = {}
            number: Counter[tuple[str, Status]] = Counter()
            for task in self._tasks.values():
                if live_only and task.status.is_terminal:
                    continue
                key = (task.type, task.status)
                number[key] += 1
                # A queued task waits from its run_at: a delayed one is not waiting yet.
                since = task.run_at if task.status is Status.QUEUED else task.created_at
                if key not in oldest or since < oldest[key]:
                    oldest[key] = since
            return [
                StatusCount(
                    type=task_type,
                    status=status,
                    count=number[task_type, status],
                    oldest_age_s=max(0.0, (now - oldest[task_type, status]).total_seconds()),
                )
                for task_type, status in sorted(number, key=lambda k: (k[0], k[1].value))
            ]

    def get(self, task_id: int) -> TaskRow | None:
        with self._call("get"):
            return self._tasks.get(task_id)

    def ping(self) -> None:
        with self._call("ping"):
            pass

    def close(self) -> None:
        """Nothing to release; the rows stay, as a database's do when a connection closes."""
        with self._call("close", reaches_database=False):
            pass
