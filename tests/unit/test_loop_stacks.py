"""Stacks on demand and cancels within a poll interval: the loop's and the link's decisions.

A memory store and a hand-moved clock; the fake children write
:data:`~tests.unit.fakes.STACK_TEXT` to their dump file when signalled, as
faulthandler would.
"""

from __future__ import annotations

import os
import signal

import attrs
import pytest

from supervisor import workers
from supervisor.controls import STACK_REASK_S
from supervisor.errors import StoreUnavailable
from supervisor.lifecycle import Failure, Status
from supervisor.link_events import LeasesLost, StacksWanted
from supervisor.stacks import NO_STACK, NOT_CAUGHT, STACK_READ_LEAD_S
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import FAKE_PID_BASE, STACK_TEXT

LONG_LEASE_S = 60.0  # a heartbeat every 20 s: far later than any cancel below is seen
POLL_S = 0.2


def test_a_stack_request_signals_the_child_and_writes_its_stack_after_the_lead(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    loop.store.request_stack(task_id)

    loop.poll()  # the link reads the request within one poll interval; the loop signals
    assert child.stack_requests == 1
    assert loop.events(StacksWanted) == [StacksWanted(ids=frozenset({task_id}))]
    assert loop.row(task_id).stack is None, "read only once faulthandler had time to write"
    assert loop.sup.next_wakeup() <= loop.clock() + STACK_READ_LEAD_S

    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert (row.stack, row.stack_requested_at, row.status) == (STACK_TEXT, None, Status.RUNNING)
    assert child.kills == 0 and child.running is not None, "the child carries on"
    assert not child.running.stack_requested, "an on-demand stack is no deadline's"

    loop.poll()
    loop.poll()
    assert child.stack_requests == 1, "answered: not asked again"
    child.say_done()
    loop.step()
    loop.turn()
    assert loop.row(task_id).status is Status.COMPLETED


def test_a_task_that_reports_done_right_after_a_stack_request_completes_normally(
    make_loop: MakeLoop,
) -> None:
    """The deadline treats an outcome after its own stack request as a timeout; not this one."""
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    loop.store.request_stack(task_id)
    loop.poll()
    assert child.stack_requests == 1
    child.say_done()  # before the stack is read
    loop.step()
    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    loop.cycle()
    row = loop.row(task_id)
    assert (row.status, row.failure, row.stack) == (Status.COMPLETED, None, None)
    assert loop.metric("tasks_processed_total", type="echo", outcome="completed") == 1
    assert loop.child(0) is child and child.kills == 0


def test_a_cancel_is_seen_within_one_poll_interval_and_the_stack_is_taken_before_the_kill(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    started = loop.clock()
    loop.store.cancel(task_id)

    loop.poll()
    assert loop.events(LeasesLost) == [
        LeasesLost(ids=frozenset({task_id}), cancelled=frozenset({task_id}))
    ]
    assert (child.stack_requests, child.kills) == (1, 0), "the stack first"
    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    assert child.kills == 1
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.stack) == (Status.CANCELLED, STACK_TEXT)
    assert loop.clock() - started <= POLL_S + STACK_READ_LEAD_S
    assert loop.metric("tasks_processed_total", type="echo", outcome="cancelled") == 1
    assert loop.metric("tasks_processed_total", type="echo", outcome="lost") == 0


def test_a_cancel_while_a_stack_is_being_taken_uses_that_stack_and_then_kills(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    loop.sup.stacks.wanted(frozenset({task_id}))
    loop.store.cancel(task_id)
    assert loop.sup.stacks.cancelled(frozenset({task_id})) == {task_id}
    assert (child.stack_requests, child.kills) == (1, 0)
    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    loop.turn()
    assert child.kills == 1
    assert loop.row(task_id).stack == STACK_TEXT


def test_a_rescued_task_seen_by_the_per_poll_read_is_killed_at_once_without_a_stack(
    make_loop: MakeLoop,
) -> None:
    """Not ours any more and not cancelled: another supervisor runs it now; nothing to write."""
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    # What a rescue writes (its lease ran out, say while this process was stopped).
    rescued = attrs.evolve(loop.row(task_id), status=Status.QUEUED, claimed_by=None)
    loop.store._tasks[task_id] = rescued
    loop.poll()
    assert (child.stack_requests, child.kills) == (0, 1)
    assert loop.metric("tasks_processed_total", type="echo", outcome="lost") == 1


def test_the_per_poll_read_runs_at_most_once_per_poll_interval_and_never_when_idle(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    for _ in range(40):  # 2 s idle, turned every 50 ms
        loop.advance(0.05)
        loop.cycle()
    assert loop.calls()["task_controls"] == 0, "idle: nothing is read"

    loop.enqueue()
    loop.cycle()
    before = loop.calls()["task_controls"]
    for _ in range(40):  # 2 s busy, turned every 50 ms
        loop.advance(0.05)
        loop.cycle()
    reads = loop.calls()["task_controls"] - before
    # At most one per interval; at least one per interval and turn (a turn may come just short).
    assert 2.0 / (POLL_S + 0.05) - 1 <= reads <= 2.0 / POLL_S + 1


def test_a_busy_link_wakes_for_the_per_poll_read_with_nothing_else_due(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    loop.enqueue()
    loop.cycle()
    assert loop.link.next_due() <= loop.clock() + POLL_S


def test_a_stack_that_cannot_be_written_now_is_written_when_the_database_is_back(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.store.request_stack(task_id)
    loop.poll()
    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    loop.store.fail_with(StoreUnavailable("down"))
    loop.turn()
    loop.store.fail_with(None)
    loop.advance(5.0)  # past the link's retry
    loop.turn()
    assert loop.row(task_id).stack == STACK_TEXT


def test_a_child_that_writes_no_stack_is_recorded_as_such(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.child(0).request_stack = lambda: True  # type: ignore[method-assign]  # sent; none written
    loop.store.request_stack(task_id)
    loop.poll()
    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    loop.turn()
    assert loop.row(task_id).stack == NO_STACK.format(lead_ms=STACK_READ_LEAD_S * 1000)


def test_a_request_for_a_task_not_on_a_child_yet_is_passed_on_again_later(
    make_loop: MakeLoop,
) -> None:
    """A claim waiting in the backlog has no child to signal: the link asks again a bit later."""
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.turn()  # claimed; the loop has not taken the claim yet
    loop.store.request_stack(task_id)
    loop.advance(POLL_S)
    loop.turn()
    # The request reaches the loop before the claim does (as if the claim waited for a child).
    wanted = [e for e in loop.link._events if isinstance(e, StacksWanted)]
    assert wanted == [StacksWanted(ids=frozenset({task_id}))]
    loop.link._events.remove(wanted[0])
    loop.sup.stacks.wanted(wanted[0].ids)
    loop.step()
    child = loop.child(0)
    assert child.running is not None and child.stack_requests == 0

    for _ in range(int(STACK_REASK_S / POLL_S) + 1):
        loop.poll()
    assert child.stack_requests == 1, "asked again once the request was still pending"
    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    loop.turn()
    assert loop.row(task_id).stack == STACK_TEXT


def test_a_timeout_after_a_stack_on_demand_reports_only_the_stack_at_the_deadline(
    make_loop: MakeLoop,
) -> None:
    """The dump file keeps every stack of the attempt; the timeout's error names its own."""
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue(budget_s=10)
    claimed_at = loop.clock()
    loop.cycle()
    child = loop.child(0)

    def earlier() -> bool:
        with child.dump_path.open("a") as dump:
            dump.write("EARLIER STACK\n")
        return True

    child.request_stack = earlier  # type: ignore[method-assign]
    loop.store.request_stack(task_id)
    loop.poll()
    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    loop.turn()
    assert loop.row(task_id).stack == "EARLIER STACK"
    del child.request_stack  # the deadline's own request writes STACK_TEXT

    loop.advance_to(claimed_at + 10)
    loop.step()
    loop.advance_to(claimed_at + 10 + STACK_READ_LEAD_S)
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert row.failure is Failure.TIMEOUT and row.last_error is not None
    assert STACK_TEXT in row.last_error
    assert "EARLIER STACK" not in row.last_error


def test_a_second_request_while_a_stack_is_being_taken_sends_no_second_signal(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    loop.sup.stacks.wanted(frozenset({task_id}))
    loop.sup.stacks.wanted(frozenset({task_id}))
    assert child.stack_requests == 1
    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    loop.turn()
    assert loop.row(task_id).stack == STACK_TEXT


def test_a_child_that_does_not_catch_the_stack_signal_is_not_sent_it(
    make_loop: MakeLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its default action would kill the task; the answer says why there is no stack."""
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.child(0).catches_stack_signal = False
    loop.store.request_stack(task_id)
    loop.poll()
    loop.turn()
    assert loop.child(0).stack_requests == 0
    row = loop.row(task_id)
    assert (row.stack, row.status) == (NOT_CAUGHT, Status.RUNNING)


def test_catches_reads_the_kernels_mask_of_caught_signals() -> None:
    assert workers.catches(os.getpid(), signal.SIGINT), "Python catches SIGINT"
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        assert not workers.catches(os.getpid(), signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert workers.catches(FAKE_PID_BASE - 1, signal.SIGUSR1), "unknown: as before, signalled"


def test_a_deadline_that_asks_for_its_stack_while_one_is_being_taken_keeps_it(
    make_loop: MakeLoop,
) -> None:
    """An on-demand read that comes after the deadline's own request must not mark the
    deadline's dump as seen: the timeout's last_error would have no stack at all."""
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue(budget_s=10)
    claimed_at = loop.clock()
    loop.cycle()
    child = loop.child(0)
    loop.advance_to(claimed_at + 10 - 0.06)
    loop.sup.stacks.wanted(frozenset({task_id}))  # read due at -0.01 s
    loop.advance_to(claimed_at + 10 - 0.04)
    loop.step()  # the deadline asks for its own stack (at -0.05 s)
    assert child.stack_requests == 2
    loop.advance_to(claimed_at + 10 - 0.01)
    loop.step()  # the on-demand stack is read and written
    loop.advance_to(claimed_at + 10)
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert row.failure is Failure.TIMEOUT and row.last_error is not None
    assert STACK_TEXT in row.last_error


def test_a_cancel_right_after_a_stacked_attempt_ended_still_kills_the_next_one(
    make_loop: MakeLoop,
) -> None:
    """A stack taken of task A, which finished before the read; B runs on the same child and
    is cancelled meanwhile: the stale entry must not swallow B's cancel."""
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    first, second = loop.enqueue(count=2)
    loop.cycle()
    child = loop.child(0)
    loop.sup.stacks.wanted(frozenset({first}))
    child.say_done()
    loop.step()
    loop.cycle()
    assert child.running is not None and child.running.claim.id == second
    assert loop.sup.stacks.cancelled(frozenset({second})) == frozenset({second})
    loop.advance(STACK_READ_LEAD_S)
    loop.step()
    assert child.kills == 1


def test_a_cancel_of_a_child_that_does_not_catch_the_signal_kills_it_at_once(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=LONG_LEASE_S, poll_interval_s=POLL_S)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    child.catches_stack_signal = False
    loop.store.cancel(task_id)
    assert loop.sup.stacks.cancelled(frozenset({task_id})) == frozenset({task_id})
    assert child.kills == 1 and child.stack_requests == 0
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.stack) == (Status.CANCELLED, NOT_CAUGHT)
