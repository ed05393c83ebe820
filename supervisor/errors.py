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


class StoreUnavailable(StoreError):
    """The database cannot be reached (refused, reset, gone away); retrying later may work."""
