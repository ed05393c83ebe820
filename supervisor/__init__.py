"""A task queue in the SQL database you already run, worked by a supervisor of isolated processes.

Producers use :class:`Queue` (or a plain ``INSERT``); handlers raise
:class:`PermanentError` to fail a task without retrying it.

The producer API is imported on first use, so a child process (which imports
this package to run handlers) does not pay for database drivers it never uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from supervisor.errors import PermanentError
from supervisor.task import Task

if TYPE_CHECKING:
    from supervisor.producer import Queue, enqueue_in_transaction

__version__ = "0.1.0"

__all__ = ["PermanentError", "Queue", "Task", "__version__", "enqueue_in_transaction"]


def __getattr__(name: str) -> Any:
    if name in ("Queue", "enqueue_in_transaction"):
        from supervisor import producer

        return getattr(producer, name)
    raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
