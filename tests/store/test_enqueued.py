"""``enqueued`` and ``assert_enqueued``: enqueues seen from a test, on both backends.

They read through the caller's own connection inside its open transaction
(so they pair with ``enqueue_in_transaction``), or through a DSN.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from supervisor import enqueue_in_transaction
from supervisor.producer import Queue
from supervisor.testing import assert_enqueued, enqueued, task_rows
from tests.conftest import driver_connection


@pytest.fixture
def connection(dsn: str) -> Iterator[Any]:
    """The caller's own connection, autocommit off, on a migrated database."""
    Queue(dsn).close()
    conn = driver_connection(dsn, autocommit=False)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def test_an_uncommitted_enqueue_is_seen_inside_the_transaction_and_gone_after_rollback(
    connection: Any, dsn: str
) -> None:
    enqueue_in_transaction(connection, "send_receipt", {"order": 42}, unique_key="order-42")

    [row] = assert_enqueued(connection, "send_receipt", options={"order": 42})
    assert row["unique_key"] == "order-42" and row["status"] == "queued"
    assert enqueued(dsn, "send_receipt") == []  # not committed: no one else sees it

    connection.rollback()
    assert enqueued(connection, "send_receipt") == []


def test_filters_match_options_as_text_or_as_json_and_keys_exactly(
    connection: Any, dsn: str
) -> None:
    enqueue_in_transaction(connection, "resize", '{"path": "a.png"}', unique_key="a")
    enqueue_in_transaction(connection, "resize", '{"path": "b.png"}')
    enqueue_in_transaction(connection, "resize", "not json")
    enqueue_in_transaction(connection, "other", '{"path": "a.png"}')
    connection.commit()

    assert len(enqueued(dsn, "resize")) == 3
    assert [r["unique_key"] for r in enqueued(dsn, "resize", options={"path": "a.png"})] == ["a"]
    assert len(enqueued(dsn, "resize", options='{"path": "b.png"}')) == 1
    assert len(enqueued(dsn, "resize", unique_key=None)) == 2
    assert len(enqueued(dsn, "resize", status="queued")) == 3
    assert enqueued(dsn, "resize", options={"path": "c.png"}) == []
    assert enqueued(dsn, "resize ") == []  # types compare exactly, on MariaDB too
    assert [r["type"] for r in task_rows(dsn)] == ["resize", "resize", "resize", "other"]
    assert_enqueued(dsn, "resize", count=3)


def test_assert_enqueued_says_what_was_there_when_nothing_matches(connection: Any) -> None:
    enqueue_in_transaction(connection, "resize", {"path": "a.png"})

    with pytest.raises(AssertionError, match=r"found 0\. Tasks of that type: .*a\.png"):
        assert_enqueued(connection, "resize", options={"path": "b.png"})
    with pytest.raises(AssertionError, match="expected 2 task"):
        assert_enqueued(connection, "resize", count=2)


def test_a_missing_sqlite_file_is_an_error_not_an_empty_queue(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError):
        enqueued(f"sqlite:///{tmp_path / 'typo.db'}", "resize")
