"""The producer API: Queue validates before it writes, and enqueues on either backend."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from supervisor import Queue, enqueue_in_transaction
from supervisor.dsn import parse_dsn
from supervisor.errors import UsageError
from supervisor.lifecycle import Status
from supervisor.producer import new_task


def test_queue_enqueues_with_the_given_options_and_settings(dsn: str) -> None:
    with Queue(dsn) as queue:
        task_id = queue.enqueue("resize", '{"path": "a.png"}', max_attempts=5, priority=-2)
        row = queue.store.get(task_id)
    assert row is not None
    assert (row.type, row.options, row.max_attempts, row.priority, row.status) == (
        "resize",
        '{"path": "a.png"}',
        5,
        -2,
        Status.QUEUED,
    )


def test_queue_enqueue_many_is_one_transaction_returning_ids_in_order(dsn: str) -> None:
    with Queue(dsn) as queue:
        ids = queue.enqueue_many([new_task("a"), new_task("b", "x"), new_task("c")])
        types = [row.type for row in map(queue.store.get, ids) if row is not None]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert types == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"type": "bad type"}, "task type"),
        ({"type": "t", "options": "x" * (1024 * 1024 + 1)}, "1 MiB"),
        ({"type": "t", "max_attempts": 0}, "max attempts"),
        ({"type": "t", "budget": 0}, "budget"),
        ({"type": "t", "delay": -1}, "delay"),
        ({"type": "t", "priority": 2**40}, "priority"),
        ({"type": "t", "concurrency_key": ""}, "concurrency key must be 1 to 255 characters"),
        ({"type": "t", "concurrency_key": "k" * 256}, "concurrency key must be 1 to 255"),
        ({"type": "t", "concurrency_key": "\udc80"}, "concurrency key must be UTF-8 text"),
        ({"type": "t", "concurrency_key": 7}, "concurrency key must be 1 to 255 characters"),
    ],
)
def test_queue_refuses_bad_input_before_writing_anything(
    sqlite_dsn: str, kwargs: dict[str, object], complaint: str
) -> None:
    with Queue(sqlite_dsn) as queue:
        task_type = str(kwargs.pop("type"))
        with pytest.raises(UsageError, match=complaint):
            queue.enqueue(task_type, **kwargs)  # type: ignore[arg-type]
        assert queue.store.counts() == []


@pytest.mark.parametrize("options", [{"a": 1, "é": [True, None]}, [1, "two", {"x": 3.5}]])
def test_queue_enqueue_stores_a_dict_or_list_as_json_text(
    dsn: str, options: dict[str, Any] | list[Any]
) -> None:
    """Producers naturally pass structured options; the row holds them as JSON text."""
    with Queue(dsn) as queue:
        task_id = queue.enqueue("resize", options)
        row = queue.store.get(task_id)
    assert row is not None and row.options is not None
    assert json.loads(row.options) == options


def test_enqueue_in_transaction_stores_a_dict_as_json_text(sqlite_dsn: str) -> None:
    """The in-transaction enqueue accepts the same structured options as Queue.enqueue."""
    with Queue(sqlite_dsn) as queue:
        conn = sqlite3.connect(parse_dsn(sqlite_dsn).path)  # type: ignore[union-attr]
        try:
            task_id = enqueue_in_transaction(conn, "mail", {"order": 42})
            conn.commit()
        finally:
            conn.close()
        row = queue.store.get(task_id)
    assert row is not None and row.options is not None
    assert json.loads(row.options) == {"order": 42}


def test_options_that_are_not_json_serialisable_are_refused_before_writing(
    sqlite_dsn: str,
) -> None:
    with Queue(sqlite_dsn) as queue:
        with pytest.raises(UsageError, match="JSON"):
            queue.enqueue("t", {"when": object()})  # type: ignore[arg-type]
        assert queue.store.counts() == []


def test_a_concurrency_key_of_up_to_255_characters_is_stored_as_given(dsn: str) -> None:
    """Any text (four-byte characters too) of 1 to 255 characters, by either producer API."""
    longest = "😀" * 255
    with Queue(dsn) as queue:
        first = queue.enqueue("t", concurrency_key="customer-42")
        second = queue.enqueue("t", concurrency_key=longest)
        third = queue.enqueue("t")
        keys = [row.concurrency_key for row in map(queue.store.get, (first, second, third)) if row]
    assert keys == ["customer-42", longest, None]


def test_enqueue_in_transaction_stores_the_concurrency_key(sqlite_dsn: str) -> None:
    with Queue(sqlite_dsn) as queue:
        conn = sqlite3.connect(parse_dsn(sqlite_dsn).path)  # type: ignore[union-attr]
        try:
            task_id = enqueue_in_transaction(conn, "mail", None, concurrency_key="shop-7")
            conn.commit()
        finally:
            conn.close()
        row = queue.store.get(task_id)
    assert row is not None and row.concurrency_key == "shop-7"
