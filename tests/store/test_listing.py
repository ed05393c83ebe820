"""The store's reads for the operator's page and its bulk writes, on every backend.

``find_tasks`` pages a filtered listing newest first; ``count_tasks`` counts
the same filter; ``finished_counts`` is the overview's recent history;
``retry_many``/``cancel_many`` are one batch of the bulk commands. Each rule
below holds on SQLite, MariaDB/MySQL and MemoryStore alike.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from supervisor.lifecycle import Failure, Status
from supervisor.store import NewTask, Store, TaskFilter
from supervisor.store.base import ERROR_HEAD_CHARS

pytestmark = pytest.mark.timeout(60)




def failed(store: Store, task_type: str, error: str, failure: Failure = Failure.ERROR) -> int:
    """A task of ``task_type`` that failed for good with ``error``."""
    task_id = store.enqueue(NewTask(type=task_type, options="secret", max_attempts=1))
    [claim] = store.claim("me", [task_type], 1, 60.0)
    assert claim.id == task_id
    assert store.fail(claim, failure, error)
    return int(task_id)


def ids(store: Store, where: TaskFilter, **kwargs: int) -> list[int]:
    return [t.id for t in store.find_tasks(where, **kwargs)]


def test_find_tasks_lists_newest_first_and_pages_by_the_last_id(store: Store) -> None:
    made = [int(store.enqueue(NewTask(type="echo"))) for _ in range(5)]
    first = ids(store, TaskFilter(), limit=2)
    assert first == [made[4], made[3]]
    assert ids(store, TaskFilter(), before_id=first[-1], limit=2) == [made[2], made[1]]
    assert ids(store, TaskFilter(), before_id=made[0]) == []
    assert ids(store, TaskFilter(), before_id=made[4], min_id=made[2]) == [made[3], made[2]]


def test_each_filter_field_narrows_the_listing_and_the_count(store: Store) -> None:
    boom = failed(store, "resize", "ValueError: boom")
    late = failed(store, "resize", "took too long", Failure.TIMEOUT)
    other = failed(store, "email", "ValueError: boom")
    queued = int(store.enqueue(NewTask(type="resize")))
    cases = {
        TaskFilter(type="resize"): [queued, late, boom],
        TaskFilter(type="resiz"): [],
        TaskFilter(statuses=frozenset({Status.FAILED})): [other, late, boom],
        TaskFilter(statuses=frozenset({Status.QUEUED, Status.RUNNING})): [queued],
        TaskFilter(failure=Failure.TIMEOUT): [late],
        TaskFilter(error_match="boom"): [other, boom],
        TaskFilter(error_match="BOOM"): [],  # case-sensitive on every backend
        TaskFilter(error_match="%"): [],  # no wildcards
        TaskFilter(type="resize", error_match="ValueError"): [boom],
    }
    for where, expected in cases.items():
        assert ids(store, where) == expected, where
        assert store.count_tasks(where) == len(expected), where


def test_the_time_window_bounds_when_a_task_finished_or_was_created(store: Store) -> None:
    now = store.utc_now()
    done = failed(store, "resize", "boom")
    live = int(store.enqueue(NewTask(type="resize")))
    hour = timedelta(hours=1)
    assert ids(store, TaskFilter(since=now - hour)) == [live, done]
    assert ids(store, TaskFilter(since=now + hour)) == []
    assert ids(store, TaskFilter(until=now - hour)) == []
    assert ids(store, TaskFilter(since=now - hour, until=now + hour)) == [live, done]


def test_a_listing_never_carries_options_and_only_the_head_of_an_error(store: Store) -> None:
    failed(store, "resize", "x" * (ERROR_HEAD_CHARS + 500))
    [summary] = store.find_tasks(TaskFilter())
    assert not hasattr(summary, "options")
    assert summary.error_head == "x" * ERROR_HEAD_CHARS
    assert summary.status is Status.FAILED and summary.failure is Failure.ERROR


def test_finished_counts_count_terminal_tasks_by_type_and_status(store: Store) -> None:
    failed(store, "resize", "boom")
    failed(store, "resize", "boom")
    store.cancel(int(store.enqueue(NewTask(type="email"))))
    store.enqueue(NewTask(type="email"))  # queued: not history
    counts = {(c.type, c.status): c.count for c in store.finished_counts(3600.0)}
    assert counts == {("email", Status.CANCELLED): 1, ("resize", Status.FAILED): 2}


def test_retry_many_puts_back_failed_and_cancelled_tasks_without_unique_keys(
    store: Store,
) -> None:
    one = failed(store, "resize", "boom")
    cancelled = int(store.enqueue(NewTask(type="resize")))
    store.cancel(cancelled)
    keyed = int(store.enqueue(NewTask(type="resize", unique_key="k", max_attempts=1)))
    [claim] = store.claim("me", ["resize"], 1, 60.0)
    store.fail(claim, Failure.ERROR, "boom")
    queued = int(store.enqueue(NewTask(type="resize")))
    assert store.retry_many([one, cancelled, keyed, queued, 999_999]) == 2
    statuses = {i: store.get(i).status for i in (one, cancelled, keyed, queued)}  # type: ignore[union-attr]
    assert statuses == {
        one: Status.QUEUED,
        cancelled: Status.QUEUED,
        keyed: Status.FAILED,  # goes through retry(), which explains a refusal
        queued: Status.QUEUED,
    }
    row = store.get(one)
    assert row is not None and row.attempts == 0 and row.failure is None
    assert store.retry_many([]) == 0


def test_cancel_many_cancels_only_live_tasks(store: Store) -> None:
    done = failed(store, "resize", "boom")
    queued = int(store.enqueue(NewTask(type="resize")))
    assert store.cancel_many([queued, done]) == 1
    assert store.get(queued).status is Status.CANCELLED  # type: ignore[union-attr]
    assert store.get(done).status is Status.FAILED  # type: ignore[union-attr]
    assert store.cancel_many([]) == 0
