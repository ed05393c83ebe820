"""The record a handler receives: what to do, which attempt this is, and how long is left."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import attrs


@attrs.frozen(kw_only=True)
class Task:
    """One attempt at one task, as handed to ``handle(task, progress)``.

    ``options`` is the raw string the producer stored; parsing it is the
    handler's business, so a producer may use JSON, a URL or anything else.
    ``deadline`` is when this attempt is killed: the task's deadline, or the
    end of its per-attempt ``TIMEOUT`` if that comes first. It is wall-clock
    (UTC) for display; :meth:`remaining` uses the monotonic clock, which is
    what the supervisor enforces.
    """

    id: int
    type: str
    options: str | None
    attempt: int
    max_attempts: int
    deadline: datetime
    monotonic_deadline: float = attrs.field(repr=False)

    @classmethod
    def starting_now(
        cls,
        *,
        id: int,
        type: str,
        options: str | None,
        attempt: int,
        max_attempts: int,
        remaining_s: float,
    ) -> Task:
        """Build the record from the budget left, measured by the database at claim time."""
        return cls(
            id=id,
            type=type,
            options=options,
            attempt=attempt,
            max_attempts=max_attempts,
            deadline=datetime.now(UTC) + timedelta(seconds=remaining_s),
            monotonic_deadline=time.monotonic() + remaining_s,
        )

    def remaining(self) -> float:
        """Seconds left before the supervisor kills this attempt (never negative)."""
        return max(0.0, self.monotonic_deadline - time.monotonic())

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now is final, so a handler can e.g. notify someone."""
        return self.attempt >= self.max_attempts
