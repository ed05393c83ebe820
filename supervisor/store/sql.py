"""What both SQL backends share: each store method is one named query plus record conversion.

A backend supplies the connection, the parameter style of its driver and its
error mapping (:meth:`SqlStore._run`), and whatever statements must differ
(the claim). Parameters are always passed as one dict of named values, with
durations both in seconds (SQLite's date modifiers) and in integer
microseconds (MySQL's ``INTERVAL ... MICROSECOND``).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from supervisor.errors import UnreadableRow
from supervisor.lifecycle import (
    Failure,
    Status,
    claim_defect,
    clamp_max_attempts,
    trim_error,
)
from supervisor.policy import (
    HandlerPolicy,
    backoff_from_text,
    backoff_text,
    effective_max_attempts,
    effective_timeout,
    policy_of,
)
from supervisor.store import limits
from supervisor.store.base import (
    ERROR_HEAD_CHARS,
    Claim,
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

Row = dict[str, Any]
Params = dict[str, Any]


def seconds(value: float) -> Params:
    """A duration as the two spellings the SQL files use."""
    return {"s": round(value, 3), "us": round(value * 1_000_000)}


def fence(claim: Claim) -> Params:
    return {"id": claim.id, "owner": claim.owner, "attempt": claim.attempt}


def fences_json(claims: Sequence[Claim]) -> str:
    return json.dumps([[c.id, c.attempt] for c in claims])


def usage_params(usage: Usage | None) -> Params:
    """The last attempt's figures for a single-row outcome write (NULL where not measured)."""
    if usage is None:
        return {"cpu_s": None, "peak_rss_bytes": None, "wall_s": None}
    return {"cpu_s": usage.cpu_s, "peak_rss_bytes": usage.peak_rss_bytes, "wall_s": usage.wall_s}


def usage_json(claims: Sequence[Claim], usages: Sequence[Usage | None] | None) -> str:
    """``[{"i": id, "a": attempt, "c": cpu_s, "r": peak_rss_bytes, "w": wall_s}, ...]``: a
    batch's fences and figures, for ``complete_many`` to join in one statement (``usages`` in
    the order of ``claims``). A figure not measured is left out rather than written as JSON
    null: a missing path reads as SQL NULL on every engine."""
    rows: list[dict[str, float | int]] = []
    for claim, usage in zip(claims, usages or [None] * len(claims), strict=True):
        row: dict[str, float | int] = {"i": claim.id, "a": claim.attempt}
        if usage is not None:
            if usage.cpu_s is not None:
                row["c"] = usage.cpu_s
            if usage.peak_rss_bytes is not None:
                row["r"] = usage.peak_rss_bytes
            if usage.wall_s is not None:
                row["w"] = usage.wall_s
        rows.append(row)
    return json.dumps(rows, separators=(",", ":"))


def to_datetime(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def to_optional_datetime(value: object) -> datetime | None:
    return None if value is None else to_datetime(value)


def status_or_raw(value: object) -> Status | str:
    """A lifecycle status, or the raw text of one outside it (an empty ENUM value)."""
    text = str(value)
    try:
        return Status(text)
    except ValueError:
        return text


def count_types(types: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task_type in types:
        counts[task_type] = counts.get(task_type, 0) + 1
    return counts


def row_to_task(row: Row) -> TaskRow:
    return TaskRow(
        id=int(row["id"]),
        type=row["type"],
        status=Status(row["status"]),
        options=row["task_options"],
        priority=int(row["priority"]),
        attempts=int(row["attempts"]),
        max_attempts=None if row["max_attempts"] is None else int(row["max_attempts"]),
        timeout_s=None if row["timeout_s"] is None else float(row["timeout_s"]),
        concurrency_key=row["concurrency_key"],
        unique_key=row["unique_key"],
        progress_pct=int(row["progress_pct"]),
        failure=Failure(row["failure"]) if row["failure"] else None,
        last_error=row["last_error"],
        claimed_by=row["claimed_by"],
        created_at=to_datetime(row["created_at"]),
        run_at=to_datetime(row["run_at"]),
        deadline_at=to_datetime(row["deadline_at"]),
        started_at=to_optional_datetime(row["started_at"]),
        completed_at=to_optional_datetime(row["completed_at"]),
        lease_expires_at=to_optional_datetime(row["lease_expires_at"]),
        updated_at=to_datetime(row["updated_at"]),
        cpu_s=None if row.get("cpu_s") is None else float(row["cpu_s"]),
        peak_rss_bytes=None if row.get("peak_rss_bytes") is None else int(row["peak_rss_bytes"]),
        wall_s=None if row.get("wall_s") is None else float(row["wall_s"]),
        stack=row.get("stack"),
        stack_at=to_optional_datetime(row.get("stack_at")),
        stack_requested_at=to_optional_datetime(row.get("stack_requested_at")),
    )


def filter_params(where: TaskFilter) -> Params:
    """A :class:`TaskFilter` as the named parameters of ``find_tasks``/``count_tasks``.

    Statuses come in both spellings: a tuple for MySQL's ``IN %(statuses)s``
    and JSON for SQLite's ``json_each``; a never-matching placeholder keeps an
    empty tuple from being a syntax error (``any_status`` switches it off).
    Times go as millisecond text, which compares correctly with SQLite's text
    dates and converts implicitly on MySQL.
    """
    statuses = sorted(s.value for s in where.statuses)
    return {
        "type": where.type,
        "any_status": 0 if statuses else 1,
        "statuses": tuple(statuses) or ("",),
        "statuses_json": json.dumps(statuses),
        "failure": where.failure.value if where.failure else None,
        "since": _moment(where.since),
        "until": _moment(where.until),
        "error_match": where.error_match,
    }


def _moment(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(sep=" ", timespec="milliseconds")


def ids_params(task_ids: Sequence[int]) -> Params:
    ids = [int(i) for i in task_ids]
    return {"ids": tuple(ids), "ids_json": json.dumps(ids)}


def row_to_summary(row: Row) -> TaskSummary:
    return TaskSummary(
        id=int(row["id"]),
        type=str(row["type"]),
        status=Status(row["status"]),
        failure=Failure(row["failure"]) if row["failure"] else None,
        attempts=int(row["attempts"]),
        max_attempts=_optional_int(row["max_attempts"]),
        progress_pct=int(row["progress_pct"]),
        claimed_by=row["claimed_by"],
        unique_key=row["unique_key"],
        error_head=row["error_head"],
        created_at=to_datetime(row["created_at"]),
        started_at=to_optional_datetime(row["started_at"]),
        completed_at=to_optional_datetime(row["completed_at"]),
        deadline_at=to_datetime(row["deadline_at"]),
    )


def row_to_type_info(row: Row) -> TypeInfo:
    """A ``task_types`` row; its policy is None until a supervisor declared one."""
    return TypeInfo(
        type=str(row["type"]),
        paused=bool(row["paused"]),
        paused_at=to_optional_datetime(row["paused_at"]),
        policy=declared_policy(row) if row["declared_at"] is not None else None,
        declared_by=row["declared_by"],
        declared_at=to_optional_datetime(row["declared_at"]),
        schedule=row["schedule"],
        schedule_last_slot=to_optional_datetime(row["schedule_last_slot"]),
    )


def _optional_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def row_to_claim(
    row: Row, owner: str, policies: Mapping[str, HandlerPolicy] | None = None
) -> Claim:
    """A claimed row as a :class:`Claim`; never raises, whatever the row holds.

    Plain SQL is a supported producer, so a claimed row may hold what no
    producer writes: options as a BLOB, bytes that are not UTF-8, options over
    the size limit (the claim then does not even read them: ``task_options``
    comes back NULL with their size in ``options_bytes``), an unparseable
    deadline (``remaining_s`` NULL). Raising here would fail the whole claim,
    and with it every other task, on each retry; instead the row's claim
    carries a ``defect`` and the parent fails that row alone.

    ``max_attempts`` and ``timeout_s`` are the row's own, else the claimer's
    ``policies`` for its type (what the claim wrote into the row).
    """
    defects: list[str] = []
    type_name = _decoded(row["type"], "type", defects)
    options_kind = row.get("options_kind")
    options: str | None = None
    if options_kind == "blob":
        defects.append("task_options is stored as a BLOB, not text; the task was not run")
    elif row["task_options"] is not None:
        options = _decoded(row["task_options"], "task_options", defects)
    remaining = row["remaining_s"]
    if remaining is None:
        defects.append("deadline_at is not a valid date; the task was not run")
    attempt = int(row["attempts"])
    raw_max, raw_timeout = row["max_attempts"], row["timeout_s"]
    policy = policy_of(policies, type_name)
    max_attempts = clamp_max_attempts(
        effective_max_attempts(None if raw_max is None else int(raw_max), policy)
    )
    timeout_s = effective_timeout(None if raw_timeout is None else float(raw_timeout), policy)
    options_bytes = row.get("options_bytes")
    found = claim_defect(
        type_name=type_name,
        options_bytes=None if options_bytes is None else int(options_bytes),
        attempt=attempt,
        max_attempts=max_attempts,
    )
    if found is not None:
        defects.insert(0, found)
    return Claim(
        id=int(row["id"]),
        type=type_name,
        options=None if defects else options,
        attempt=attempt,
        max_attempts=max_attempts,
        owner=owner,
        remaining_s=0.0 if remaining is None else float(remaining),
        timeout_s=timeout_s,
        defect="; ".join(defects) if defects else None,
    )


def running_of(rows: Iterable[Row]) -> limits.Running:
    """The running counts of one type from ``running_by_key``'s rows."""
    return limits.Running.from_counts(
        (limits.decode_key(row["concurrency_key"]), int(row["count"])) for row in rows
    )


def admitted_rows(
    rows: Sequence[Row], policy: HandlerPolicy, running: limits.Running, want: int
) -> list[Row]:
    """The candidate rows (in claim order) that fit the type's limits."""
    by_id = {int(row["id"]): row for row in rows}
    candidates = [
        limits.Candidate(
            id=int(row["id"]),
            priority=int(row["priority"]),
            key=limits.decode_key(row["concurrency_key"]),
        )
        for row in rows
    ]
    return [by_id[c.id] for c in limits.admit(candidates, policy, running, want)]


def claim_order(rows: Iterable[Row], limit: int) -> list[Row]:
    """The first ``limit`` rows in claim order (priority, then id), whichever type they are."""
    return sorted(rows, key=lambda row: (int(row["priority"]), int(row["id"])))[:limit]


def declared_policy(row: Row) -> HandlerPolicy:
    """A ``task_types`` row's policy columns as the policy they declare."""

    def number(name: str) -> float | None:
        return None if row[name] is None else float(row[name])

    def whole(name: str) -> int | None:
        return None if row[name] is None else int(row[name])

    return HandlerPolicy(
        max_attempts=whole("max_attempts"),
        backoff=backoff_from_text(row["backoff"]),
        timeout_s=number("timeout_s"),
        concurrency=whole("concurrency"),
        concurrency_per_key=whole("concurrency_per_key"),
    )


def policy_params(task_type: str, policy: HandlerPolicy) -> Params:
    """The policy columns of ``task_types`` for one declaration."""
    return {
        "type": task_type,
        "max_attempts": policy.max_attempts,
        "backoff": backoff_text(policy.backoff),
        "timeout_s": policy.timeout_s,
        "concurrency": policy.concurrency,
        "concurrency_per_key": policy.concurrency_per_key,
    }


def _decoded(value: object, column: str, defects: list[str]) -> str:
    """Text from a column read as bytes (SQLite's claim casts to BLOB so a bad byte cannot
    fail the whole fetch); bytes that are not UTF-8 become a defect, shown escaped."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            defects.append(f"{column} is not valid UTF-8 text; the task was not run")
            return value.decode("utf-8", "backslashreplace")
    return str(value)


class SqlStore(Store):
    """The store logic over two primitives: run a named query, and a short transaction."""

    @abc.abstractmethod
    def _run(self, name: str, params: Params | None = None) -> tuple[int, list[Row]]:
        """Execute query ``name`` in autocommit; return (rows matched, rows returned)."""

    def _changed(self, name: str, params: Params) -> int:
        return self._run(name, params)[0]

    def _rows(self, name: str, params: Params | None = None) -> list[Row]:
        return self._run(name, params)[1]

    @staticmethod
    def new_task_params(task: NewTask) -> Params:
        delay = seconds(task.delay_s)
        total = seconds(task.delay_s + task.budget_s)
        return {
            "type": task.type,
            "options": task.options,
            "priority": task.priority,
            "max_attempts": task.max_attempts,
            "timeout_s": task.timeout_s,
            "concurrency_key": task.concurrency_key,
            "unique_key": task.unique_key,
            "delay_s": delay["s"],
            "delay_us": delay["us"],
            "budget_s": round(task.budget_s, 3),
            "budget_us": seconds(task.budget_s)["us"],
            "total_us": total["us"],
        }

    def progress(self, claim: Claim, pct: int) -> bool:
        return self._changed("progress", {**fence(claim), "pct": max(0, min(100, pct))}) == 1

    def complete(self, claim: Claim, usage: Usage | None = None) -> bool:
        return self._changed("complete", {**fence(claim), **usage_params(usage)}) == 1

    def fail(self, claim: Claim, failure: Failure, error: str, usage: Usage | None = None) -> bool:
        params = {
            **fence(claim),
            "failure": failure.value,
            "error": trim_error(error),
            **usage_params(usage),
        }
        return self._changed("fail", params) == 1

    def requeue(self, claim: Claim, delay_s: float, error: str, usage: Usage | None = None) -> bool:
        delay = seconds(delay_s)
        params = {
            **fence(claim),
            "delay_s": delay["s"],
            "delay_us": delay["us"],
            "error": trim_error(error),
            **usage_params(usage),
        }
        return self._changed("requeue", params) == 1

    def refund(self, claim: Claim) -> bool:
        return self._changed("refund", fence(claim)) == 1

    def task_controls(self, task_ids: Sequence[int]) -> list[TaskControl]:
        if not task_ids:
            return []
        return [
            TaskControl(
                id=int(row["id"]),
                status=status_or_raw(row["status"]),
                claimed_by=row["claimed_by"],
                attempts=int(row["attempts"]),
                stack_requested_at=to_optional_datetime(row["stack_requested_at"]),
            )
            for row in self._rows("task_controls", ids_params(task_ids))
        ]

    def request_stack(self, task_id: int) -> StackRequest:
        rows = self._write_then_read("request_stack", "stack_request_of", {"id": task_id})
        if not rows:
            return StackRequest(before=None, requested_at=None, claimed_by=None)
        row = rows[0]
        return StackRequest(
            before=status_or_raw(row["status"]),
            requested_at=to_optional_datetime(row["stack_requested_at"])
            if row["status"] == Status.RUNNING.value
            else None,
            claimed_by=row["claimed_by"],
        )

    @abc.abstractmethod
    def _write_then_read(self, write: str, read: str, params: Params) -> list[Row]:
        """Run query ``write`` then ``read`` in one transaction; the rows ``read`` returned."""

    def record_stack(self, claim: Claim, stack: str, *, status: Status) -> bool:
        params = {**fence(claim), "stack": stack, "status": status.value}
        return self._changed("record_stack", params) == 1

    def rescue_expired(self, limit: int) -> Rescued:
        lost = count_types(self._sweep("rescue_lost", limit))
        requeued = self._changed("rescue_requeue", {"limit": limit})
        return Rescued(requeued=requeued, lost=lost)

    def expire_overdue(self, limit: int) -> dict[str, int]:
        return count_types(self._sweep("expire_overdue", limit))

    @abc.abstractmethod
    def _sweep(self, name: str, limit: int) -> list[str]:
        """Run a housekeeping update of at most ``limit`` rows; the types of the rows it changed."""

    def register(self, info: SupervisorInfo, ttl_s: float) -> None:
        ttl = seconds(ttl_s)
        params = {**attrs.asdict(info), "ttl_s": ttl["s"], "ttl_us": ttl["us"]}
        self._changed("register_supervisor", params)

    def deregister(self, supervisor_id: str) -> None:
        self._changed("deregister_supervisor", {"id": supervisor_id})

    def supervisors(self) -> list[SupervisorInfo]:
        return [
            SupervisorInfo(
                id=row["id"],
                host=row["host"],
                pid=int(row["pid"]),
                workers=int(row["workers"]),
                version=row["version"],
                started_at=to_datetime(row["started_at"]),
                heartbeat_at=to_datetime(row["heartbeat_at"]),
                alive=bool(row["alive"]),
            )
            for row in self._rows("list_supervisors")
        ]

    def forget_supervisors(self, dead_for_s: float) -> int:
        dead = seconds(dead_for_s)
        return self._changed("forget_supervisors", {"dead_s": dead["s"], "dead_us": dead["us"]})

    def set_paused(self, task_type: str, paused: bool) -> bool:
        before = self._rows("type_paused", {"type": task_type})
        was_paused = bool(before and before[0]["paused"])
        self._changed("set_paused", {"type": task_type, "paused": int(paused)})
        return was_paused != paused

    def paused_types(self) -> frozenset[str]:
        return frozenset(str(row["type"]) for row in self._rows("paused_types"))

    def type_infos(self) -> list[TypeInfo]:
        return [row_to_type_info(row) for row in self._rows("type_infos")]

    def utc_now(self) -> datetime:
        return to_datetime(self._rows("utc_now")[0]["now"])

    @staticmethod
    def slot_params(task: NewTask, schedule: str, slot: datetime) -> Params:
        return {"type": task.type, "schedule": schedule, "slot": slot.isoformat(sep=" ")}

    @staticmethod
    def slot_decision(mark: object, slot: datetime) -> bool:
        """Whether this transaction fires ``slot``, given the mark it read (under the lock).

        No mark: the schedule is new here; its latest slot is recorded, not fired.
        """
        return mark is not None and to_datetime(mark) < slot

    def cancel(self, task_id: int) -> Transition:
        return self._transition("cancel", task_id)

    def retry(self, task_id: int) -> Transition:
        """A task whose unique key another live task holds stays as it is (``blocked_by``).

        The read first only explains the refusal: the unique index decides, and
        a holder that appears in between makes the update fail as a StoreError.
        """
        holder = self._rows("unique_holder", {"id": task_id})
        if holder:
            before = self._rows("status_of", {"id": task_id})
            status = status_or_raw(before[0]["status"]) if before else None
            if isinstance(status, Status):
                return Transition(before=status, applied=False, blocked_by=int(holder[0]["id"]))
        return self._transition("retry", task_id)

    def _transition(self, name: str, task_id: int) -> Transition:
        """Apply an operator's transition; the status read first only explains a refusal."""
        before = self._rows("status_of", {"id": task_id})
        if not before:
            return Transition(before=None, applied=False)
        status = status_or_raw(before[0]["status"])
        if not isinstance(status, Status):  # neither transition applies; say why, in one line
            raise UnreadableRow(task_id, before[0], f"status {status!r}")
        applied = self._changed(name, {"id": task_id}) == 1
        return Transition(before=status, applied=applied)

    def prune(self, older_than_s: float, batch: int = 1000) -> int:
        """Delete in batches so a large prune never holds locks for long."""
        cutoff = seconds(older_than_s)
        params = {"older_than_s": cutoff["s"], "older_than_us": cutoff["us"], "limit": batch}
        total = 0
        while True:
            deleted = self._changed("prune", params)
            total += deleted
            if deleted < batch:
                return total

    def counts(self, *, live_only: bool = False) -> list[StatusCount]:
        """Every row counted, odd ones included: a status outside the lifecycle stays raw text."""
        return [
            StatusCount(
                type=row["type"],
                status=status_or_raw(row["status"]),
                count=int(row["count"]),
                oldest_age_s=(
                    None if row["oldest_age_s"] is None else max(0.0, float(row["oldest_age_s"]))
                ),
            )
            for row in self._rows("live_counts" if live_only else "counts")
        ]

    def find_tasks(
        self,
        where: TaskFilter,
        *,
        before_id: int | None = None,
        min_id: int | None = None,
        limit: int = 50,
    ) -> list[TaskSummary]:
        """Rows a listing cannot read (an empty status, zero dates) are left out of it.

        ``show`` displays such a row raw; one must not blank the whole page.
        """
        params = {
            **filter_params(where),
            "before_id": before_id,
            "min_id": min_id,
            "limit": limit,
            "error_head": ERROR_HEAD_CHARS,
        }
        found = []
        for row in self._rows("find_tasks", params):
            try:
                found.append(row_to_summary(row))
            except (ValueError, TypeError):
                continue
        return found

    def count_tasks(self, where: TaskFilter) -> int:
        return int(self._rows("count_tasks", filter_params(where))[0]["count"])

    def finished_counts(self, within_s: float) -> list[StatusCount]:
        window = seconds(within_s)
        params = {"within_s": window["s"], "within_us": window["us"]}
        return [
            StatusCount(
                type=row["type"],
                status=status_or_raw(row["status"]),
                count=int(row["count"]),
                oldest_age_s=None,
            )
            for row in self._rows("finished_counts", params)
        ]

    def retry_many(self, task_ids: Sequence[int]) -> int:
        return self._changed("retry_many", ids_params(task_ids)) if task_ids else 0

    def cancel_many(self, task_ids: Sequence[int]) -> int:
        return self._changed("cancel_many", ids_params(task_ids)) if task_ids else 0

    def get(self, task_id: int) -> TaskRow | None:
        """The row, or :class:`UnreadableRow` carrying it raw when it holds odd values."""
        rows = self._rows("get", {"id": task_id})
        if not rows:
            return None
        try:
            return row_to_task(rows[0])
        except (ValueError, TypeError) as exc:
            raise UnreadableRow(task_id, rows[0], str(exc)) from None

    def declare_types(
        self, supervisor_id: str, policies: Mapping[str, HandlerPolicy]
    ) -> list[Overwritten]:
        """Upsert each type's policy (never ``paused``); what it overwrote of another live one.

        The overwritten declarations are read first, outside the writes: the
        report is for a log line, and a race with another supervisor's
        declaration can only make it name the one before.
        """
        overwritten = []
        for task_type, declaring in sorted(policies.items()):
            policy = declaring.declared()
            rows = self._rows("declared_by_other", {"type": task_type, "me": supervisor_id})
            before = declared_policy(rows[0]) if rows else None
            if before is not None and before != policy:
                overwritten.append(
                    Overwritten(type=task_type, declared_by=rows[0]["declared_by"], before=before)
                )
            self._changed("declare_type", {**policy_params(task_type, policy), "me": supervisor_id})
        return overwritten

    def ping(self) -> None:
        self._rows("ping")

    @staticmethod
    def _types_list(types: Iterable[str]) -> list[str]:
        return sorted(set(types))

    @abc.abstractmethod
    def _types_param(self, types: Sequence[str]) -> object:
        """A list of types as the backend's SQL takes it (a tuple, or JSON text)."""

    @abc.abstractmethod
    def _full_keys_param(self, keys: Sequence[str]) -> object:
        """A non-empty list of keys as the backend's SQL takes it (a placeholder if none)."""

    def _key_params(self, policy: HandlerPolicy, running: limits.Running) -> Params:
        """The keys a limited claim or probe need not look at, as ``no_full_keys``/``full_keys``."""
        full = limits.full_keys(policy, running)
        return {"no_full_keys": not full, "full_keys": self._full_keys_param(full)}

    def has_claimable(
        self, types: Iterable[str], *, policies: Mapping[str, HandlerPolicy] | None = None
    ) -> bool:
        """One probe for the types without limits; for each limited type, its running counts
        and, if it has room, a probe that skips full keys. All plain reads, in autocommit."""
        type_list = self._types_list(types)
        limited = limits.limited_types(type_list, policies)
        unlimited = [t for t in type_list if t not in limited]
        if unlimited and self._rows("probe", {"types": self._types_param(unlimited)}):
            return True
        return any(self._has_room_and_work(t, policy_of(policies, t)) for t in limited)

    def _has_room_and_work(self, task_type: str, policy: HandlerPolicy) -> bool:
        running = running_of(self._rows("running_by_key", {"type": task_type}))
        if limits.room(policy, running, 1) == 0:
            return False
        params = {"type": task_type, **self._key_params(policy, running)}
        return bool(self._rows("probe_limited", params))
