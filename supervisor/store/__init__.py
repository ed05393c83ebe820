"""Task storage: one interface (:class:`Store`), an SQLite and a MySQL/MariaDB backend.

:class:`MemoryStore` keeps the same contract in plain Python objects, for unit
tests of the supervisor's loop; it imports no database driver.
"""

from __future__ import annotations

from supervisor.dsn import Dsn, MysqlDsn, SqliteDsn
from supervisor.store.base import (
    Claim,
    Enqueued,
    NewTask,
    Rescued,
    StackRequest,
    StatusCount,
    Store,
    SupervisorInfo,
    TaskControl,
    TaskFilter,
    TaskRow,
    TaskSummary,
    Transition,
    TypeInfo,
)
from supervisor.store.memory import ManualClock, MemoryStore


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
    "Enqueued",
    "ManualClock",
    "MemoryStore",
    "NewTask",
    "Rescued",
    "StackRequest",
    "StatusCount",
    "Store",
    "SupervisorInfo",
    "TaskControl",
    "TaskFilter",
    "TaskRow",
    "TaskSummary",
    "Transition",
    "TypeInfo",
    "open_store",
]
