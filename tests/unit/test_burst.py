"""Burst mode: the loop stops when the queue is dry for it, and its verdict counts last outcomes."""

from __future__ import annotations

from supervisor.burst import BurstTally
from supervisor.lifecycle import COMPLETED, REFUND, Backoff, Failure, Status, decide_error
from supervisor.link_events import RanDry
from supervisor.records import Claim
from supervisor.results import PendingResult, completion, failure_result, refund
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import Loop


def bursting(loop: Loop) -> Loop:
    """The loop as ``--burst`` builds it (Settings are frozen, so set what __init__ derives)."""
    loop.sup.burst = BurstTally()
    loop.link.report_dry = True
    return loop


def claim(task_id: int) -> Claim:
    return Claim(
        id=task_id, type="echo", options=None, attempt=1, max_attempts=3, owner="o", remaining_s=9
    )


# ---------------------------------------------------------------- the tally


def test_every_task_completed_is_exit_0_and_the_summary_counts_tasks() -> None:
    tally = BurstTally()
    tally.recorded(completion(claim(1), 0.1), True)
    tally.recorded(completion(claim(2), 0.1), True)

    assert tally.exit_status() == 0
    assert tally.summary() == "burst finished: 2 tasks: 2 completed; exit 0"


def test_a_task_counts_by_its_last_outcome_so_a_retry_that_later_completed_is_fine() -> None:
    tally = BurstTally()
    retried = decide_error(attempt=1, max_attempts=3, permanent=False, backoff=Backoff((0.0,)))
    tally.recorded(PendingResult(claim=claim(1), decision=retried), True)
    tally.recorded(PendingResult(claim=claim(1), decision=COMPLETED), True)

    assert tally.exit_status() == 0
    assert tally.attempts == {"retried": 1, "completed": 1}


def test_a_failed_or_still_backing_off_task_is_exit_1() -> None:
    tally = BurstTally()
    tally.recorded(failure_result(claim(1), Failure.PANIC, "panic: x", 0.1), True)
    retried = decide_error(attempt=1, max_attempts=3, permanent=False, backoff=Backoff())
    tally.recorded(PendingResult(claim=claim(2), decision=retried), True)

    assert tally.exit_status() == 1
    assert tally.summary() == "burst finished: 2 tasks: 1 panic, 1 retried; exit 1"


def test_refunds_never_ran_and_do_not_count() -> None:
    tally = BurstTally()
    tally.recorded(refund(claim(1)), True)
    tally.not_recorded(refund(claim(2)))

    assert tally.summary() == "burst finished: 0 tasks; exit 0"


def test_results_fenced_out_or_not_recorded_are_not_completions() -> None:
    tally = BurstTally()
    tally.recorded(completion(claim(1), 0.1), False)
    tally.recorded(completion(claim(2), 0.1), False, cancelled=True)
    tally.not_recorded(completion(claim(3), 0.1))

    assert tally.tasks == {"lost": 2, "cancelled": 1}
    assert tally.exit_status() == 1
    assert REFUND.status is Status.QUEUED  # (refund() is what a drain writes)


# ---------------------------------------------------------------- the loop


def test_the_loop_stops_once_a_claim_finds_nothing_after_the_last_result(
    make_loop: MakeLoop,
) -> None:
    loop = bursting(make_loop(workers=1))
    [task_id] = loop.enqueue()
    loop.cycle()
    assert loop.child(0).task().id == task_id
    assert not loop.sup.draining  # a dry claim while a task runs proves nothing

    loop.child(0).say_done()
    loop.step()
    loop.cycle()  # the completion rides with a claim that finds nothing

    assert loop.sup.draining
    assert loop.child(0).told_to_stop()
    assert loop.logged("burst: nothing runnable is left; stopping")
    assert loop.sup.burst is not None and loop.sup.burst.exit_status() == 0


def test_a_retry_due_at_once_runs_again_before_the_burst_ends(make_loop: MakeLoop) -> None:
    loop = bursting(make_loop(workers=1, backoff=Backoff((0.0,))))
    [task_id] = loop.enqueue(max_attempts=2)
    loop.cycle()
    loop.child(0).say_error()
    loop.step()
    loop.cycle()  # the retry is written, then claimed again: not dry

    assert not loop.sup.draining
    assert loop.child(0).task().attempt == 2
    loop.child(0).say_done()
    loop.step()
    loop.cycle()
    assert loop.sup.draining
    assert loop.row(task_id).status is Status.COMPLETED


def test_a_dry_claim_made_before_a_result_was_written_is_ignored(make_loop: MakeLoop) -> None:
    loop = bursting(make_loop(workers=1))
    loop.enqueue()
    loop.cycle()
    loop.child(0).say_error()
    loop.step()  # handed to the link, not yet written

    loop.sup.ran_dry(RanDry(submitted=0))

    assert not loop.sup.draining


def test_without_burst_the_link_stays_quiet_when_the_queue_is_dry(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    loop.cycle(3)
    assert loop.events(RanDry) == []
