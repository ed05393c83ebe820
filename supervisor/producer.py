"""The producer side: put tasks on the queue from Python.

:class:`Queue` owns its connection. :func:`enqueue_in_transaction` writes with
the caller's own open connection and commits nothing, so the task exists if
and only if the caller's transaction commits: the reason to keep a queue in
the application's database.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, TypeAlias

from supervisor.dsn import DEFAULT_DSN, parse_dsn
from supervisor.errors import UsageError
from supervisor.lifecycle import (
    DEFAULT_BUDGET_S,
    DEFAULT_MAX_ATTEMPTS,
    validate_budget,
    validate_delay,
    validate_key,
    validate_max_attempts,
    validate_options,
    validate_priority,
    validate_type,
)
from supervisor.store import Enqueued, NewTask, Store, open_store
from supervisor.store.sql import SqlStore

# What a producer may pass as options: the stored string itself, or a structure stored as JSON.
Options: TypeAlias = str | dict[str, Any] | list[Any] | None


def options_text(options: Options) -> str | None:
    """The options column's text: a string is stored verbatim, a dict or list as JSON.

    Handlers receive a string (``task.options``), so a structure is encoded here,
    at the producer, where a value JSON cannot hold (NaN, an object) is still the
    caller's bad input rather than a handler's surprise.
    """
    if options is None or isinstance(options, str):
        return options
    if not isinstance(options, dict | list):
        raise UsageError(
            f"task options must be a string, a dict or a list, not {type(options).__name__}"
        )
    try:
        return json.dumps(options, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"task options cannot be stored as JSON: {exc}") from None


def new_task(
    type: str,
    options: Options = None,
    *,
    delay: float = 0,
    budget: float = DEFAULT_BUDGET_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    priority: int = 0,
    unique_key: str | None = None,
    concurrency_key: str | None = None,
) -> NewTask:
    """Validate a request; a :class:`~supervisor.errors.UsageError` names what is wrong.

    ``concurrency_key``: tasks sharing it count together against the handler's
    ``CONCURRENCY_PER_KEY``; ``None`` (no key) is not limited per key.
    """
    return NewTask(
        unique_key=validate_key(unique_key, "unique key"),
        concurrency_key=validate_key(concurrency_key, "concurrency key"),
        type=validate_type(type),
        options=validate_options(options_text(options)),
        delay_s=validate_delay(float(delay)),
        budget_s=validate_budget(float(budget)),
        max_attempts=validate_max_attempts(int(max_attempts)),
        priority=validate_priority(int(priority)),
    )


class Queue:
    """A handle on the ``tasks`` table for producers.

    ``priority``: smaller runs first (like ``nice``); the default is 0.
    ``concurrency_key``: tasks sharing it count together against the handler's
    ``CONCURRENCY_PER_KEY``; the default (no key) is not limited per key.
    ``budget``: seconds of wall-clock time from when the task becomes runnable
    until it is killed, retries included.
    """

    def __init__(self, dsn: str = DEFAULT_DSN, *, migrate: bool = True) -> None:
        self.store: Store = open_store(parse_dsn(dsn))
        if migrate:
            self.store.migrate()

    def enqueue(
        self,
        type: str,
        options: Options = None,
        *,
        delay: float = 0,
        budget: float = DEFAULT_BUDGET_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        priority: int = 0,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> Enqueued:
        """Insert one task and return its id; ``options`` may be a string, or a dict/list (JSON).

        With ``unique_key``, a live (queued or running) task of the same type and
        key means nothing is inserted: the id returned is that task's, and its
        ``existed`` is True.
        """
        task = new_task(
            type,
            options,
            delay=delay,
            budget=budget,
            max_attempts=max_attempts,
            priority=priority,
            unique_key=unique_key,
            concurrency_key=concurrency_key,
        )
        return self.store.enqueue(task)

    def enqueue_many(self, tasks: list[NewTask]) -> list[Enqueued]:
        """Insert tasks built with :func:`new_task` in one transaction."""
        return self.store.enqueue_many(tasks)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def enqueue_in_transaction(
    connection: Any,
    type: str,
    options: Options = None,
    *,
    delay: float = 0,
    budget: float = DEFAULT_BUDGET_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    priority: int = 0,
    unique_key: str | None = None,
    concurrency_key: str | None = None,
) -> Enqueued:
    """Enqueue through the caller's open pymysql or sqlite3 connection, without committing.

    The task becomes visible to supervisors only when the caller commits, and
    disappears with a rollback. ``options``, ``unique_key`` and ``concurrency_key`` are taken as by
    :meth:`Queue.enqueue`; a duplicate fails no statement of the caller's
    transaction.
    """
    task = new_task(
        type,
        options,
        delay=delay,
        budget=budget,
        max_attempts=max_attempts,
        priority=priority,
        unique_key=unique_key,
        concurrency_key=concurrency_key,
    )
    params = SqlStore.new_task_params(task)
    if isinstance(connection, sqlite3.Connection):
        from supervisor.store.sqlite import insert_task as insert_sqlite

        return insert_sqlite(connection, params)
    from supervisor.store.mysql import insert_task as insert_mysql

    with connection.cursor() as cursor:
        return insert_mysql(cursor, params)
