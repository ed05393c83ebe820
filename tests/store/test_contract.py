"""The store contract: every operation, run unchanged on SQLite, MariaDB/MySQL and in memory.

Each test states one rule of the task lifecycle and checks it against every
backend (the ``store`` fixture gives every test a fresh one per backend).
Times are compared with the database clock, never with the test's own clock.
Leases and budgets are made tiny so that expiry is reached by a short wait:
:func:`elapse` sleeps on a real database and advances the in-memory store's
injected clock. The few rules that need SQL itself (a plain ``INSERT`` from a
producer in another language) take ``sql_store``, which covers the SQL
backends only.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pymysql
import pytest

import supervisor
from supervisor.dsn import parse_dsn
from supervisor.errors import StoreError, UnreadableRow, UsageError
from supervisor.lifecycle import (
    LAST_ERROR_LIMIT,
    MAX_ATTEMPTS_LIMIT,
    MAX_OPTIONS_BYTES,
    Failure,
    Status,
    trim_error,
)
from supervisor.store import (
    Claim,
    NewTask,
    Rescued,
    Store,
    SupervisorInfo,
    TaskRow,
    Transition,
    open_store,
)
from supervisor.store.memory import ManualClock, MemoryStore
from supervisor.store.sqlite import SqliteStore
from tests.conftest import driver_connection, migrated_store

LONG_LEASE_S = 60.0
SHORT_LEASE_S = 0.05
LEASE_RUN_OUT_S = 0.2  # comfortably longer than SHORT_LEASE_S, with clock granularity
TOLERANCE_S = 2.0  # slack for timestamps taken a few statements apart on a busy machine
CLOCK_STEP_S = 0.001  # SQLite's clock has millisecond steps, its ages float rounding


# --- backends: the ``store`` fixture of tests/store/conftest.py (SQLite, MariaDB, memory) ---


# --- helpers -------------------------------------------------------------------------------


def elapse(store: Store, seconds: float) -> None:
    """Let ``seconds`` pass on the store's clock: a real wait, or a step of a manual clock."""
    if isinstance(store, MemoryStore) and isinstance(store.clock, ManualClock):
        store.clock.advance(seconds)
    else:
        time.sleep(seconds)


def raw(store: Store, statement: str) -> list[dict[str, Any]]:
    """Run a literal statement on an SQL store's own connection (autocommit on both backends)."""
    conn: Any = store._connection()  # type: ignore[attr-defined]
    if isinstance(store, SqliteStore):
        return [dict(row) for row in conn.execute(statement).fetchall()]
    with conn.cursor() as cursor:
        cursor.execute(statement)
        return list(cursor.fetchall())


def db_now(store: Store) -> datetime:
    """The database clock, in the same time zone and form as the stored timestamps."""
    if isinstance(store, MemoryStore):
        return store.clock()
    if isinstance(store, SqliteStore):
        text = raw(store, "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now")[0]["now"]
        return datetime.fromisoformat(text)
    value = raw(store, "SELECT NOW(6) AS now")[0]["now"]
    assert isinstance(value, datetime)
    return value


def secs(earlier: datetime, later: datetime) -> float:
    return (later - earlier).total_seconds()


def enqueue(store: Store, type: str = "t", **fields: Any) -> int:
    return store.enqueue(NewTask(type=type, **fields))


def claim_one(
    store: Store, owner: str = "A", types: tuple[str, ...] = ("t",), lease_s: float = LONG_LEASE_S
) -> Claim:
    claims = store.claim(owner, types, 1, lease_s)
    assert len(claims) == 1, f"expected one claim, got {claims}"
    return claims[0]


def row(store: Store, task_id: int) -> TaskRow:
    found = store.get(task_id)
    assert found is not None, f"task {task_id} is gone"
    return found


def finished(store: Store, kind: str) -> int:
    """A task brought to the terminal state ``kind`` (completed, failed or cancelled)."""
    task_id = enqueue(store)
    if kind == "cancelled":
        assert store.cancel(task_id).applied
        return task_id
    claim = claim_one(store)
    if kind == "completed":
        assert store.complete(claim)
    else:
        assert store.fail(claim, Failure.ERROR, "boom")
    return task_id


@attrs.frozen(kw_only=True)
class Takeover:
    """A task claimed by ``stale``'s owner, lease run out, rescued, then claimed as ``current``."""

    stale: Claim
    current: Claim


def take_over(store: Store, new_owner: str) -> Takeover:
    enqueue(store)
    stale = claim_one(store, "A", lease_s=SHORT_LEASE_S)
    elapse(store, LEASE_RUN_OUT_S)
    assert store.rescue_expired(100) == Rescued(requeued=1)
    current = claim_one(store, new_owner)
    assert current.id == stale.id
    assert current.attempt == stale.attempt + 1
    return Takeover(stale=stale, current=current)


# Every write a worker makes on behalf of an attempt, reduced to "did it win its fence?".
FencedWrite = Callable[[Store, Claim], bool]
FENCED_WRITES: dict[str, FencedWrite] = {
    "progress": lambda store, claim: store.progress(claim, 50),
    "complete": lambda store, claim: store.complete(claim),
    "complete_many": lambda store, claim: claim.id in store.complete_many([claim]),
    "fail": lambda store, claim: store.fail(claim, Failure.ERROR, "late"),
    "requeue": lambda store, claim: store.requeue(claim, 0, "late"),
    "refund": lambda store, claim: store.refund(claim),
    "renew_leases": lambda store, claim: (
        claim.id in store.renew_leases(claim.owner, [claim], LONG_LEASE_S)
    ),
}


# --- enqueue -------------------------------------------------------------------------------


def test_enqueue_defaults_to_the_handlers_policy_run_now_and_a_one_hour_deadline(
    store: Store,
) -> None:
    """Nothing but a type given: queued, no explicit max_attempts (the claim decides: the
    handler's MAX_ATTEMPTS, else 3), runnable now, deadline 1 h after creation."""
    task_id = enqueue(store, "resize", options='{"path": "a.png"}')
    now = db_now(store)
    task = row(store, task_id)
    assert task.type == "resize"
    assert task.options == '{"path": "a.png"}'
    assert task.status is Status.QUEUED
    assert (task.attempts, task.max_attempts, task.priority, task.progress_pct) == (0, None, 0, 0)
    assert task.timeout_s is None and task.concurrency_key is None
    assert task.failure is None and task.last_error is None and task.claimed_by is None
    assert task.started_at is None and task.completed_at is None and task.lease_expires_at is None
    assert abs(secs(task.created_at, now)) < TOLERANCE_S
    assert abs(secs(task.created_at, task.run_at)) < TOLERANCE_S
    assert secs(task.created_at, task.deadline_at) == pytest.approx(3600, abs=TOLERANCE_S)


def test_enqueue_stores_every_field_asked_for(store: Store) -> None:
    """max_attempts, priority and the options string (any Unicode) are stored as given."""
    options = '{"name": "Grüße 😀", "n": 1}'
    task_id = enqueue(store, "mail", options=options, max_attempts=7, priority=-4)
    task = row(store, task_id)
    assert (task.options, task.max_attempts, task.priority) == (options, 7, -4)


def test_enqueue_without_options_stores_null(store: Store) -> None:
    """Options are optional; no options is NULL, not an empty string."""
    assert row(store, enqueue(store)).options is None


def test_enqueue_with_delay_is_not_runnable_before_its_time(store: Store) -> None:
    """A delay moves run_at (database clock); the budget counts from when the task is runnable."""
    task_id = enqueue(store, delay_s=30, budget_s=100)
    task = row(store, task_id)
    assert secs(db_now(store), task.run_at) == pytest.approx(30, abs=TOLERANCE_S)
    assert secs(task.run_at, task.deadline_at) == pytest.approx(100, abs=0.01)
    assert store.claim("A", ["t"], 10, LONG_LEASE_S) == []


def test_enqueue_with_short_delay_becomes_claimable_once_the_delay_passed(store: Store) -> None:
    """run_at is "not before": once reached, the task is claimed like any other."""
    task_id = enqueue(store, delay_s=1.0)
    assert store.claim("A", ["t"], 10, LONG_LEASE_S) == []
    elapse(store, 1.2)
    assert [c.id for c in store.claim("A", ["t"], 10, LONG_LEASE_S)] == [task_id]


def test_enqueue_with_budget_sets_the_deadline(store: Store) -> None:
    """deadline_at = created_at + budget (per task)."""
    task = row(store, enqueue(store, budget_s=42.5))
    assert secs(task.created_at, task.deadline_at) == pytest.approx(42.5, abs=0.01)


def test_enqueue_many_returns_ids_in_order(store: Store) -> None:
    """One id per task, in the order given, each row matching its request."""
    types = ["a", "b", "c", "a"]
    ids = store.enqueue_many([NewTask(type=t, priority=i) for i, t in enumerate(types)])
    assert len(ids) == len(set(ids)) == 4
    assert ids == sorted(ids)
    assert [(row(store, i).type, row(store, i).priority) for i in ids] == list(
        zip(types, range(4), strict=True)
    )


def test_enqueue_many_of_nothing_inserts_nothing(store: Store) -> None:
    assert store.enqueue_many([]) == []
    assert store.counts() == []


def test_enqueue_many_is_all_or_nothing(store: Store) -> None:
    """One bad task rolls back the whole batch: no half-enqueued batches."""
    bad = NewTask(type=None)  # type: ignore[arg-type]  # violates NOT NULL on both backends
    with pytest.raises(StoreError):
        store.enqueue_many([NewTask(type="t"), bad])
    assert store.counts() == []
    assert store.claim("A", ["t"], 10, LONG_LEASE_S) == []


def test_plain_sql_insert_is_a_complete_enqueue(sql_store: Store) -> None:
    """A producer in any language: INSERT INTO tasks (type, task_options) and nothing else."""
    store = sql_store
    raw(store, """INSERT INTO tasks (type, task_options) VALUES ('resize', '{"path": "a.png"}')""")
    (task_id,) = [int(r["id"]) for r in raw(store, "SELECT id FROM tasks")]
    task = row(store, task_id)
    assert task.status is Status.QUEUED
    assert (task.attempts, task.max_attempts, task.priority, task.progress_pct) == (0, None, 0, 0)
    assert secs(task.created_at, task.deadline_at) == pytest.approx(3600, abs=TOLERANCE_S)
    assert abs(secs(task.created_at, task.run_at)) < TOLERANCE_S
    claim = claim_one(store, types=("resize",))
    assert claim.id == task_id
    assert claim.options == '{"path": "a.png"}'
    assert (claim.attempt, claim.max_attempts) == (1, 3)
    assert row(store, task_id).max_attempts == 3, "the claim writes the effective value"
    assert claim.remaining_s == pytest.approx(3600, abs=TOLERANCE_S)


# --- claim ---------------------------------------------------------------------------------


def test_claim_takes_only_the_given_types(store: Store) -> None:
    """A supervisor claims only types it has handlers for; the others stay queued."""
    a, b, c = enqueue(store, "a"), enqueue(store, "b"), enqueue(store, "c")
    claimed = store.claim("A", ["a", "c"], 10, LONG_LEASE_S)
    assert sorted(x.id for x in claimed) == [a, c]
    assert row(store, b).status is Status.QUEUED


def test_claim_matches_type_names_exactly(store: Store) -> None:
    """Type names are case-sensitive on both backends (handler file names are)."""
    enqueue(store, "Resize")
    assert store.claim("A", ["resize"], 10, LONG_LEASE_S) == []
    assert len(store.claim("A", ["Resize"], 10, LONG_LEASE_S)) == 1


def test_claim_with_no_types_or_no_room_claims_nothing(store: Store) -> None:
    task_id = enqueue(store)
    assert store.claim("A", [], 10, LONG_LEASE_S) == []
    assert store.claim("A", ["t"], 0, LONG_LEASE_S) == []
    assert row(store, task_id).status is Status.QUEUED


def test_claim_orders_by_priority_smaller_first_then_by_id(store: Store) -> None:
    """Priority is like nice: smaller runs first; ties go in enqueue order."""
    ids = {p: enqueue(store, priority=p) for p in (5, 0, -3)}
    second_zero = enqueue(store, priority=0)
    claimed = store.claim("A", ["t"], 10, LONG_LEASE_S)
    assert [c.id for c in claimed] == [ids[-3], ids[0], second_zero, ids[5]]


def test_claim_respects_priority_across_batches(store: Store) -> None:
    """The order holds batch after batch, not only within one claim."""
    low = [enqueue(store, priority=9) for _ in range(3)]
    high = [enqueue(store, priority=1) for _ in range(3)]
    first = [c.id for c in store.claim("A", ["t"], 2, LONG_LEASE_S)]
    second = [c.id for c in store.claim("A", ["t"], 2, LONG_LEASE_S)]
    third = [c.id for c in store.claim("A", ["t"], 2, LONG_LEASE_S)]
    assert first + second + third == high + low


def test_claim_respects_the_limit(store: Store) -> None:
    ids = [enqueue(store) for _ in range(5)]
    first = store.claim("A", ["t"], 2, LONG_LEASE_S)
    rest = store.claim("A", ["t"], 10, LONG_LEASE_S)
    assert [c.id for c in first] == ids[:2]
    assert [c.id for c in rest] == ids[2:]
    assert store.claim("A", ["t"], 10, LONG_LEASE_S) == []


def test_claim_never_hands_out_a_running_task_again(store: Store) -> None:
    enqueue(store)
    claim_one(store, "A")
    assert store.claim("B", ["t"], 10, LONG_LEASE_S) == []


def test_claim_skips_tasks_whose_deadline_passed(store: Store) -> None:
    """A queued task past its deadline is never started (it waits for expire_overdue)."""
    task_id = enqueue(store, budget_s=0.1)
    elapse(store, 0.3)
    assert store.claim("A", ["t"], 10, LONG_LEASE_S) == []
    assert row(store, task_id).status is Status.QUEUED


def test_claim_marks_the_row_running_for_its_owner_with_a_lease(store: Store) -> None:
    """The claim itself increments attempts and sets claimed_by, started_at and the lease."""
    task_id = enqueue(store, options="opts", max_attempts=5)
    claim = claim_one(store, "host-1:42", lease_s=30)
    now = db_now(store)
    assert claim == Claim(
        id=task_id,
        type="t",
        options="opts",
        attempt=1,
        max_attempts=5,
        owner="host-1:42",
        remaining_s=claim.remaining_s,
    )
    task = row(store, task_id)
    assert task.status is Status.RUNNING
    assert (task.attempts, task.claimed_by, task.progress_pct) == (1, "host-1:42", 0)
    assert task.started_at is not None and abs(secs(task.started_at, now)) < TOLERANCE_S
    assert task.lease_expires_at is not None
    assert secs(now, task.lease_expires_at) == pytest.approx(30, abs=TOLERANCE_S)


def test_claim_returns_the_remaining_budget_by_the_database_clock(store: Store) -> None:
    """remaining_s = deadline_at - database now, at the moment of the claim."""
    task_id = enqueue(store, budget_s=100)
    elapse(store, 0.3)
    claim = claim_one(store)
    now = db_now(store)
    by_database = secs(now, row(store, task_id).deadline_at)
    assert claim.remaining_s == pytest.approx(by_database, abs=TOLERANCE_S / 2)
    assert 99.0 - TOLERANCE_S < claim.remaining_s < 99.8


def test_each_claim_of_the_same_task_counts_one_more_attempt(store: Store) -> None:
    task_id = enqueue(store)
    first = claim_one(store)
    assert store.requeue(first, 0, "boom")
    second = claim_one(store)
    assert (first.attempt, second.attempt) == (1, 2)
    assert row(store, task_id).attempts == 2


# --- progress ------------------------------------------------------------------------------


def test_progress_is_recorded(store: Store) -> None:
    task_id = enqueue(store)
    claim = claim_one(store)
    assert store.progress(claim, 40)
    assert row(store, task_id).progress_pct == 40


@pytest.mark.parametrize(("reported", "stored"), [(-5, 0), (0, 0), (100, 100), (250, 100)])
def test_progress_is_clamped_to_0_100(store: Store, reported: int, stored: int) -> None:
    task_id = enqueue(store)
    claim = claim_one(store)
    assert store.progress(claim, 50)
    assert store.progress(claim, reported)
    assert row(store, task_id).progress_pct == stored


def test_progress_of_an_unchanged_value_still_wins(store: Store) -> None:
    """Writing the same value twice changes nothing, yet the claim is still held: report won."""
    enqueue(store)
    claim = claim_one(store)
    assert store.progress(claim, 30)
    assert store.progress(claim, 30)


def test_progress_of_a_finished_task_loses(store: Store) -> None:
    enqueue(store)
    claim = claim_one(store)
    assert store.complete(claim)
    assert not store.progress(claim, 10)


# --- complete ------------------------------------------------------------------------------


def test_complete_finishes_the_task_and_clears_any_earlier_error(store: Store) -> None:
    """completed: progress 100, completed_at set, no failure, no last_error, no lease."""
    task_id = enqueue(store)
    assert store.requeue(claim_one(store), 0, "first attempt failed")
    claim = claim_one(store)
    assert store.progress(claim, 20)
    assert store.complete(claim)
    now = db_now(store)
    task = row(store, task_id)
    assert task.status is Status.COMPLETED
    assert task.progress_pct == 100
    assert task.failure is None and task.last_error is None
    assert task.lease_expires_at is None
    assert task.completed_at is not None and abs(secs(task.completed_at, now)) < TOLERANCE_S
    assert task.attempts == 2


def test_complete_twice_wins_only_once(store: Store) -> None:
    enqueue(store)
    claim = claim_one(store)
    assert store.complete(claim)
    assert not store.complete(claim)


def test_complete_many_completes_every_claim_and_returns_their_ids(store: Store) -> None:
    for _ in range(4):
        enqueue(store)
    claims = store.claim("A", ["t"], 10, LONG_LEASE_S)
    enqueue(store)
    claims.append(claim_one(store, "B"))  # several owners in one batch
    assert store.complete_many(claims) == {c.id for c in claims}
    for claim in claims:
        task = row(store, claim.id)
        assert task.status is Status.COMPLETED
        assert task.progress_pct == 100
        assert task.completed_at is not None
        assert task.failure is None and task.last_error is None


def test_complete_many_of_nothing_wins_nothing(store: Store) -> None:
    assert store.complete_many([]) == set()


def test_complete_many_returns_only_the_ids_that_won(store: Store) -> None:
    """A batch mixing held and lost claims completes the held ones and names exactly them."""
    takeover = take_over(store, "B")
    enqueue(store)
    enqueue(store)
    held = store.claim("A", ["t"], 10, LONG_LEASE_S)
    before = row(store, takeover.current.id)
    assert store.complete_many([*held, takeover.stale]) == {c.id for c in held}
    assert row(store, takeover.current.id) == before
    assert all(row(store, c.id).status is Status.COMPLETED for c in held)


def test_complete_many_twice_wins_only_once(store: Store) -> None:
    """Like complete: a second completion of the same attempts changes nothing and wins nothing."""
    for _ in range(2):
        enqueue(store)
    claims = store.claim("A", ["t"], 10, LONG_LEASE_S)
    assert store.complete_many(claims) == {c.id for c in claims}
    assert store.complete_many(claims) == set()


# --- fail ----------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", list(Failure))
def test_fail_records_the_failure_kind_and_error(store: Store, failure: Failure) -> None:
    """Every terminal failure sets status, failure, last_error and completed_at together."""
    task_id = enqueue(store)
    claim = claim_one(store)
    assert store.fail(claim, failure, f"it went wrong: {failure}")
    now = db_now(store)
    task = row(store, task_id)
    assert task.status is Status.FAILED
    assert task.failure is failure
    assert task.last_error == f"it went wrong: {failure}"
    assert task.completed_at is not None and abs(secs(task.completed_at, now)) < TOLERANCE_S
    assert task.lease_expires_at is None
    assert task.attempts == 1


def test_fail_with_attempts_left_is_still_terminal(store: Store) -> None:
    """fail is final whatever attempts remain: the task is never claimed again."""
    enqueue(store, max_attempts=5)
    assert store.fail(claim_one(store), Failure.PANIC, "child died")
    assert store.claim("A", ["t"], 10, LONG_LEASE_S) == []


def test_fail_trims_a_huge_error(store: Store) -> None:
    """last_error stays bounded: head and tail of a long traceback are kept."""
    task_id = enqueue(store)
    error = "Traceback (most recent call last):\n" + "x" * 200_000 + "\nValueError: the end"
    assert store.fail(claim_one(store), Failure.ERROR, error)
    stored = row(store, task_id).last_error
    assert stored == trim_error(error)
    assert stored is not None and len(stored) <= LAST_ERROR_LIMIT
    assert stored.startswith("Traceback") and stored.endswith("ValueError: the end")


def test_fail_stores_a_longest_error_of_four_byte_characters(store: Store) -> None:
    """An error at the length limit made of 4-byte UTF-8 characters still fits the column."""
    task_id = enqueue(store)
    error = "😀" * LAST_ERROR_LIMIT
    assert store.fail(claim_one(store), Failure.ERROR, error)
    assert row(store, task_id).last_error == trim_error(error)


# --- requeue -------------------------------------------------------------------------------


def test_requeue_puts_the_task_back_after_the_backoff_by_the_database_clock(store: Store) -> None:
    """run_at = database now + delay; the attempt stays used; the owner lets go."""
    task_id = enqueue(store)
    claim = claim_one(store)
    assert store.requeue(claim, 30, "boom")
    now = db_now(store)
    task = row(store, task_id)
    assert task.status is Status.QUEUED
    assert secs(now, task.run_at) == pytest.approx(30, abs=TOLERANCE_S)
    assert task.attempts == 1
    assert task.last_error == "boom"
    assert task.failure is None
    assert task.claimed_by is None and task.lease_expires_at is None
    assert store.claim("B", ["t"], 10, LONG_LEASE_S) == []


def test_requeued_task_is_claimable_once_its_backoff_passed(store: Store) -> None:
    task_id = enqueue(store)
    assert store.requeue(claim_one(store), 1.0, "boom")
    assert store.claim("A", ["t"], 10, LONG_LEASE_S) == []
    elapse(store, 1.2)
    again = claim_one(store, "B")
    assert (again.id, again.attempt) == (task_id, 2)


def test_requeue_with_no_delay_is_claimable_at_once(store: Store) -> None:
    enqueue(store)
    assert store.requeue(claim_one(store), 0, "boom")
    assert claim_one(store).attempt == 2


def test_requeue_keeps_the_deadline(store: Store) -> None:
    """Retries spend the same budget: requeue never moves deadline_at."""
    task_id = enqueue(store, budget_s=100)
    deadline = row(store, task_id).deadline_at
    assert store.requeue(claim_one(store), 5, "boom")
    assert row(store, task_id).deadline_at == deadline


# --- refund --------------------------------------------------------------------------------


def test_refund_puts_the_task_back_as_if_the_attempt_never_started(store: Store) -> None:
    """Drain deadline: back to queued, attempts decremented, runnable at once."""
    task_id = enqueue(store)
    claim = claim_one(store)
    assert store.progress(claim, 60)
    assert store.refund(claim)
    task = row(store, task_id)
    assert task.status is Status.QUEUED
    assert task.attempts == 0
    assert task.progress_pct == 0
    assert task.claimed_by is None and task.started_at is None and task.lease_expires_at is None
    again = claim_one(store, "B")
    assert (again.id, again.attempt) == (task_id, 1)


# --- leases --------------------------------------------------------------------------------


def test_renew_leases_extends_the_leases_still_held(store: Store) -> None:
    ids = [enqueue(store) for _ in range(3)]
    claims = store.claim("A", ["t"], 10, 5)
    assert store.renew_leases("A", claims, 120) == set(ids)
    now = db_now(store)
    for task_id in ids:
        lease = row(store, task_id).lease_expires_at
        assert lease is not None
        assert secs(now, lease) == pytest.approx(120, abs=TOLERANCE_S)


def test_renew_leases_of_nothing_holds_nothing(store: Store) -> None:
    assert store.renew_leases("A", [], LONG_LEASE_S) == set()


def test_renew_leases_leaves_out_tasks_taken_over_finished_or_cancelled(store: Store) -> None:
    """Only tasks still running under this owner and attempt count as held."""
    takeover = take_over(store, "B")
    for _ in range(3):
        enqueue(store)
    held, done, cancelled = store.claim("A", ["t"], 10, LONG_LEASE_S)
    assert store.complete(done)
    assert store.cancel(cancelled.id).applied
    before = row(store, takeover.current.id)
    renewed = store.renew_leases("A", [takeover.stale, held, done, cancelled], LONG_LEASE_S)
    assert renewed == {held.id}
    assert row(store, takeover.current.id) == before


def test_renew_leases_keeps_a_task_from_being_rescued(store: Store) -> None:
    task_id = enqueue(store)
    claim = claim_one(store, lease_s=SHORT_LEASE_S)
    assert store.renew_leases("A", [claim], LONG_LEASE_S) == {task_id}
    elapse(store, LEASE_RUN_OUT_S)
    assert store.rescue_expired(100) == Rescued(requeued=0)
    assert store.complete(claim)


def test_cancelled_claims_names_the_lost_attempts_an_operator_cancelled(store: Store) -> None:
    """A lost claim is ``cancelled`` only if the cancel hit this owner's own attempt."""
    takeover = take_over(store, "B")
    assert store.cancel(takeover.current.id).applied  # cancelled under B's attempt, not A's
    for _ in range(4):
        enqueue(store)
    held, done, cancelled, requeued_then_cancelled = store.claim("A", ["t"], 10, LONG_LEASE_S)
    assert store.complete(done)
    assert store.cancel(cancelled.id).applied
    assert store.requeue(requeued_then_cancelled, 0, "again")
    assert store.cancel(requeued_then_cancelled.id).applied
    claims = [takeover.stale, held, done, cancelled, requeued_then_cancelled]

    assert store.cancelled_claims("A", claims) == {cancelled.id}
    assert store.cancelled_claims("B", [takeover.current]) == {takeover.current.id}
    assert store.cancelled_claims("A", []) == set()


def test_rescue_requeues_a_task_whose_lease_ran_out_with_the_attempt_counted(store: Store) -> None:
    task_id = enqueue(store)
    claim_one(store, "host-a", lease_s=SHORT_LEASE_S)
    elapse(store, LEASE_RUN_OUT_S)
    assert store.rescue_expired(100) == Rescued(requeued=1)
    task = row(store, task_id)
    assert task.status is Status.QUEUED
    assert task.attempts == 1
    assert task.claimed_by is None and task.lease_expires_at is None
    assert task.last_error is not None and "host-a" in task.last_error
    assert claim_one(store, "B").attempt == 2


def test_rescue_fails_a_task_lost_on_its_last_attempt(store: Store) -> None:
    """A poison pill that keeps killing its supervisor stops at max_attempts."""
    task_id = enqueue(store, max_attempts=1)
    claim_one(store, "host-a", lease_s=SHORT_LEASE_S)
    elapse(store, LEASE_RUN_OUT_S)
    assert store.rescue_expired(100) == Rescued(requeued=0, lost={"t": 1})
    task = row(store, task_id)
    assert task.status is Status.FAILED
    assert task.failure is Failure.LOST
    assert task.last_error is not None and "host-a" in task.last_error
    assert task.completed_at is not None
    assert task.lease_expires_at is None
    assert store.claim("B", ["t"], 10, LONG_LEASE_S) == []


def test_rescue_leaves_live_leases_and_other_statuses_alone(store: Store) -> None:
    live = enqueue(store)
    claim_one(store, lease_s=LONG_LEASE_S)
    queued = enqueue(store)
    done = finished(store, "completed")
    before = [row(store, i) for i in (live, queued, done)]
    elapse(store, LEASE_RUN_OUT_S)
    assert store.rescue_expired(100) == Rescued(requeued=0)
    assert [row(store, i) for i in (live, queued, done)] == before


def test_rescue_handles_at_most_limit_tasks_per_call(store: Store) -> None:
    for _ in range(3):
        enqueue(store)
    store.claim("A", ["t"], 10, SHORT_LEASE_S)
    elapse(store, LEASE_RUN_OUT_S)
    assert store.rescue_expired(2) == Rescued(requeued=2)
    assert store.rescue_expired(2) == Rescued(requeued=1)


# --- fencing: a supervisor that lost its claim can never overwrite the new owner -----------


@pytest.mark.parametrize("write", FENCED_WRITES.values(), ids=FENCED_WRITES.keys())
def test_writes_of_a_rescued_owner_lose_and_leave_the_new_owner_untouched(
    store: Store, write: FencedWrite
) -> None:
    """A's lease expired, the task was rescued and claimed by B: every write by A loses."""
    takeover = take_over(store, "B")
    assert store.progress(takeover.current, 10)
    before = row(store, takeover.current.id)
    assert not write(store, takeover.stale)
    assert row(store, takeover.current.id) == before
    assert store.complete(takeover.current)


@pytest.mark.parametrize("write", FENCED_WRITES.values(), ids=FENCED_WRITES.keys())
def test_writes_with_a_stale_attempt_number_lose(store: Store, write: FencedWrite) -> None:
    """Same owner, later attempt: a write for the earlier attempt loses."""
    takeover = take_over(store, "A")
    assert takeover.stale.owner == takeover.current.owner
    before = row(store, takeover.current.id)
    assert not write(store, takeover.stale)
    assert row(store, takeover.current.id) == before
    assert store.complete(takeover.current)


@pytest.mark.parametrize("write", FENCED_WRITES.values(), ids=FENCED_WRITES.keys())
def test_writes_with_an_attempt_number_from_the_future_lose(
    store: Store, write: FencedWrite
) -> None:
    task_id = enqueue(store)
    claim = claim_one(store)
    before = row(store, task_id)
    assert not write(store, attrs.evolve(claim, attempt=claim.attempt + 1))
    assert row(store, task_id) == before


@pytest.mark.parametrize("write", FENCED_WRITES.values(), ids=FENCED_WRITES.keys())
def test_writes_in_the_name_of_another_owner_lose(store: Store, write: FencedWrite) -> None:
    task_id = enqueue(store)
    claim = claim_one(store, "A")
    before = row(store, task_id)
    assert not write(store, attrs.evolve(claim, owner="B"))
    assert row(store, task_id) == before


@pytest.mark.parametrize("write", FENCED_WRITES.values(), ids=FENCED_WRITES.keys())
def test_writes_after_an_operator_cancelled_the_task_lose(store: Store, write: FencedWrite) -> None:
    task_id = enqueue(store)
    claim = claim_one(store)
    assert store.cancel(task_id).applied
    before = row(store, task_id)
    assert not write(store, claim)
    assert row(store, task_id) == before


# --- expire_overdue ------------------------------------------------------------------------


def test_expire_overdue_fails_queued_tasks_past_their_deadline(store: Store) -> None:
    overdue = enqueue(store, "nobody-handles-this", budget_s=0.1)
    fresh = enqueue(store, budget_s=3600)
    elapse(store, 0.3)
    assert store.expire_overdue(100) == {"nobody-handles-this": 1}
    task = row(store, overdue)
    assert task.status is Status.FAILED
    assert task.failure is Failure.EXPIRED
    assert task.last_error
    assert task.completed_at is not None
    assert task.attempts == 0
    assert row(store, fresh).status is Status.QUEUED


def test_expire_overdue_leaves_running_tasks_to_their_supervisor(store: Store) -> None:
    """A running task past its deadline is the supervisor's to kill (timeout), not expired."""
    task_id = enqueue(store, budget_s=1.0)
    claim_one(store)
    elapse(store, 1.2)
    assert store.expire_overdue(100) == {}
    assert row(store, task_id).status is Status.RUNNING


def test_expire_overdue_handles_at_most_limit_tasks_per_call(store: Store) -> None:
    for _ in range(3):
        enqueue(store, budget_s=0.1)
    elapse(store, 0.3)
    assert sum(store.expire_overdue(2).values()) == 2
    assert sum(store.expire_overdue(2).values()) == 1
    assert store.expire_overdue(2) == {}


# --- cancel --------------------------------------------------------------------------------


def test_cancel_a_queued_task(store: Store) -> None:
    task_id = enqueue(store)
    assert store.cancel(task_id) == Transition(before=Status.QUEUED, applied=True)
    task = row(store, task_id)
    assert task.status is Status.CANCELLED
    assert task.failure is None
    assert task.completed_at is not None
    assert store.claim("A", ["t"], 10, LONG_LEASE_S) == []


def test_cancel_a_running_task(store: Store) -> None:
    """The owner sees it at its next renew: the task is no longer held."""
    task_id = enqueue(store)
    claim = claim_one(store)
    assert store.cancel(task_id) == Transition(before=Status.RUNNING, applied=True)
    task = row(store, task_id)
    assert task.status is Status.CANCELLED
    assert task.lease_expires_at is None
    assert store.renew_leases("A", [claim], LONG_LEASE_S) == set()


@pytest.mark.parametrize("kind", ["completed", "failed", "cancelled"])
def test_cancel_refuses_a_finished_task(store: Store, kind: str) -> None:
    task_id = finished(store, kind)
    before = row(store, task_id)
    assert store.cancel(task_id) == Transition(before=Status(kind), applied=False)
    assert row(store, task_id) == before


def test_cancel_of_an_unknown_task_finds_nothing(store: Store) -> None:
    assert store.cancel(424242) == Transition(before=None, applied=False)


# --- retry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["failed", "cancelled"])
def test_retry_puts_a_failed_or_cancelled_task_back_with_fresh_attempts(
    store: Store, kind: str
) -> None:
    task_id = finished(store, kind)
    assert store.retry(task_id) == Transition(before=Status(kind), applied=True)
    task = row(store, task_id)
    assert task.status is Status.QUEUED
    assert task.attempts == 0
    assert task.failure is None
    assert task.completed_at is None and task.claimed_by is None
    again = claim_one(store, "B")
    assert (again.id, again.attempt) == (task_id, 1)


def test_retry_gives_a_fresh_budget(store: Store) -> None:
    """An expired task can run again: the deadline is now + its original budget."""
    task_id = enqueue(store, budget_s=1.0)
    elapse(store, 1.2)
    assert sum(store.expire_overdue(100).values()) == 1
    assert store.retry(task_id).applied
    claim = claim_one(store)
    assert 0 < claim.remaining_s <= 1.0 + 5 * CLOCK_STEP_S
    task = row(store, task_id)
    assert secs(task.run_at, task.deadline_at) == pytest.approx(1.0, abs=0.01)
    assert abs(secs(task.run_at, db_now(store))) < TOLERANCE_S


@pytest.mark.parametrize("kind", ["queued", "running", "completed"])
def test_retry_refuses_a_live_or_completed_task(store: Store, kind: str) -> None:
    task_id = enqueue(store)
    if kind != "queued":
        claim = claim_one(store)
        if kind == "completed":
            assert store.complete(claim)
    before = row(store, task_id)
    assert store.retry(task_id) == Transition(before=Status(kind), applied=False)
    assert row(store, task_id) == before


def test_retry_of_an_unknown_task_finds_nothing(store: Store) -> None:
    assert store.retry(424242) == Transition(before=None, applied=False)


# --- prune ---------------------------------------------------------------------------------


def test_prune_deletes_only_finished_tasks_older_than_the_cutoff(store: Store) -> None:
    old = [finished(store, kind) for kind in ("completed", "failed", "cancelled")]
    elapse(store, 1.0)
    recent = finished(store, "completed")
    queued = enqueue(store)
    running = enqueue(store)
    claim_one(store)
    assert store.prune(0.6) == 3
    assert all(store.get(i) is None for i in old)
    assert all(store.get(i) is not None for i in (recent, queued, running))


def test_prune_never_deletes_live_tasks_whatever_the_cutoff(store: Store) -> None:
    queued = enqueue(store, budget_s=0.1)  # overdue but still queued: not pruned
    enqueue(store)
    running = claim_one(store).id
    elapse(store, 0.3)
    assert store.prune(0) == 0
    assert store.get(queued) is not None and store.get(running) is not None


def test_prune_keeps_finished_tasks_younger_than_the_cutoff(store: Store) -> None:
    task_id = finished(store, "completed")
    assert store.prune(3600) == 0
    assert store.get(task_id) is not None


def test_prune_deletes_everything_eligible_in_several_batches(store: Store) -> None:
    for _ in range(5):
        finished(store, "cancelled")
    elapse(store, 0.1)
    assert store.prune(0, batch=2) == 5  # type: ignore[call-arg]
    assert store.counts() == []


# --- counts and get ------------------------------------------------------------------------


def test_counts_by_type_and_status(store: Store) -> None:
    enqueue(store, "a")
    enqueue(store, "a")
    enqueue(store, "b")
    claim_one(store, types=("b",))
    finished(store, "completed")
    counts = store.counts()
    assert [(c.type, c.status, c.count) for c in counts] == [
        ("a", Status.QUEUED, 2),
        ("b", Status.RUNNING, 1),
        ("t", Status.COMPLETED, 1),
    ]


def test_counts_report_the_age_of_the_oldest_task(store: Store) -> None:
    enqueue(store, "a")
    elapse(store, 0.5)
    enqueue(store, "a")
    (count,) = store.counts()
    assert 0.5 - CLOCK_STEP_S <= count.oldest_age_s < 0.5 + TOLERANCE_S


def test_counts_age_a_queued_task_from_when_it_became_due_not_from_its_creation(
    store: Store,
) -> None:
    """A delayed task is not waiting before its run_at: the head of the queue's wait starts then."""
    enqueue(store, delay_s=60)
    elapse(store, 0.5)
    (not_due,) = store.counts()
    assert not_due.oldest_age_s == 0.0

    enqueue(store, "due", delay_s=1.0)
    elapse(store, 1.3)
    due = next(c for c in store.counts() if c.type == "due")
    assert 0.3 - CLOCK_STEP_S <= due.oldest_age_s < 1.0  # from creation it would be 1.3 or more


def test_counts_and_get_survive_zero_dates_a_plain_insert_left(sql_store: Store) -> None:
    """Zero dates (a permissive MariaDB's answer to an impossible date, or plain text in
    SQLite) neither crash nor skew the oldest age; ``get`` hands the row over raw.
    """
    store = sql_store
    if not isinstance(store, SqliteStore):
        raw(store, "SET SESSION sql_mode = ''")
    enqueue(store)
    elapse(store, 0.3)
    zero = "'0000-00-00 00:00:00'"
    for task_type in ("t", "z"):
        raw(
            store,
            "INSERT INTO tasks (type, created_at, run_at, deadline_at, updated_at)"
            f" VALUES ('{task_type}', {zero}, {zero}, {zero}, {zero})",
        )
    counts = {c.type: c for c in store.counts()}
    assert (counts["t"].count, counts["z"].count) == (2, 1)
    assert counts["t"].oldest_age_s is not None
    assert 0.3 - CLOCK_STEP_S <= counts["t"].oldest_age_s < 0.3 + TOLERANCE_S
    assert counts["z"].oldest_age_s is None  # no readable date: unknown, not 2,000 years

    zero_id = max(int(r["id"]) for r in raw(store, "SELECT id FROM tasks"))
    with pytest.raises(UnreadableRow, match=f"task {zero_id}") as caught:
        store.get(zero_id)
    assert caught.value.fields["type"] == "z"
    assert str(caught.value.fields["created_at"]).startswith("0000-00-00 00:00:00")


def test_get_of_an_unknown_task_is_none(store: Store) -> None:
    assert store.get(424242) is None


def test_get_returns_the_whole_row(store: Store) -> None:
    task_id = enqueue(store, "mail", options="x", priority=3, max_attempts=4)
    claim = claim_one(store, "owner-1", types=("mail",))
    assert store.progress(claim, 12)
    task = row(store, task_id)
    assert (task.id, task.type, task.status, task.options) == (task_id, "mail", Status.RUNNING, "x")
    assert (task.priority, task.attempts, task.max_attempts, task.progress_pct) == (3, 1, 4, 12)
    assert task.claimed_by == "owner-1"
    for stamp in (task.created_at, task.run_at, task.deadline_at, task.updated_at):
        assert isinstance(stamp, datetime)
    assert task.created_at <= task.updated_at


def test_ping_answers(store: Store) -> None:
    store.ping()


def test_close_then_use_reconnects(store: Store) -> None:
    task_id = enqueue(store)
    store.close()
    assert row(store, task_id).status is Status.QUEUED


# --- enqueue_in_transaction: the producer's own connection and transaction -----------------


def _pymysql_connection(mysql_dsn: str) -> pymysql.connections.Connection[Any]:
    connection: pymysql.connections.Connection[Any] = driver_connection(
        mysql_dsn, autocommit=False
    )
    return connection


@pytest.mark.mysql
def test_enqueue_in_transaction_on_pymysql_exists_only_if_the_caller_commits(
    mysql_dsn: str,
) -> None:
    store = open_store(parse_dsn(mysql_dsn))
    store.migrate()
    conn = _pymysql_connection(mysql_dsn)
    try:
        rolled_back = supervisor.enqueue_in_transaction(conn, "t", "opts")
        assert store.get(rolled_back) is None
        assert store.claim("A", ["t"], 10, LONG_LEASE_S) == []
        conn.rollback()
        assert store.get(rolled_back) is None

        committed = supervisor.enqueue_in_transaction(conn, "t", "opts", priority=2, budget=60)
        assert store.get(committed) is None
        conn.commit()
        claim = claim_one(store)
        assert (claim.id, claim.options, claim.attempt, claim.max_attempts) == (
            committed,
            "opts",
            1,
            3,
        )
        assert claim.remaining_s == pytest.approx(60, abs=TOLERANCE_S)
        assert store.get(rolled_back) is None
    finally:
        conn.close()
        store.close()


def test_enqueue_in_transaction_on_sqlite3_exists_only_if_the_caller_commits(
    sqlite_dsn: str,
) -> None:
    store = open_store(parse_dsn(sqlite_dsn))
    store.migrate()
    path = sqlite_dsn.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    try:
        rolled_back = supervisor.enqueue_in_transaction(conn, "t", "opts")
        assert conn.in_transaction
        assert store.get(rolled_back) is None
        conn.rollback()
        assert store.get(rolled_back) is None

        committed = supervisor.enqueue_in_transaction(conn, "t", "opts", delay=0, max_attempts=2)
        assert store.get(committed) is None
        conn.commit()
        claim = claim_one(store)
        assert (claim.id, claim.options, claim.attempt, claim.max_attempts) == (
            committed,
            "opts",
            1,
            2,
        )
    finally:
        conn.close()
        store.close()


def test_enqueue_in_transaction_validates_before_writing(sqlite_dsn: str) -> None:
    store = open_store(parse_dsn(sqlite_dsn))
    store.migrate()
    conn = sqlite3.connect(Path(sqlite_dsn.removeprefix("sqlite:///")))
    try:
        with pytest.raises(UsageError):
            supervisor.enqueue_in_transaction(conn, "no spaces allowed")
        with pytest.raises(UsageError):
            supervisor.enqueue_in_transaction(conn, "t", max_attempts=0)
        assert not conn.in_transaction
        assert store.counts() == []
    finally:
        conn.close()
        store.close()


# --- pause and resume: the fleet's switch per type -----------------------------------------


def test_a_type_nobody_knows_can_be_paused_and_resumed(store: Store) -> None:
    """The producer may come first: pausing an unknown type records it, with no policy."""
    assert store.paused_types() == frozenset()
    assert store.set_paused("later", True) is True
    assert store.paused_types() == {"later"}
    (info,) = store.type_infos()
    assert (info.type, info.paused, info.policy, info.declared_by) == ("later", True, None, None)
    assert info.paused_at is not None and abs(secs(info.paused_at, db_now(store))) < TOLERANCE_S
    assert store.set_paused("later", False) is True
    assert store.paused_types() == frozenset()
    (info,) = store.type_infos()
    assert (info.paused, info.paused_at) == (False, None)


def test_pausing_twice_changes_nothing_and_keeps_the_first_pause_time(store: Store) -> None:
    assert store.set_paused("t", True) is True
    first = store.type_infos()[0].paused_at
    elapse(store, 0.01)
    assert store.set_paused("t", True) is False
    assert store.type_infos()[0].paused_at == first
    assert store.set_paused("u", False) is False, "resuming a type never paused is no change"
    assert store.paused_types() == {"t"}


def test_pause_changes_no_task_and_running_ones_finish(store: Store) -> None:
    """Pausing is a switch the claimers read: rows keep their status, a running task completes."""
    enqueue(store, "t")
    running = claim_one(store, types=("t",))
    waiting = enqueue(store, "t")
    store.set_paused("t", True)
    assert row(store, running.id).status is Status.RUNNING
    assert row(store, waiting).status is Status.QUEUED
    assert store.complete(running)
    assert store.paused_types() == {"t"}


# --- schedule slots: each fires once, fleet-wide, by moving the type's mark forward ---------


def slot_task(slot: datetime) -> NewTask:
    from supervisor.schedules import slot_key

    return NewTask(type="tick", unique_key=slot_key(slot))


def test_a_schedule_seen_first_records_its_latest_slot_without_firing_it(store: Store) -> None:
    """A new daily job does not run the moment it is deployed: it waits for its next slot."""
    slot = datetime(2030, 1, 1, 12, 0)
    assert store.fire_slot(slot_task(slot), "0 * * * *", slot) is None
    assert store.counts() == []
    (info,) = store.type_infos()
    assert (info.schedule, info.schedule_last_slot) == ("0 * * * *", slot)


def test_each_slot_fires_once_and_an_older_one_never(store: Store) -> None:
    first, second = datetime(2030, 1, 1, 12, 0), datetime(2030, 1, 1, 13, 0)
    store.fire_slot(slot_task(first), "0 * * * *", first)
    fired = store.fire_slot(slot_task(second), "0 * * * *", second)
    assert fired is not None and not fired.existed
    assert row(store, fired).unique_key == "schedule:2030-01-01T13:00:00Z"
    assert store.fire_slot(slot_task(second), "0 * * * *", second) is None, "another fired it"
    assert store.fire_slot(slot_task(first), "0 * * * *", first) is None, "never backwards"
    assert [(c.type, c.count) for c in store.counts()] == [("tick", 1)]
    assert store.type_infos()[0].schedule_last_slot == second


def test_after_missed_slots_only_the_most_recent_fires(store: Store) -> None:
    """Every supervisor was down for three slots: one task, for the newest, not a storm."""
    store.fire_slot(slot_task(datetime(2030, 1, 1, 9, 0)), "0 * * * *", datetime(2030, 1, 1, 9, 0))
    newest = datetime(2030, 1, 1, 12, 0)
    fired = store.fire_slot(slot_task(newest), "0 * * * *", newest)
    assert fired is not None
    assert sum(c.count for c in store.counts()) == 1


# --- the supervisor registry ----------------------------------------------------------------


def supervisor_info(name: str = "host-a:100:abc", workers: int = 4) -> SupervisorInfo:
    host, pid, _ = name.split(":")
    return SupervisorInfo(id=name, host=host, pid=int(pid), workers=workers, version="0.1.0")


def test_a_registered_supervisor_is_listed_alive(store: Store) -> None:
    store.register(supervisor_info(), ttl_s=60)
    [entry] = store.supervisors()
    assert (entry.id, entry.host, entry.pid, entry.workers, entry.alive) == (
        "host-a:100:abc",
        "host-a",
        100,
        4,
        True,
    )
    assert entry.started_at is not None and entry.heartbeat_at is not None


def test_registering_again_refreshes_the_heartbeat_but_keeps_the_start(store: Store) -> None:
    store.register(supervisor_info(workers=4), ttl_s=60)
    [first] = store.supervisors()
    elapse(store, 0.05)
    store.register(supervisor_info(workers=6), ttl_s=60)
    [second] = store.supervisors()
    assert second.started_at == first.started_at
    assert second.heartbeat_at is not None and first.heartbeat_at is not None
    assert second.heartbeat_at > first.heartbeat_at
    assert second.workers == 6


def test_a_supervisor_whose_ttl_ran_out_is_listed_dead(store: Store) -> None:
    store.register(supervisor_info(), ttl_s=0.05)
    elapse(store, 0.2)
    [entry] = store.supervisors()
    assert entry.alive is False


def test_deregister_removes_a_supervisor_that_stopped_cleanly(store: Store) -> None:
    store.register(supervisor_info("h:1:a"), ttl_s=60)
    store.register(supervisor_info("h:2:b"), ttl_s=60)
    store.deregister("h:1:a")
    assert [s.id for s in store.supervisors()] == ["h:2:b"]


def test_forget_drops_only_supervisors_dead_for_longer_than_asked(store: Store) -> None:
    store.register(supervisor_info("h:1:a"), ttl_s=0.05)
    store.register(supervisor_info("h:2:b"), ttl_s=60)
    elapse(store, 0.3)
    assert store.forget_supervisors(dead_for_s=60) == 0
    assert store.forget_supervisors(dead_for_s=0.1) == 1
    assert [s.id for s in store.supervisors()] == ["h:2:b"]


# --- one transaction per turn of the loop ---------------------------------------------------


def test_complete_and_claim_completes_held_tasks_and_claims_the_next_batch(store: Store) -> None:
    first = [enqueue(store) for _ in range(2)]
    following = [enqueue(store) for _ in range(3)]
    claims = store.claim("A", ["t"], 2, LONG_LEASE_S)
    assert [c.id for c in claims] == first

    won, more = store.complete_and_claim(claims, "A", ["t"], 2, LONG_LEASE_S)

    assert won == set(first)
    assert [c.id for c in more] == following[:2]
    assert all(row(store, i).status is Status.COMPLETED for i in first)
    assert all(row(store, c.id).status is Status.RUNNING for c in more)


def test_complete_and_claim_reports_a_lost_completion_and_still_claims(store: Store) -> None:
    task_id = enqueue(store)
    [stale] = store.claim("A", ["t"], 1, LONG_LEASE_S)
    store.cancel(task_id)
    fresh = enqueue(store)

    won, more = store.complete_and_claim([stale], "A", ["t"], 1, LONG_LEASE_S)

    assert won == set()
    assert [c.id for c in more] == [fresh]
    assert row(store, task_id).status is Status.CANCELLED


def test_complete_and_claim_with_nothing_to_do_touches_nothing(store: Store) -> None:
    enqueue(store)
    assert store.complete_and_claim([], "A", ["t"], 0, LONG_LEASE_S) == (set(), [])
    assert store.complete_and_claim([], "A", [], 5, LONG_LEASE_S) == (set(), [])
    assert row(store, 1).status is Status.QUEUED


def test_has_claimable_sees_only_what_a_claim_would_take(store: Store) -> None:
    assert store.has_claimable(["t"]) is False
    enqueue(store, "other")
    enqueue(store, delay_s=60)
    assert store.has_claimable(["t"]) is False
    assert store.has_claimable([]) is False
    enqueue(store)
    assert store.has_claimable(["t"]) is True
    store.claim("A", ["t"], 5, LONG_LEASE_S)
    assert store.has_claimable(["t"]) is False


def test_live_counts_leave_out_finished_tasks(store: Store) -> None:
    """The queue-depth gauge reads only the live queue, whatever history the table keeps."""
    done = enqueue(store)
    store.complete(claim_one(store))
    enqueue(store)
    live = store.counts(live_only=True)
    assert [(c.type, c.status, c.count) for c in live] == [("t", Status.QUEUED, 1)]
    assert row(store, done).status is Status.COMPLETED
    assert {c.status for c in store.counts()} == {Status.QUEUED, Status.COMPLETED}


# --- rows a plain-SQL producer wrote: one bad row never fails a claim -----------------------


def poke(store: Store, task_id: int, **fields: Any) -> None:
    """Write fields of a row past every producer check, as a plain ``UPDATE`` could."""
    if isinstance(store, MemoryStore):
        with store._lock:
            store._tasks[task_id] = attrs.evolve(store._tasks[task_id], **fields)
        return

    def literal(value: Any) -> str:
        if value is None:
            return "NULL"
        return str(int(value)) if isinstance(value, int) else f"'{value}'"

    sets = ", ".join(f"{name} = {literal(value)}" for name, value in fields.items())
    raw(store, f"UPDATE tasks SET {sets} WHERE id = {task_id}")


def test_claim_compares_types_exactly_even_with_a_trailing_space(store: Store) -> None:
    """MariaDB's PAD SPACE collation matched 'echo ' to 'echo': the claim compares bytes."""
    enqueue(store, "t ")
    innocent = enqueue(store, "t")
    assert [c.id for c in store.claim("A", ["t"], 10, LONG_LEASE_S)] == [innocent]
    assert store.has_claimable(["t"]) is False


def test_claim_marks_options_over_the_limit_without_reading_them(store: Store) -> None:
    """The one size limit holds for rows written by plain SQL too, checked at claim."""
    over = enqueue(store, options="\x01" * (MAX_OPTIONS_BYTES + 1))
    at_limit = enqueue(store, options="x" * MAX_OPTIONS_BYTES)
    claims = {c.id: c for c in store.claim("A", ["t"], 10, LONG_LEASE_S)}
    assert claims[over].options is None
    assert claims[over].defect is not None and "1 MiB" in claims[over].defect
    assert "\x01" not in claims[over].defect
    assert claims[at_limit].defect is None
    assert claims[at_limit].options == "x" * MAX_OPTIONS_BYTES


def test_rescue_requeues_a_running_row_that_has_no_lease(store: Store) -> None:
    """A row inserted as ``running`` with a NULL lease would otherwise stay running forever."""
    task_id = enqueue(store)
    poke(store, task_id, status=Status.RUNNING, lease_expires_at=None, claimed_by=None)
    assert store.rescue_expired(100) == Rescued(requeued=1)
    assert row(store, task_id).status is Status.QUEUED


def test_claim_marks_a_row_whose_attempts_are_used_up(store: Store) -> None:
    task_id = enqueue(store, max_attempts=3)
    poke(store, task_id, attempts=5)
    claim = claim_one(store)
    assert claim.attempt == 6
    assert claim.defect is not None and "max_attempts 3" in claim.defect


def test_claim_clamps_a_huge_max_attempts(store: Store) -> None:
    """MySQL's column takes up to 4,294,967,295; a claim obeys at most MAX_ATTEMPTS_LIMIT.

    SQLite's schema refuses such a row in the first place (a CHECK constraint).
    """
    task_id = enqueue(store)
    if isinstance(store, SqliteStore):
        with pytest.raises(sqlite3.IntegrityError):
            poke(store, task_id, max_attempts=4_294_967_295)
        return
    poke(store, task_id, max_attempts=4_294_967_295)
    claim = claim_one(store)
    assert (claim.max_attempts, claim.defect) == (MAX_ATTEMPTS_LIMIT, None)


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("task_options", "X'7B7D'", "BLOB"),
        ("task_options", "CAST(X'FF7B22223A317D' AS TEXT)", "task_options is not valid UTF-8"),
        ("deadline_at", "'not a date'", "deadline_at is not a valid date"),
    ],
)
def test_sqlite_claim_of_an_unreadable_row_marks_that_row_only(
    sqlite_dsn: str, column: str, value: str, words: str
) -> None:
    """Each of these crashed the parent, or failed every claim (and logged the options)."""
    with migrated_store(sqlite_dsn) as store:
        raw(store, "INSERT INTO tasks (type, task_options) VALUES ('t', '{}')")
        raw(store, f"UPDATE tasks SET {column} = {value} WHERE id = 1")
        innocent = enqueue(store)
        claims = {c.id: c for c in store.claim("A", ["t"], 10, LONG_LEASE_S)}
        assert sorted(claims) == [1, innocent]
        assert claims[1].defect is not None and words in claims[1].defect
        assert claims[1].options is None
        assert claims[innocent].defect is None
