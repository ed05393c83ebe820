"""Versioned migrations, on both SQL backends: what `migrate` promises a database with data in it.

* A new database gets every version, recorded in ``schema_migrations``.
* A database that the first release's ``schema.sql`` made is adopted as
  version 1 as it stands, then upgraded, and keeps every row (and, on SQLite,
  its AUTOINCREMENT high-water mark: an id is never handed out twice).
* Migrating again, or from several supervisors at once, changes nothing more.
* A schema newer than this code knows is refused with one clear line.
* The hand-applied ``schema.sql`` is the same schema the migrations build.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from supervisor.dsn import MysqlDsn, parse_dsn
from supervisor.lifecycle import Failure, Status
from supervisor.store import NewTask, Store, open_store
from supervisor.store.migrator import SchemaTooNew, latest, migrations
from supervisor.store.sqlite import SqliteStore
from tests.conftest import driver_connection

REPO = Path(__file__).resolve().parents[2]


def connect(dsn: str) -> Any:
    """An operator's own client: autocommit, rows as dicts."""
    return driver_connection(dsn, autocommit=True, dict_rows=True)


def execute(conn: Any, statement: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    if isinstance(conn, sqlite3.Connection):
        return [dict(row) for row in conn.execute(statement, params).fetchall()]
    with conn.cursor() as cursor:
        cursor.execute(statement.replace("?", "%s"), params)
        return list(cursor.fetchall())


def dialect_of(dsn: str) -> str:
    return "mysql" if dsn.startswith("mysql") else "sqlite"


@pytest.fixture
def conn(dsn: str) -> Iterator[Any]:
    connection = connect(dsn)
    try:
        yield connection
    finally:
        connection.close()


def versions(conn: Any) -> list[int]:
    return [int(r["version"]) for r in execute(conn, "SELECT version FROM schema_migrations")]


def opened(dsn: str) -> Store:
    return open_store(parse_dsn(dsn))


def test_a_new_database_gets_every_version_recorded(dsn: str, conn: Any) -> None:
    store = opened(dsn)
    store.migrate()
    assert sorted(versions(conn)) == list(range(1, latest(dialect_of(dsn)) + 1))
    store.migrate()  # again: nothing pending, nothing changes
    assert sorted(versions(conn)) == list(range(1, latest(dialect_of(dsn)) + 1))
    store.close()


def test_a_first_release_database_is_adopted_as_version_1_and_upgraded_with_its_rows(
    dsn: str, conn: Any
) -> None:
    """The first release's tables, a task in each status that matters, then `migrate`."""
    for statement in migrations(dialect_of(dsn))[0].statements:
        execute(conn, statement)
    execute(conn, "INSERT INTO tasks (type, task_options, max_attempts) VALUES ('a', 'x', 5)")
    execute(conn, "INSERT INTO tasks (type, task_options) VALUES ('b', 'y')")
    execute(conn, "INSERT INTO tasks (type) VALUES ('gone')")
    execute(conn, "DELETE FROM tasks WHERE type = 'gone'")
    execute(conn, "UPDATE tasks SET status = 'failed', failure = 'panic' WHERE type = 'b'")

    store = opened(dsn)
    store.migrate()

    assert sorted(versions(conn)) == list(range(1, latest(dialect_of(dsn)) + 1))
    a, b = (store.get(1), store.get(2))
    assert a is not None and b is not None
    assert (a.type, a.options, a.max_attempts, a.status) == ("a", "x", 5, Status.QUEUED)
    assert (b.type, b.status, b.failure) == ("b", Status.FAILED, Failure.PANIC)
    assert b.max_attempts == 3, "a first-release row keeps the 3 its column default gave it"
    assert store.enqueue(NewTask(type="c")) == 4, "id 3 was used once: it is never handed out again"
    store.close()


def test_several_supervisors_migrating_at_once_apply_each_version_once(dsn: str, conn: Any) -> None:
    """Eight stores (eight connections) migrate a new database at the same moment."""
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def migrate() -> None:
        store = opened(dsn)
        try:
            start.wait()
            store.migrate()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=migrate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(versions(conn)) == list(range(1, latest(dialect_of(dsn)) + 1))


def test_a_schema_newer_than_this_code_is_refused_with_one_line(dsn: str, conn: Any) -> None:
    store = opened(dsn)
    store.migrate()
    newer = latest(dialect_of(dsn)) + 1
    execute(conn, "INSERT INTO schema_migrations (version, name) VALUES (?, 'future')", (newer,))
    with pytest.raises(SchemaTooNew) as refused:
        store.migrate()
    message = str(refused.value)
    assert "\n" not in message
    assert f"version {newer}" in message and "upgrade the supervisor" in message
    store.close()


@pytest.mark.mysql
def test_the_hand_applied_schema_sql_equals_what_the_migrations_build(mysql_dsn: str) -> None:
    """`mysql app < schema.sql` and `migrate` give the same tables, indexes and versions."""
    by_hand = connect(mysql_dsn)
    for statement in _statements(REPO / "schema.sql"):
        execute(by_hand, statement)
    for statement in _statements(REPO / "schema.sql"):  # idempotent
        execute(by_hand, statement)
    migrated_dsn = mysql_dsn + "_m"
    database = parse_dsn(migrated_dsn)
    assert isinstance(database, MysqlDsn)
    execute(by_hand, f"CREATE DATABASE `{database.database}`")
    try:
        opened(migrated_dsn).migrate()
        migrated = connect(migrated_dsn)
        assert _schema(migrated) == _schema(by_hand)
        assert versions(migrated) == versions(by_hand) == list(range(1, latest("mysql") + 1))
        migrated.close()
    finally:
        execute(by_hand, f"DROP DATABASE `{database.database}`")
        by_hand.close()


def test_the_sqlite_migrations_build_the_schema_the_store_uses(sqlite_dsn: str) -> None:
    """Every column the store reads exists after the migrations (a whole row round-trips)."""
    store = opened(sqlite_dsn)
    assert isinstance(store, SqliteStore)
    store.migrate()
    task_id = store.enqueue(
        NewTask(type="t", max_attempts=4, timeout_s=2.5, concurrency_key="k", options="o")
    )
    row = store.get(task_id)
    assert row is not None
    assert (row.max_attempts, row.timeout_s, row.concurrency_key) == (4, 2.5, "k")
    store.close()


def _statements(path: Path) -> list[str]:
    from supervisor.store.queries import parse_statements

    return parse_statements(path.read_text("utf-8"))


def _schema(conn: Any) -> dict[str, str]:
    """Each table's CREATE TABLE, without the AUTO_INCREMENT counter (it follows the rows)."""
    import re

    tables = [next(iter(r.values())) for r in execute(conn, "SHOW TABLES")]
    return {
        table: re.sub(
            r" AUTO_INCREMENT=\d+",
            "",
            execute(conn, f"SHOW CREATE TABLE `{table}`")[0]["Create Table"],
        )
        for table in sorted(tables)
    }


def test_migration_files_are_packaged_for_both_dialects() -> None:
    for dialect in ("mysql", "sqlite"):
        folder = resources.files("supervisor.store").joinpath("migrations", dialect)
        assert [m.version for m in migrations(dialect)] == list(range(1, latest(dialect) + 1))
        assert folder.joinpath("0001_initial.sql").is_file()
