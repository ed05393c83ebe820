"""Unique keys: at most one live (queued or running) task per (type, unique key).

The database enforces it (a partial unique index on SQLite, a unique index on a
generated column on MySQL), so racing producers, a producer's own transaction
and plain SQL all meet the same rule. Each rule runs on SQLite, MariaDB and the
in-memory store where it can.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pymysql
import pytest

from supervisor import Queue, enqueue_in_transaction
from supervisor.errors import StoreError, UsageError
from supervisor.lifecycle import Failure, Status
from supervisor.store import Enqueued, NewTask, Store
from tests.conftest import driver_connection, migrated_store
from tests.store.test_contract import claim_one, raw, row

PRODUCERS = 8




def keyed(task_type: str = "t", key: str | None = "k") -> NewTask:
    return NewTask(type=task_type, unique_key=key)


def test_a_duplicate_of_a_live_task_creates_nothing_and_answers_with_its_id(store: Store) -> None:
    first = store.enqueue(keyed())
    again = store.enqueue(keyed())
    assert (first.existed, again.existed) == (False, True)
    assert again == first
    assert sum(c.count for c in store.counts()) == 1
    assert row(store, first).unique_key == "k"


def test_the_key_is_per_type_and_tasks_without_a_key_are_never_duplicates(store: Store) -> None:
    ids = [
        store.enqueue(keyed("t", "k")),
        store.enqueue(keyed("u", "k")),
        store.enqueue(keyed("t", None)),
        store.enqueue(keyed("t", None)),
        store.enqueue(keyed("t", "other")),
    ]
    assert len(set(ids)) == 5 and not any(i.existed for i in ids)


def test_a_running_task_holds_its_key(store: Store) -> None:
    first = store.enqueue(keyed())
    claim_one(store)
    assert store.enqueue(keyed()) == first


@pytest.mark.parametrize("ending", ["completed", "failed", "cancelled"])
def test_once_the_task_ends_the_key_is_free_again(store: Store, ending: str) -> None:
    first = store.enqueue(keyed())
    if ending == "cancelled":
        store.cancel(first)
    else:
        claim = claim_one(store)
        assert store.complete(claim) if ending == "completed" else store.fail(
            claim, Failure.ERROR, "boom"
        )
    second = store.enqueue(keyed())
    assert second != first and not second.existed
    assert row(store, first).status is Status(ending)


def test_a_duplicate_in_the_same_batch_answers_with_the_first_ones_id(store: Store) -> None:
    ids = store.enqueue_many([keyed(), NewTask(type="t"), keyed()])
    assert ids[2] == ids[0] and ids[2].existed and not ids[0].existed
    assert sum(c.count for c in store.counts()) == 2


def test_retrying_a_task_whose_key_another_live_task_holds_is_refused(store: Store) -> None:
    first = store.enqueue(keyed())
    store.cancel(first)
    holder = store.enqueue(keyed())
    result = store.retry(first)
    assert (result.applied, result.blocked_by, result.before) == (False, holder, Status.CANCELLED)
    assert row(store, first).status is Status.CANCELLED
    store.cancel(holder)
    assert store.retry(first).applied


def test_a_plain_sql_duplicate_is_refused_by_the_database(sql_store: Store) -> None:
    """Plain SQL is a supported producer: the index, not the API, keeps the promise."""
    raw(sql_store, "INSERT INTO tasks (type, unique_key) VALUES ('t', 'k')")
    with pytest.raises((sqlite3.IntegrityError, pymysql.err.IntegrityError)):
        raw(sql_store, "INSERT INTO tasks (type, unique_key) VALUES ('t', 'k')")
    assert sql_store.enqueue(keyed()).existed


@pytest.mark.parametrize("key", ["", "x" * 256])
def test_a_key_must_be_1_to_255_characters(sqlite_dsn: str, key: str) -> None:
    with Queue(sqlite_dsn) as queue, pytest.raises(UsageError, match="unique key"):
        queue.enqueue("t", unique_key=key)


def test_racing_producers_leave_one_row_and_all_get_its_id(dsn: str) -> None:
    """Eight producers, each with its own connection, enqueue the same key at one moment."""
    start = threading.Barrier(PRODUCERS)
    answers: list[Enqueued] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with Queue(dsn, migrate=False) as queue:
                start.wait()
                answers.append(queue.enqueue("t", unique_key="race"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with migrated_store(dsn) as store:
        threads = [threading.Thread(target=produce) for _ in range(PRODUCERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert len(answers) == PRODUCERS
        assert len(set(answers)) == 1, "every producer got the one task's id"
        assert sorted(a.existed for a in answers) == [False] + [True] * (PRODUCERS - 1)
        assert [(c.type, c.count) for c in store.counts()] == [("t", 1)]


def _connect(dsn: str) -> Any:
    return driver_connection(dsn, autocommit=False)


def test_enqueue_in_transaction_answers_the_same_inside_the_callers_transaction(dsn: str) -> None:
    """The caller's transaction goes on after a duplicate; a rollback takes only what it made."""
    with migrated_store(dsn) as store:
        live = store.enqueue(keyed())
        conn = _connect(dsn)
        try:
            again = enqueue_in_transaction(conn, "t", unique_key="k")
            fresh = enqueue_in_transaction(conn, "t", unique_key="other")
            assert (again, again.existed) == (live, True)
            assert not fresh.existed
            conn.commit()
        finally:
            conn.close()
        assert row(store, fresh).unique_key == "other"
        assert sum(c.count for c in store.counts()) == 2


def test_a_key_taken_in_the_callers_open_transaction_is_a_duplicate_there(sqlite_dsn: str) -> None:
    conn = _connect(sqlite_dsn)
    with migrated_store(sqlite_dsn):
        pass
    try:
        first = enqueue_in_transaction(conn, "t", unique_key="k")
        second = enqueue_in_transaction(conn, "t", unique_key="k")
        assert (second, second.existed) == (first, True)
        conn.rollback()
    finally:
        conn.close()
    with migrated_store(sqlite_dsn) as store:
        assert store.counts() == []


def test_the_mysql_retry_loop_gives_up_with_a_clear_error_when_the_holder_keeps_vanishing() -> None:
    """Five tries of insert-then-read that each find the key taken, then free: a StoreError."""
    from supervisor.store.mysql import UNIQUE_TRIES, insert_task

    class Flapping:
        def __init__(self) -> None:
            self.inserts = 0

        def execute(self, query: str, params: Any) -> None:
            if query.lstrip().startswith("INSERT"):
                self.inserts += 1
                raise pymysql.err.IntegrityError(1062, "Duplicate entry")

        def fetchone(self) -> None:
            return None

    cursor = Flapping()
    params = {"unique_key": "k", "type": "t"}
    with pytest.raises(StoreError, match="nothing was enqueued"):
        insert_task(cursor, params)
    assert cursor.inserts == UNIQUE_TRIES


def test_supervisors_racing_to_fire_one_schedule_slot_enqueue_it_once(dsn: str) -> None:
    """Eight supervisors (eight connections) fire the same slot at one moment: one task."""
    from datetime import datetime

    from supervisor.schedules import slot_key

    earlier, slot = datetime(2030, 1, 1, 12, 0), datetime(2030, 1, 1, 12, 5)
    start = threading.Barrier(PRODUCERS)
    outcomes: list[Enqueued | None] = []
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            with migrated_store(dsn) as store:
                start.wait()
                task = NewTask(type="tick", unique_key=slot_key(slot))
                outcomes.append(store.fire_slot(task, "*/5 * * * *", slot))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with migrated_store(dsn) as store:
        store.fire_slot(NewTask(type="tick"), "*/5 * * * *", earlier)  # the schedule is known
        threads = [threading.Thread(target=fire) for _ in range(PRODUCERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert len([o for o in outcomes if o is not None]) == 1
        assert [(c.type, c.count) for c in store.counts()] == [("tick", 1)]
