"""Outcomes waiting to be written: held in memory while the database is away, written in batches.

An outcome is decided the moment a child reports (or dies, or times out);
writing it is separate, so a database outage never blocks the loop or loses
a result. Every write is fenced: a result for a task that was rescued in the
meantime loses, and is reported as ``lost`` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from supervisor.lifecycle import Decision, Failure, Outcome, Status, decision_for_failure
from supervisor.store import Claim, Store


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


Recorder = Callable[[PendingResult, bool], None]


def is_completion(result: PendingResult) -> bool:
    return result.decision.outcome is Outcome.COMPLETED and not result.refund


def settle_completions(
    completions: list[PendingResult],
    won: set[int],
    pending: list[PendingResult],
    recorded: Recorder,
) -> None:
    """The completions were written (``won``: ids that kept their fence): off ``pending``."""
    for result in completions:
        pending.remove(result)
        recorded(result, result.claim.id in won)


def write_results(
    store: Store, pending: list[PendingResult], recorded: Recorder, *, completions: bool = True
) -> None:
    """Write ``pending`` (removing each as it is written); ``recorded(result, won)`` after each.

    Completions go in one statement (or are left for the next claim to carry,
    with ``completions=False``); the rest one fenced statement each. A store
    exception propagates with the unwritten results still in ``pending``.
    """
    done = [p for p in pending if is_completion(p)]
    if done and completions:
        settle_completions(done, store.complete_many([p.claim for p in done]), pending, recorded)
    for result in [p for p in pending if not is_completion(p)]:
        recorded_won = write_one(store, result)
        pending.remove(result)
        recorded(result, recorded_won)


def write_one(store: Store, result: PendingResult) -> bool:
    claim, decision = result.claim, result.decision
    if result.refund:
        return store.refund(claim)
    if result.progress_pct is not None and decision.status is not Status.COMPLETED:
        store.progress(claim, result.progress_pct)
    if decision.status is Status.QUEUED:
        assert decision.retry_in_s is not None
        return store.requeue(claim, decision.retry_in_s, result.error)
    if decision.status is Status.COMPLETED:
        return store.complete(claim)
    assert decision.failure is not None
    return store.fail(claim, decision.failure, result.error)


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
