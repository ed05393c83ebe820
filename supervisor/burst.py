"""Burst mode (``--burst``): work through everything runnable now, then exit with a verdict.

For CI jobs, cron-driven batch hosts and tests. The supervisor runs as usual
until its database link reports that a claim found nothing runnable
(:class:`~supervisor.link_events.RanDry`) *after* every result the loop had
handed over was written, with no attempt running and no claim waiting for a
child. Only then is the queue truly dry for this supervisor: a retry written
with no backoff left is runnable and is claimed first. Tasks delayed past
now, and retries whose backoff has not passed, are not waited for.

The exit status says whether every task it ran completed (0) or not (1); the
closing log line counts the outcomes, in the words of ``tasks_processed_total``.
"""

from __future__ import annotations

from collections import Counter

from supervisor.lifecycle import Outcome
from supervisor.results import PendingResult

EXIT_ALL_COMPLETED = 0
EXIT_SOME_FAILED = 1


class BurstTally:
    """The last outcome of each task this supervisor ran, as written to its row."""

    def __init__(self) -> None:
        self._last: dict[int, Outcome] = {}
        self.attempts: Counter[str] = Counter()
        # Types not claimed at all (a bad policy constant; "*": no policy known): their tasks,
        # if any, were left queued, so the burst did not run everything runnable.
        self.refused_types: set[str] = set()

    def refused(self, task_type: str) -> None:
        self.refused_types.add(task_type)

    def recorded(self, result: PendingResult, won: bool, *, cancelled: bool = False) -> None:
        """A result written (``won``) or fenced out; a refund never ran, so it does not count."""
        if result.refund:
            return
        if won:
            outcome = result.decision.outcome
        else:
            outcome = Outcome.CANCELLED if cancelled else Outcome.LOST
        self._last[result.claim.id] = outcome
        self.attempts[outcome.value] += 1

    def not_recorded(self, result: PendingResult) -> None:
        """A result the final flush could not write: its task is rescued later, not done now."""
        if not result.refund:
            self._last[result.claim.id] = Outcome.LOST
            self.attempts["not recorded"] += 1

    @property
    def tasks(self) -> Counter[str]:
        """Tasks by their last outcome (``retried``: failed, waiting out its backoff)."""
        return Counter(outcome.value for outcome in self._last.values())

    def exit_status(self) -> int:
        if not self.refused_types and all(
            outcome is Outcome.COMPLETED for outcome in self._last.values()
        ):
            return EXIT_ALL_COMPLETED
        return EXIT_SOME_FAILED

    def summary(self) -> str:
        """The closing line: ``burst finished: 3 tasks: 2 completed, 1 error; exit 1``."""
        tasks = self.tasks
        total = sum(tasks.values())
        parts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(tasks.items()))
        ran = f"{total} task{'s' if total != 1 else ''}" + (f": {parts}" if parts else "")
        refused = (
            f"; types not claimed: {', '.join(sorted(self.refused_types))}"
            if self.refused_types
            else ""
        )
        return f"burst finished: {ran}{refused}; exit {self.exit_status()}"
