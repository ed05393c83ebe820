"""The exceptions that cross module boundaries.

Each one maps to a single kind of reaction: a user error is reported as one
line with exit status 2, a store error with exit status 1, and
:class:`PermanentError` tells the supervisor not to retry a task.
"""

from __future__ import annotations


class PermanentError(Exception):
    """Raised by a handler: the task fails now and is not retried."""


class UsageError(ValueError):
    """Bad input from a user (flag, DSN, task type, options): nothing was written."""


class StoreError(Exception):
    """The database refused or failed an operation that retrying will not fix."""


class UnreadableRow(StoreError):
    """A row holds values no lifecycle rule made (an empty status, a zero date).

    Plain SQL is a supported producer, and a permissive MariaDB stores what it
    cannot refuse. ``fields`` keeps the row as the database returned it, so an
    operator can still be shown what is there.
    """

    def __init__(self, task_id: int, fields: dict[str, object], problem: str) -> None:
        super().__init__(f"task {task_id} holds values outside the lifecycle: {problem}")
        self.task_id = task_id
        self.fields = fields


class StoreUnavailable(StoreError):
    """The database cannot be reached (refused, reset, gone away); retrying later may work."""


class StoreMisconfigured(StoreUnavailable):
    """The database refused us for a reason only the operator can fix.

    Unknown database, access denied, an unresolvable host. At start-up this is
    fatal (one line, exit 1); once running it is treated as an outage like any
    other, since grants and databases can be restored while we wait.
    """


class StartupError(Exception):
    """``run`` cannot start (a port in use, a database that never answered): exit status 1."""
