"""The store contract's backends: every test here that takes ``store`` runs on each of them.

SQLite, MariaDB/MySQL (a throwaway database each) and the in-memory store on a
manual clock. This overrides the shared ``store`` fixture (SQL only, paired
with ``dsn`` for the end-to-end tests): the in-memory backend cannot serve a
CLI in another process, but it must keep the same contract.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from supervisor.store import Store
from supervisor.store.memory import ManualClock, MemoryStore
from tests.conftest import migrated_store


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql), "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore(clock=ManualClock())
        return
    name = "sqlite_dsn" if request.param == "sqlite" else "mysql_dsn"
    with migrated_store(str(request.getfixturevalue(name))) as sql:
        yield sql
