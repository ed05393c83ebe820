"""Task storage: one interface (:class:`Store`), an SQLite and a MySQL/MariaDB backend."""

from __future__ import annotations

from supervisor.dsn import Dsn, MysqlDsn, SqliteDsn
from supervisor.store.base import (
    Claim,
    NewTask,
    Rescued,
    StatusCount,
    Store,
    SupervisorInfo,
    TaskRow,
    Transition,
)


def open_store(dsn: Dsn) -> Store:
    """The backend for ``dsn``; it connects lazily, on first use."""
    if isinstance(dsn, MysqlDsn):
        from supervisor.store.mysql import MysqlStore

        return MysqlStore(dsn)
    assert isinstance(dsn, SqliteDsn)
    from supervisor.store.sqlite import SqliteStore

    return SqliteStore(dsn)


__all__ = [
    "Claim",
    "NewTask",
    "Rescued",
    "StatusCount",
    "Store",
    "SupervisorInfo",
    "TaskRow",
    "Transition",
    "open_store",
]
