"""Helpers for testing your own handlers: run one for real, call it directly, check enqueues.

* :func:`run_handler` runs a handler in a real child process, exactly as the
  supervisor would, and returns what happened as a :class:`HandlerRun` record:
  a timeout, a segfault or an ``os._exit`` come back as the outcomes they are in
  production (``timeout``, ``panic``), never as an exception in your test.
* :func:`make_task` builds the ``(task, progress)`` pair to call ``handle()``
  directly, for fast unit tests of the handler's own logic.
* :func:`enqueued` and :func:`assert_enqueued` read the ``tasks`` table through
  your open ``sqlite3`` or pymysql connection (inside your transaction, so they
  pair with :func:`supervisor.enqueue_in_transaction`) or through a DSN.

The pytest fixture ``supervisor_queue`` (a fresh queue, and a ``drain()`` that
runs the real supervisor in burst mode) lives in :mod:`supervisor.pytest_plugin`,
which pytest loads by itself. This module needs nothing beyond the package's
own dependencies: pytest is not imported here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from supervisor.child import progress_value
from supervisor.dsn import MysqlDsn, SqliteDsn, parse_dsn
from supervisor.handler_run import ChildStartError, HandlerRun, handler_path, run_attempt
from supervisor.lifecycle import (
    DEFAULT_BUDGET_S,
    DEFAULT_MAX_ATTEMPTS,
    Backoff,
    validate_budget,
    validate_max_attempts,
    validate_type,
)
from supervisor.policy import from_constants
from supervisor.producer import Options, options_text
from supervisor.protocol import TaskMessage
from supervisor.store.queries import load_queries
from supervisor.task import Task

__all__ = [
    "ANY",
    "ChildStartError",
    "HandlerRun",
    "ProgressRecorder",
    "assert_enqueued",
    "enqueued",
    "make_task",
    "run_handler",
    "task_rows",
]


class _Any:
    """Matches every value: the default of the filters of :func:`enqueued`."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()


def run_handler(
    type: str,
    options: Options = None,
    *,
    handlers: str | Path = "handlers",
    budget: float = DEFAULT_BUDGET_S,
    attempt: int = 1,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: Backoff | None = None,
    task_id: int = 1,
    max_rss: float | None = None,
) -> HandlerRun:
    """Run ``handlers/<type>.py`` on ``options`` in a fresh child process; what happened.

    The child is the supervisor's own (``python -m supervisor.child``), so the
    handler meets what it meets in production: its own process and process
    group, stdin closed, output on a pipe, SIGINT/SIGTERM ignored, and a
    deadline ``budget`` seconds after the task is handed over, at which its
    stack is captured and its whole tree killed. ``attempt``, ``max_attempts``
    and ``backoff`` decide a raise as the supervisor would: ``retried`` with
    ``retry_in_s`` while attempts remain, else ``failed`` with ``error``.
    ``max_rss`` (MiB) runs it under a memory limit as the handler's ``MAX_RSS``
    does in production: over it, the child's tree is killed and the outcome is
    ``memory``. The handler file's constants (``MAX_RSS``, ``TIMEOUT``...) are
    not read here: pass the limit you want to test.

    Raises only for mistakes of the test itself (no such handler file, a bad
    argument) and :class:`ChildStartError` if no child can be started at all.
    """
    folder = Path(handlers)
    message = TaskMessage(
        id=task_id,
        type=validate_type(type),
        path=str(handler_path(type, folder)),
        options=options_text(options),
        attempt=attempt,
        max_attempts=validate_max_attempts(max_attempts),
        remaining_s=validate_budget(float(budget)),
    )
    limit = None if max_rss is None else from_constants({"MAX_RSS": max_rss}).max_rss_bytes
    return run_attempt(message, backoff=backoff or Backoff(), max_rss_bytes=limit)


@attrs.define
class ProgressRecorder:
    """A ``progress(pct)`` callable that keeps what the handler reported, as the child clamps it.

    A value the supervisor would ignore (NaN, a string) is ignored here too, so
    a handler unit-tested with it behaves as it will in production.
    """

    values: list[int] = attrs.Factory(list)

    def __call__(self, pct: float) -> None:
        value = progress_value(pct)
        if value is not None:
            self.values.append(value)

    @property
    def last(self) -> int | None:
        return self.values[-1] if self.values else None


def make_task(
    type: str = "task",
    options: Options = None,
    *,
    id: int = 1,
    attempt: int = 1,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    budget: float = DEFAULT_BUDGET_S,
) -> tuple[Task, ProgressRecorder]:
    """The ``(task, progress)`` a handler receives, to call ``handle(*make_task(...))`` directly.

    ``options`` is stored as a producer stores it (a dict or list as JSON
    text), so the handler parses it as it will in production. ``budget`` sets
    ``task.deadline`` and ``task.remaining()``; nothing enforces it here (use
    :func:`run_handler` for that).
    """
    task = Task.starting_now(
        id=id,
        type=validate_type(type),
        options=options_text(options),
        attempt=attempt,
        max_attempts=validate_max_attempts(max_attempts),
        remaining_s=validate_budget(float(budget)),
    )
    return task, ProgressRecorder()


# ---------------------------------------------------------------- reading the tasks table


def enqueued(
    conn_or_dsn: Any,
    type: str,
    *,
    options: Any = ANY,
    unique_key: Any = ANY,
    status: Any = ANY,
) -> list[dict[str, Any]]:
    """The rows of ``tasks`` of ``type`` that match every filter given, oldest first.

    ``conn_or_dsn`` is an open ``sqlite3`` or pymysql connection (read inside
    its current transaction: what you enqueued and have not committed is
    there) or a DSN string. ``options`` matches the stored text exactly when
    a string, or the parsed JSON when a dict or list; ``unique_key`` and
    ``status`` match exactly (``None`` matches a row without one).
    """
    wanted = options_text(options) if isinstance(options, dict | list) else options
    parsed = options if isinstance(options, dict | list) else ANY
    found = []
    for row in _rows(conn_or_dsn, "tasks_of_type", {"type": type}):
        if row["type"] != type:  # MariaDB's collation would match 'echo ' to 'echo'
            continue
        if not _matches(row.get("unique_key"), unique_key) or not _matches(row["status"], status):
            continue
        if parsed is not ANY:
            if _json(row["task_options"]) != parsed:
                continue
        elif not _matches(row["task_options"], wanted):
            continue
        found.append(row)
    return found


def assert_enqueued(
    conn_or_dsn: Any,
    type: str,
    *,
    options: Any = ANY,
    unique_key: Any = ANY,
    status: Any = ANY,
    count: int | None = None,
) -> list[dict[str, Any]]:
    """Like :func:`enqueued`, but fail (``AssertionError``) unless a row matches.

    With ``count``, exactly that many rows must match. The message lists the
    rows of that type that were there, so a near miss is plain to see.
    """
    found = enqueued(conn_or_dsn, type, options=options, unique_key=unique_key, status=status)
    if (count is None and found) or (count is not None and len(found) == count):
        return found
    present = [
        {k: row.get(k) for k in ("id", "status", "task_options", "unique_key")}
        for row in _rows(conn_or_dsn, "tasks_of_type", {"type": type})
    ]
    expected = "a task" if count is None else f"{count} task(s)"
    raise AssertionError(
        f"expected {expected} of type {type!r} with options={options!r},"
        f" unique_key={unique_key!r}, status={status!r}; found {len(found)}."
        f" Tasks of that type: {present!r}"
    )


def task_rows(conn_or_dsn: Any) -> list[dict[str, Any]]:
    """Every row of ``tasks``, oldest first, as dicts (column name to value)."""
    return list(_rows(conn_or_dsn, "all_tasks", {}))


def _matches(value: object, wanted: object) -> bool:
    return wanted is ANY or value == wanted


def _json(text: object) -> object:
    try:
        return json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ANY  # equal to nothing a caller passes: ANY is not a dict or list


def _rows(conn_or_dsn: Any, query: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if isinstance(conn_or_dsn, str):
        yield from _rows_by_dsn(conn_or_dsn, query, params)
    elif isinstance(conn_or_dsn, sqlite3.Connection):
        cursor = conn_or_dsn.execute(load_queries("testing.sqlite.sql")[query], params)
        names = [column[0] for column in cursor.description]
        for row in cursor.fetchall():
            yield dict(zip(names, row, strict=True))
    else:  # a pymysql connection, of any cursor class
        with conn_or_dsn.cursor() as cursor:
            cursor.execute(load_queries("testing.mysql.sql")[query], params)
            names = [column[0] for column in cursor.description]
            for row in cursor.fetchall():
                yield dict(row) if isinstance(row, dict) else dict(zip(names, row, strict=True))


def _rows_by_dsn(dsn_text: str, query: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    dsn = parse_dsn(dsn_text)
    if isinstance(dsn, SqliteDsn):
        if not Path(dsn.path).exists():  # sqlite3 would create an empty file and say "no table"
            raise FileNotFoundError(f"no SQLite database at {dsn.path}")
        conn = sqlite3.connect(dsn.path)
        try:
            yield from _rows(conn, query, params)
        finally:
            conn.close()
        return
    assert isinstance(dsn, MysqlDsn)
    import pymysql

    connection = pymysql.connect(
        host=dsn.host,
        port=dsn.port,
        user=dsn.user,
        password=dsn.password,
        database=dsn.database,
        unix_socket=dsn.unix_socket,
        charset="utf8mb4",
        connect_timeout=dsn.connect_timeout,
        cursorclass=pymysql.cursors.DictCursor,
    )
    try:
        yield from _rows(connection, query, params)
    finally:
        connection.close()
