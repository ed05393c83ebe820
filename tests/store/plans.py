"""Query plans on a realistic table: what the index and plan tests share.

A plan is only telling on a table the optimizer has statistics for, with rows
in every status, type and priority, so each test builds one: a few thousand
mixed rows, analysed, then EXPLAIN of the store's own named statements.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterator
from typing import Any

import pymysql.cursors

from supervisor.dsn import parse_dsn
from supervisor.store import open_store
from supervisor.store.mysql import MysqlStore
from supervisor.store.sqlite import SqliteStore

ROWS = 4000
STATUSES = ("queued", "running", "completed", "failed", "cancelled")
TYPES = ("a", "b", "c", "d", "e")
Plan = list[dict[str, Any]]


def mixed_rows() -> list[tuple[str, str, int, int, str]]:
    """(type, status, priority, run_at offset in seconds, concurrency key): every combination,
    repeated."""
    combos = itertools.cycle(itertools.product(TYPES, STATUSES, (-1, 0, 0, 5), (0, 0, 60)))
    return [(*next(combos), f"k{n % 7}") for n in range(ROWS)]


def plan_text(plan: Plan) -> str:
    return "\n".join(str(step) for step in plan)


@contextlib.contextmanager
def mysql_mixed_table(mysql_dsn: str) -> Iterator[tuple[MysqlStore, pymysql.cursors.Cursor]]:
    """A migrated MySQL store whose table holds :func:`mixed_rows`, analysed; and a cursor."""
    store = open_store(parse_dsn(mysql_dsn))
    assert isinstance(store, MysqlStore)
    store.migrate()
    try:
        with store._connection().cursor() as cursor:
            cursor.executemany(
                "INSERT INTO tasks (type, status, priority, run_at, concurrency_key) "
                "VALUES (%s, %s, %s, NOW(6) + INTERVAL %s SECOND, %s)",
                mixed_rows(),
            )
            cursor.execute("ANALYZE TABLE tasks")
            cursor.fetchall()
            yield store, cursor
    finally:
        store.close()


def mysql_plan(
    store: MysqlStore, cursor: pymysql.cursors.Cursor, name: str, params: dict[str, Any]
) -> Plan:
    cursor.execute("EXPLAIN " + store._queries[name], params)
    return list(cursor.fetchall())


@contextlib.contextmanager
def sqlite_mixed_table(sqlite_dsn: str) -> Iterator[tuple[SqliteStore, sqlite3.Connection]]:
    """The same on SQLite: a migrated store holding :func:`mixed_rows`, analysed."""
    store = open_store(parse_dsn(sqlite_dsn))
    assert isinstance(store, SqliteStore)
    store.migrate()
    try:
        conn = store._connection()
        conn.executemany(
            "INSERT INTO tasks (type, status, priority, run_at, concurrency_key) "
            "VALUES (?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || ? || ' seconds'), ?)",
            mixed_rows(),
        )
        conn.execute("ANALYZE")
        yield store, conn
    finally:
        store.close()


def sqlite_plan(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> Plan:
    return [dict(row) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
