"""A task queue in the SQL database you already run, worked by a supervisor of isolated processes.

Producers use :class:`Queue` (or a plain ``INSERT``); handlers raise
:class:`PermanentError` to fail a task without retrying it.
"""

from __future__ import annotations

from supervisor.errors import PermanentError
from supervisor.producer import Queue, enqueue_in_transaction
from supervisor.task import Task

__version__ = "0.1.0"

__all__ = ["PermanentError", "Queue", "Task", "__version__", "enqueue_in_transaction"]
