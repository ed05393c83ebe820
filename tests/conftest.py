"""Shared fixtures: a fresh database per test, on SQLite and on MariaDB/MySQL.

``dsn`` (and ``sql_store``, a migrated store on it) runs a test once per SQL
backend; the end-to-end tests hand the same ``dsn`` to the real CLI in
subprocesses, so only databases belong here. The store contract suite adds
the in-memory backend in its own ``store`` fixture (tests/store/test_contract.py).

MySQL tests use the server named by ``SUPERVISOR_TEST_MYSQL_DSN`` (default
``mysql://root@127.0.0.1:3306/test``); each test gets its own throwaway
database, dropped afterwards. When the server cannot be reached they are
skipped, unless ``SUPERVISOR_TEST_REQUIRE_MYSQL=1`` or ``CI`` is set: then
they fail, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from supervisor.dsn import MysqlDsn, parse_dsn
from supervisor.store import Store, open_store

MYSQL_DSN = os.environ.get("SUPERVISOR_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")
REQUIRE_MYSQL = bool(os.environ.get("SUPERVISOR_TEST_REQUIRE_MYSQL") or os.environ.get("CI"))


def _admin_connection(dsn: MysqlDsn) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host=dsn.host,
        port=dsn.port,
        user=dsn.user,
        password=dsn.password,
        unix_socket=dsn.unix_socket,
        autocommit=True,
        connect_timeout=5,
    )


@pytest.fixture(scope="session")
def mysql_server() -> MysqlDsn:
    dsn = parse_dsn(MYSQL_DSN)
    assert isinstance(dsn, MysqlDsn)
    try:
        _admin_connection(dsn).close()
    except pymysql.err.MySQLError as exc:
        message = f"MySQL at {dsn.redacted()} is unreachable: {exc}"
        if REQUIRE_MYSQL:
            pytest.fail(message + " (required: SUPERVISOR_TEST_REQUIRE_MYSQL or CI is set)")
        pytest.skip(message)
    return dsn


@pytest.fixture
def mysql_dsn(mysql_server: MysqlDsn) -> Iterator[str]:
    """A DSN naming a brand-new, empty database, dropped after the test."""
    name = f"sv_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_connection(mysql_server)
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    try:
        password = f":{mysql_server.password}" if mysql_server.password else ""
        yield (
            f"mysql://{mysql_server.user}{password}@{mysql_server.host}:{mysql_server.port}/{name}"
        )
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def sqlite_dsn(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tasks.db'}"


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def dsn(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once per backend."""
    name = "sqlite_dsn" if request.param == "sqlite" else "mysql_dsn"
    return str(request.getfixturevalue(name))


def driver_connection(dsn: str, *, autocommit: bool, dict_rows: bool = False) -> Any:
    """A plain driver connection on ``dsn`` (pymysql or sqlite3), as a producer's own would be.

    ``dict_rows``: rows as dicts (pymysql's DictCursor, sqlite3.Row) rather than tuples.
    """
    parsed = parse_dsn(dsn)
    if isinstance(parsed, MysqlDsn):
        return pymysql.connect(
            host=parsed.host,
            port=parsed.port,
            user=parsed.user,
            password=parsed.password,
            database=parsed.database,
            autocommit=autocommit,
            cursorclass=pymysql.cursors.DictCursor if dict_rows else pymysql.cursors.Cursor,
        )
    conn = sqlite3.connect(parsed.path, isolation_level=None if autocommit else "DEFERRED")
    if dict_rows:
        conn.row_factory = sqlite3.Row
    return conn


@contextlib.contextmanager
def migrated_store(dsn: str) -> Iterator[Store]:
    """A store on ``dsn`` with its tables created, closed afterwards."""
    store = open_store(parse_dsn(dsn))
    store.migrate()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def sql_store(dsn: str) -> Iterator[Store]:
    """A fresh store on each SQL backend: for tests that also reach the database with SQL."""
    with migrated_store(dsn) as store:
        yield store


@pytest.fixture
def store(sql_store: Store) -> Store:
    """The store on the same database as ``dsn`` (what the end-to-end tests' CLI runs on)."""
    return sql_store


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop coverage data files that processes killed mid-save left empty.

    The suite SIGKILLs children on purpose (deadlines, panics, kill -9); one
    killed while coverage.py writes its data leaves a file without the schema,
    which ``coverage combine`` would warn about and leave behind. Its data is
    lost either way. Only files that cannot be read as coverage data go.
    """
    from coverage import CoverageData
    from coverage.exceptions import CoverageException

    for path in Path(session.config.rootpath).glob(".coverage.*"):
        try:
            CoverageData(basename=str(path)).read()
        except (CoverageException, sqlite3.Error):
            path.unlink(missing_ok=True)
