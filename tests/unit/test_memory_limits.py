"""Memory limits: the watch's decisions, ``MAX_RSS`` in the loop, ``--max-child-rss`` recycling.

The watch is driven with an injected clock and RSS reader (no real process
is read); the loop with fake children whose RSS the test says.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Collection

import pytest

from supervisor import memory_watch
from supervisor.config import Settings, add_run_flags, settings_from
from supervisor.errors import UsageError
from supervisor.lifecycle import Failure, Status, memory_error
from supervisor.memory_watch import (
    MEMORY_STACK_LEAD_S,
    MIB,
    SAMPLE_INTERVAL_S,
    TREE_INTERVAL_S,
    Breach,
    MemoryWatch,
    descendants,
    statm_rss,
)
from supervisor.policy import HandlerPolicy, PolicyError, from_constants
from supervisor.pool import HEAVY_CHILD_MESSAGE, MAX_CHILD_RSS_MESSAGE
from supervisor.telemetry import MEMORY_KILL_MESSAGE, MEMORY_REAPED_MESSAGE
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import FAKE_PID_BASE, STACK_TEXT, Loop, MonotonicClock

# --- the watch, alone ----------------------------------------------------------------------


class Readings:
    """An RSS reader the test fills: ``rss[pid]`` in bytes, absent = the process is gone."""

    def __init__(self) -> None:
        self.rss: dict[int, int] = {}
        self.reads: list[int] = []
        self.tree: dict[int, tuple[int, ...]] = {}
        self.scans: list[list[int]] = []  # the roots of each scan of the process table
        self.table_unreadable = False  # out of fds, say: the scan finds nothing at all

    def read(self, pid: int) -> int | None:
        self.reads.append(pid)
        return self.rss.get(pid)

    def list(self, roots: Collection[int]) -> dict[int, tuple[int, ...]] | None:
        self.scans.append(sorted(roots))
        if self.table_unreadable:
            return None
        return {root: self.tree.get(root, ()) for root in roots}


def watch_with(readings: Readings, clock: MonotonicClock) -> MemoryWatch:
    return MemoryWatch(clock=clock, read_rss=readings.read, list_descendants=readings.list)


def test_nothing_watched_costs_nothing() -> None:
    readings, clock = Readings(), MonotonicClock()
    watch = watch_with(readings, clock)
    assert watch.next_due() is None, "the loop's wait is not shortened"
    assert watch.sample(clock()) == []
    assert readings.reads == [] and readings.scans == []


def test_a_tree_is_read_every_interval_and_reported_once_when_over_its_limit() -> None:
    readings, clock = Readings(), MonotonicClock()
    watch = watch_with(readings, clock)
    readings.rss[10] = 50 * MIB
    watch.start(10, 100 * MIB)
    assert watch.next_due() == clock() + SAMPLE_INTERVAL_S
    assert watch.sample(clock()) == [] and readings.reads == [], "not due yet"

    clock.now += SAMPLE_INTERVAL_S
    assert watch.sample(clock()) == []
    assert readings.reads == [10]
    assert watch.next_due() == clock() + SAMPLE_INTERVAL_S

    readings.rss[10] = 100 * MIB  # at the limit is not over it
    clock.now += SAMPLE_INTERVAL_S
    assert watch.sample(clock()) == []

    readings.rss[10] = 100 * MIB + 1
    clock.now += SAMPLE_INTERVAL_S
    assert watch.sample(clock()) == [Breach(pid=10, rss_bytes=100 * MIB + 1, limit_bytes=100 * MIB)]
    assert watch.next_due() is None, "a breach is reported once; the kill follows"
    clock.now += SAMPLE_INTERVAL_S
    assert watch.sample(clock()) == []


def test_the_tree_is_the_child_plus_its_descendants_listed_at_a_slower_rate() -> None:
    readings, clock = Readings(), MonotonicClock()
    watch = watch_with(readings, clock)
    readings.rss.update({10: 40 * MIB, 11: 30 * MIB, 12: 20 * MIB})
    readings.tree[10] = (11, 12)
    watch.start(10, 100 * MIB)

    clock.now += SAMPLE_INTERVAL_S
    assert watch.sample(clock()) == []
    assert readings.scans == [[10]]
    assert watch.last_reading(10) == (90 * MIB, 100 * MIB)

    # Between scans the known descendants are read again, but not looked for again.
    readings.rss[11] = 45 * MIB
    clock.now += SAMPLE_INTERVAL_S
    [breach] = watch.sample(clock())
    assert breach.rss_bytes == 105 * MIB
    assert readings.scans == [[10]], "one scan per TREE_INTERVAL_S"


def test_a_new_descendant_counts_from_the_next_listing_and_a_gone_one_reads_as_nothing() -> None:
    readings, clock = Readings(), MonotonicClock()
    watch = watch_with(readings, clock)
    readings.rss.update({10: 40 * MIB, 11: 30 * MIB})
    readings.tree[10] = (11,)
    watch.start(10, 100 * MIB)
    clock.now += SAMPLE_INTERVAL_S
    watch.sample(clock())

    readings.rss[12] = 70 * MIB
    readings.tree[10] = (11, 12)
    del readings.rss[11]  # exited since the listing
    clock.now += SAMPLE_INTERVAL_S
    assert watch.sample(clock()) == [] and readings.scans == [[10]]
    clock.now += TREE_INTERVAL_S
    [breach] = watch.sample(clock())
    assert readings.scans == [[10], [10]] and breach.rss_bytes == 110 * MIB


def test_a_scan_that_cannot_read_the_process_table_keeps_the_descendants_known() -> None:
    """Forgetting them would let a tree's memory hide in its subprocesses until a scan works."""
    readings, clock = Readings(), MonotonicClock()
    watch = watch_with(readings, clock)
    readings.rss.update({10: 40 * MIB, 11: 30 * MIB})
    readings.tree[10] = (11,)
    watch.start(10, 100 * MIB)
    clock.now += SAMPLE_INTERVAL_S
    watch.sample(clock())

    readings.table_unreadable = True
    readings.rss[11] = 70 * MIB
    clock.now += TREE_INTERVAL_S
    [breach] = watch.sample(clock())
    assert len(readings.scans) == 2 and breach.rss_bytes == 110 * MIB


def test_descendants_answers_none_when_the_table_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreadable(*args: object, **kwargs: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(memory_watch.psutil, "process_iter", unreadable)
    assert memory_watch.descendants([os.getpid()]) is None


def test_one_scan_serves_every_watched_tree_and_a_later_one_waits_for_the_next_scan() -> None:
    """The scan reads the whole process table: at most one per TREE_INTERVAL_S, for all."""
    readings, clock = Readings(), MonotonicClock()
    watch = watch_with(readings, clock)
    readings.rss.update({10: MIB, 20: MIB, 21: 200 * MIB})
    readings.tree[20] = (21,)
    watch.start(10, 100 * MIB)
    clock.now += SAMPLE_INTERVAL_S / 2
    watch.start(20, 100 * MIB)  # due half an interval after the first
    clock.now += SAMPLE_INTERVAL_S / 2
    assert watch.sample(clock()) == []
    assert readings.scans == [[10, 20]], "both trees, though only the first was due"
    clock.now += SAMPLE_INTERVAL_S / 2
    [breach] = watch.sample(clock())
    assert (breach.pid, breach.rss_bytes) == (20, 201 * MIB)

    watch.start(30, 100 * MIB)
    readings.rss[30] = MIB
    clock.now += SAMPLE_INTERVAL_S
    watch.sample(clock())
    assert readings.scans == [[10, 20]], "a new tree waits for the next scan"
    clock.now += TREE_INTERVAL_S
    watch.sample(clock())
    assert readings.scans == [[10, 20], [10, 20, 30]]


def test_a_child_that_is_gone_is_no_breach_and_its_exit_settles_the_attempt() -> None:
    readings, clock = Readings(), MonotonicClock()
    watch = watch_with(readings, clock)
    watch.start(10, MIB)
    clock.now += SAMPLE_INTERVAL_S
    assert watch.sample(clock()) == []
    assert watch.next_due() == clock() + SAMPLE_INTERVAL_S


def test_the_last_reading_is_the_peak_seen_including_a_read_just_before_the_kill() -> None:
    readings, clock = Readings(), MonotonicClock()
    watch = watch_with(readings, clock)
    assert watch.last_reading(10) is None, "not watched"
    readings.rss[10] = 120 * MIB
    watch.start(10, 100 * MIB)
    clock.now += SAMPLE_INTERVAL_S
    watch.sample(clock())
    readings.rss[10] = 130 * MIB  # still allocating during the stack's lead
    assert watch.last_reading(10) == (130 * MIB, 100 * MIB)
    del readings.rss[10]
    assert watch.last_reading(10) == (130 * MIB, 100 * MIB), "the peak stays"


def test_a_stopped_watch_reads_nothing_more() -> None:
    readings, clock = Readings(), MonotonicClock()
    watch = watch_with(readings, clock)
    watch.start(10, MIB)
    watch.start(20, MIB)
    watch.stop(10)
    watch.stop(99)  # never watched: nothing happens
    assert watch.watching() == 1
    clock.now += SAMPLE_INTERVAL_S
    watch.sample(clock())
    assert readings.reads == [20]


def test_statm_reads_a_real_process_and_nothing_for_a_missing_one() -> None:
    own = statm_rss(os.getpid())
    assert own is not None and own > 10 * MIB  # a Python interpreter with pytest loaded
    assert statm_rss(FAKE_PID_BASE) is None
    assert descendants([FAKE_PID_BASE]) == {FAKE_PID_BASE: ()}


# --- the constant --------------------------------------------------------------------------


def test_max_rss_is_read_in_mib_and_is_not_declared_fleet_wide() -> None:
    policy = from_constants({"MAX_RSS": 100})
    assert policy == HandlerPolicy(max_rss_mib=100.0)
    assert policy.max_rss_bytes == 100 * MIB
    assert from_constants({"MAX_RSS": 0.5}).max_rss_bytes == MIB // 2
    assert policy.as_constants() == {"MAX_RSS": 100.0}
    assert policy.declared() == HandlerPolicy(), "task_types has no column for it"
    assert HandlerPolicy().max_rss_bytes is None


@pytest.mark.parametrize("value", [0, -1, True, "100", math.nan, math.inf, 2**21, [100]])
def test_a_bad_max_rss_is_refused_with_a_message_naming_it(value: object) -> None:
    with pytest.raises(PolicyError, match="MAX_RSS must be a number of MiB above 0"):
        from_constants({"MAX_RSS": value})


def test_the_memory_error_names_peak_limit_and_stack() -> None:
    text = memory_error(int(131.24 * MIB), 100 * MIB, STACK_TEXT)
    assert text == (
        "memory: the child's tree used 131.2 MiB, over this handler's MAX_RSS of 100 MiB;"
        f" the child and its process tree were killed\n\nStack at the kill:\n{STACK_TEXT}"
    )
    assert "Stack" not in memory_error(MIB, MIB, "")


# --- the flag ------------------------------------------------------------------------------


def settings(argv: list[str], environ: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_run_flags(parser, environ)
    return settings_from(parser.parse_args(argv), environ)


def test_max_child_rss_comes_from_the_flag_or_the_environment_and_is_off_by_default() -> None:
    assert settings([], {}).max_child_rss_bytes == 0
    assert settings(["--max-child-rss", "256"], {}).max_child_rss_bytes == 256 * MIB
    assert settings([], {"SUPERVISOR_MAX_CHILD_RSS": "1.5"}).max_child_rss_mib == 1.5
    with pytest.raises(UsageError, match="--max-child-rss must be MiB >= 0, got '-1'"):
        settings(["--max-child-rss", "-1"], {})


# --- MAX_RSS in the loop -------------------------------------------------------------------

LIMITED = {"echo": {"MAX_RSS": 100}}


def breach(loop: Loop, rss: dict[int, int]) -> None:
    """Dispatch one task; the watch samples it at ``rss`` (by pid) one interval later."""
    loop.sup.memory.read_rss = rss.get
    loop.sup.memory.list_descendants = lambda roots: {}
    loop.cycle()
    assert loop.sup.memory.next_due() == loop.clock() + SAMPLE_INTERVAL_S
    assert loop.sup.next_wakeup() == loop.clock() + SAMPLE_INTERVAL_S, "the loop wakes to sample"
    loop.advance(SAMPLE_INTERVAL_S)
    loop.step()


def test_a_child_over_max_rss_gets_its_stack_taken_then_is_killed_and_fails_memory(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, constants=LIMITED)
    [task_id] = loop.enqueue()
    child = loop.child(0)
    rss = {child.pid: 120 * MIB}
    breach(loop, rss)
    assert (child.stack_requests, child.kills) == (1, 0)
    breached_at = loop.clock()
    assert loop.sup.attempts.next_due() == breached_at + MEMORY_STACK_LEAD_S
    assert loop.sup.next_wakeup() == breached_at + MEMORY_STACK_LEAD_S

    rss[child.pid] = 125 * MIB  # it keeps allocating meanwhile
    loop.advance(MEMORY_STACK_LEAD_S)
    loop.step()
    assert child.kills == 1
    [line] = loop.logged(MEMORY_KILL_MESSAGE)
    assert (line["task_id"], line["rss_mib"], line["limit_mib"]) == (task_id, 125.0, 100.0)
    assert loop.sup.memory.watching() == 0 and loop.sup.memory.next_due() is None

    loop.turn()
    loop.step()
    row = loop.row(task_id)
    assert (row.status, row.failure) == (Status.FAILED, Failure.MEMORY)
    assert (row.attempts, row.max_attempts) == (1, 3), "not retried, attempts left or not"
    assert row.last_error == memory_error(125 * MIB, 100 * MIB, STACK_TEXT)
    assert loop.metric("tasks_processed_total", type="echo", outcome="memory") == 1
    assert loop.metric("supervisor_child_restarts_total", reason="memory") == 1
    [reaped] = loop.logged(MEMORY_REAPED_MESSAGE)
    assert reaped["peak_rss_mib"] == 50.0  # the fake child's wait4 figure


def test_an_outcome_reported_after_the_memory_decision_does_not_win(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, constants=LIMITED)
    [task_id] = loop.enqueue()
    child = loop.child(0)
    breach(loop, {child.pid: 101 * MIB})
    child.say_done()  # the stack signal may have ended a blocking call: not the handler's word
    loop.step()
    assert child.kills == 1
    loop.turn()
    assert loop.row(task_id).failure is Failure.MEMORY


def test_a_child_under_max_rss_is_sampled_until_its_task_ends_then_no_more(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, constants=LIMITED)
    [task_id] = loop.enqueue()
    child = loop.child(0)
    breach(loop, {child.pid: 99 * MIB})
    assert child.stack_requests == 0 and loop.sup.memory.watching() == 1
    child.say_done()
    loop.step()
    loop.turn()
    assert loop.row(task_id).status is Status.COMPLETED
    assert loop.sup.memory.next_due() is None


def test_only_the_child_over_its_limit_is_killed(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2, constants=LIMITED)
    [first_id, second_id] = loop.enqueue(2)
    over, under = loop.child(0), loop.child(1)
    breach(loop, {over.pid: 150 * MIB, under.pid: 50 * MIB})
    assert [c.task().id for c in (over, under)] == [first_id, second_id]
    loop.advance(MEMORY_STACK_LEAD_S)
    loop.step()
    assert (over.kills, under.kills, under.stack_requests) == (1, 0, 0)
    assert loop.sup.memory.watching() == 1, "the other is still watched"
    under.say_done()
    loop.step()
    loop.turn()
    assert loop.row(first_id).failure is Failure.MEMORY
    assert loop.row(second_id).status is Status.COMPLETED


def test_a_type_without_max_rss_is_not_watched(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    loop.enqueue()
    loop.cycle()
    assert loop.busy() and loop.sup.memory.next_due() is None


def test_a_breach_in_the_deadlines_last_moment_is_left_to_the_deadline_kill(
    make_loop: MakeLoop,
) -> None:
    """The stack was asked for already: the kill it announces comes first, as a timeout."""
    loop = make_loop(workers=1, constants=LIMITED)
    [task_id] = loop.enqueue(budget_s=1)
    loop.cycle()
    child = loop.child(0)
    loop.sup.memory.read_rss = {child.pid: 200 * MIB}.get
    loop.advance(1 - 0.01)  # inside STACK_LEAD_S of the deadline
    loop.step()
    assert child.stack_requests == 1 and child.kills == 0
    loop.advance(0.01)
    loop.step()
    loop.turn()
    assert loop.row(task_id).failure is Failure.TIMEOUT


# --- --max-child-rss -----------------------------------------------------------------------


def run_one(loop: Loop, rss: dict[int, int]) -> None:
    loop.sup.pool.read_rss = rss.get
    loop.cycle()
    loop.child(0).say_done()
    loop.step()


def test_a_child_over_max_child_rss_after_its_task_is_recycled_not_failed(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, max_child_rss_mib=64)
    [task_id] = loop.enqueue()
    first = loop.child(0)
    run_one(loop, {first.pid: 65 * MIB})
    assert first.told_to_stop()
    [line] = loop.logged(MAX_CHILD_RSS_MESSAGE)
    assert (line["pid"], line["rss_mib"], line["limit_mib"]) == (first.pid, 65.0, 64.0)
    first.exit(0)
    loop.step()
    assert loop.child(0) is not first
    assert loop.metric("supervisor_child_restarts_total", reason="max_rss") == 1
    loop.turn()
    assert loop.row(task_id).status is Status.COMPLETED


def test_a_child_under_max_child_rss_is_kept_and_without_the_flag_nothing_is_read(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, max_child_rss_mib=64)
    loop.enqueue()
    first = loop.child(0)
    run_one(loop, {first.pid: 64 * MIB})
    assert not first.told_to_stop()

    unlimited = make_loop(workers=1)
    unlimited.enqueue()
    read: list[int] = []

    def reader(pid: int) -> int:
        read.append(pid)
        return 10**12

    unlimited.sup.pool.read_rss = reader
    unlimited.cycle()
    unlimited.child(0).say_done()
    unlimited.step()
    assert read == [] and not unlimited.child(0).told_to_stop()


def test_a_child_whose_rss_cannot_be_read_is_kept(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, max_child_rss_mib=64)
    loop.enqueue()
    first = loop.child(0)
    run_one(loop, {})
    assert not first.told_to_stop()


def test_a_max_rss_task_does_not_start_in_a_child_an_earlier_task_left_heavy(
    make_loop: MakeLoop,
) -> None:
    """The child's heap counts against the limit, and a memory failure is never retried:
    a child holding half the limit already is replaced before the task starts."""
    loop = make_loop(workers=1, constants=LIMITED)
    first_id, second_id = loop.enqueue(count=2)
    heavy = loop.child(0)
    rss = {heavy.pid: 60 * MIB}
    loop.sup.pool.read_rss = rss.get
    loop.sup.memory.read_rss = {}.get  # the watch sees nothing: this is about dispatch
    loop.cycle()
    assert heavy.running is not None and heavy.running.claim.id == first_id
    heavy.say_done()  # the first task ran in a fresh child: never read, never refused
    loop.step()
    loop.cycle()  # the second task is claimed and meets the heavy child
    assert heavy.told_to_stop(), "60 MiB is over half of MAX_RSS = 100"
    [line] = loop.logged(HEAVY_CHILD_MESSAGE)
    assert (line["pid"], line["rss_mib"], line["limit_mib"]) == (heavy.pid, 60.0, 100.0)
    heavy.exit(0)
    loop.step()
    fresh = loop.child(0)
    assert fresh is not heavy
    fresh.say_ready()
    loop.step()
    assert fresh.running is not None and fresh.running.claim.id == second_id
    assert loop.metric("supervisor_child_restarts_total", reason="max_rss") == 1


def test_a_light_child_keeps_its_max_rss_task(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, constants=LIMITED)
    loop.enqueue(count=2)
    child = loop.child(0)
    loop.sup.pool.read_rss = {child.pid: 49 * MIB}.get
    loop.sup.memory.read_rss = {}.get
    loop.cycle()
    child.say_done()
    loop.step()
    loop.cycle()
    assert not child.told_to_stop()
    assert child.running is not None, "the second task went to the same child"
