"""Outcomes waiting to be written: decided by the loop, written (fenced, batched) by the link.

An outcome is decided the moment a child reports (or dies, or times out);
writing it is the database link's job, on its own thread, so a database that
is slow or away never delays the loop and never loses a result. Every write
is fenced: a result for a task that was rescued in the meantime loses, and is
reported as ``lost`` instead.
"""

from __future__ import annotations

import attrs

from supervisor.lifecycle import COMPLETED, REFUND, Decision, Failure, Outcome, decision_for_failure
from supervisor.records import Claim
from supervisor.usage import Usage


@attrs.frozen(kw_only=True)
class PendingResult:
    """An outcome to write. ``error`` goes to ``last_error``; ``summary`` is all a log may show.

    A handler's exception message can quote its task's options, so for a
    handler's error the summary is only the exception's type; the supervisor's
    own texts (panic, timeout) are safe to log whole.
    """

    claim: Claim = attrs.field(repr=False)
    decision: Decision
    error: str = attrs.field(default="", repr=False)
    summary: str = ""
    duration_s: float = 0.0
    progress_pct: int | None = None
    refund: bool = False
    # What the attempt used (supervisor.usage); its wall time is ``duration_s``.
    cpu_s: float | None = None
    peak_rss_bytes: int | None = None

    @property
    def usage(self) -> Usage:
        """The figures the row keeps. A refund writes none: the attempt is undone as if it
        never ran, so the row keeps the figures of the last attempt that counts."""
        return Usage(cpu_s=self.cpu_s, peak_rss_bytes=self.peak_rss_bytes, wall_s=self.duration_s)

    @property
    def is_completion(self) -> bool:
        """Completions are written together in one statement, riding with the next claim."""
        return self.decision.outcome is Outcome.COMPLETED and not self.refund


def completion(
    claim: Claim,
    duration_s: float,
    cpu_s: float | None = None,
    peak_rss_bytes: int | None = None,
) -> PendingResult:
    return PendingResult(
        claim=claim,
        decision=COMPLETED,
        duration_s=duration_s,
        cpu_s=cpu_s,
        peak_rss_bytes=peak_rss_bytes,
    )


def refund(claim: Claim, duration_s: float = 0.0) -> PendingResult:
    """Back to ``queued`` as if the attempt never started (drain deadline, failed dispatch)."""
    return PendingResult(claim=claim, decision=REFUND, duration_s=duration_s, refund=True)


def failure_result(
    claim: Claim, failure: Failure, error: str, duration_s: float, progress_pct: int | None = None
) -> PendingResult:
    return PendingResult(
        claim=claim,
        decision=decision_for_failure(failure),
        error=error,
        summary=error.splitlines()[0] if error else "",
        duration_s=duration_s,
        progress_pct=progress_pct,
    )
