"""The parent's side of accounting: which figures each way an attempt ends writes, and from where.

A reported attempt carries the child's figures; a killed one is read by the
parent just before the kill, against the CPU total the child reported when
the attempt began; a dead child's ``wait4`` usage, against the same; a
refund writes none. The wall time is the loop's own clock.
"""

from __future__ import annotations

import signal
from typing import Any

import attrs
import pytest
from prometheus_client.utils import floatToGoString

from supervisor import attempts
from supervisor.lifecycle import Failure, Status
from supervisor.protocol import DoneMessage, ErrorMessage, ReadyMessage
from supervisor.reaping import ExitStatus
from supervisor.stacks import STACK_READ_LEAD_S
from supervisor.usage import Usage
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import FakeChild, Loop

MIB = 1024 * 1024


def done(child: FakeChild, cpu_s: float, peak: int, total: float) -> None:
    child.say(DoneMessage(id=child.task().id, cpu_s=cpu_s, peak_rss_bytes=peak, cpu_total_s=total))


def figures(loop: Loop, task_id: int) -> tuple[float | None, int | None, float | None]:
    row = loop.row(task_id)
    return row.cpu_s, row.peak_rss_bytes, row.wall_s


@pytest.fixture
def live_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float | None]]:
    """The parent's read of a child it kills: (pid, CPU total at the attempt's start) each time;
    the child burned 5 s in all by then, and peaked at 80 MiB."""
    reads: list[tuple[int, float | None]] = []

    def measure(pid: int, start_s: float | None, **listing: object) -> Usage:
        reads.append((pid, start_s))
        return Usage(cpu_s=None if start_s is None else 5.0 - start_s, peak_rss_bytes=80 * MIB)

    monkeypatch.setattr(attempts, "measure_live", measure)
    return reads


def test_a_completion_writes_the_childs_figures_and_the_loops_wall_time(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.advance(1.5)
    done(loop.child(0), 1.25, 300 * MIB, 2.0)
    loop.step()
    loop.turn()
    assert figures(loop, task_id) == (1.25, 300 * MIB, 1.5)
    loop.step()  # the loop hears what the link recorded
    assert loop.metric("task_cpu_seconds_count", type="echo") == 1
    assert loop.metric("task_cpu_seconds_sum", type="echo") == 1.25
    assert loop.metric("task_peak_rss_bytes_sum", type="echo") == 300 * MIB
    assert (
        loop.metric("task_peak_rss_bytes_bucket", type="echo", le=floatToGoString(512 * MIB)) == 1
    )
    assert (
        loop.metric("task_peak_rss_bytes_bucket", type="echo", le=floatToGoString(256 * MIB)) == 0
    )


def test_a_batch_of_completions_gives_each_row_its_own_figures(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2)
    ids = loop.enqueue(2)
    loop.cycle()
    by_task = {c.task().id: c for c in loop.busy()}
    loop.advance(0.25)
    done(by_task[ids[0]], 0.1, 10 * MIB, 1.0)
    loop.step()
    loop.advance(0.25)
    done(by_task[ids[1]], 0.2, 20 * MIB, 1.0)
    loop.step()
    loop.turn()
    assert figures(loop, ids[0]) == (0.1, 10 * MIB, 0.25)
    assert figures(loop, ids[1]) == (0.2, 20 * MIB, 0.5)


def test_an_error_writes_the_childs_figures(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(max_attempts=3)
    loop.cycle()
    child = loop.child(0)
    loop.advance(2.0)
    child.say(
        ErrorMessage(
            id=child.task().id,
            message="ValueError: boom",
            traceback="...",
            permanent=False,
            cpu_s=0.75,
            peak_rss_bytes=40 * MIB,
            cpu_total_s=3.0,
        )
    )
    loop.step()
    loop.turn()
    assert loop.row(task_id).status is Status.QUEUED
    assert figures(loop, task_id) == (0.75, 40 * MIB, 2.0)


def test_a_killed_attempt_is_read_before_the_kill_from_the_last_reported_total(
    make_loop: MakeLoop, live_reads: list[tuple[int, float | None]]
) -> None:
    loop = make_loop(workers=1)
    first, second = loop.enqueue(2, budget_s=10)
    loop.cycle()
    child = loop.child(0)
    done(child, 1.0, 30 * MIB, 2.0)  # the child's CPU total is 2.0 s as the next attempt begins
    loop.step()
    loop.cycle()
    assert child.task().id == second
    loop.advance(10)
    loop.step()
    assert child.kills == 1
    assert live_reads == [(child.pid, 2.0)]
    loop.turn()
    row = loop.row(second)
    assert (row.status, row.failure) == (Status.FAILED, Failure.TIMEOUT)
    assert figures(loop, second) == (3.0, 80 * MIB, 10.0)
    assert figures(loop, first)[:2] == (1.0, 30 * MIB)


def test_a_kill_before_the_child_reported_any_total_has_no_cpu_figure(
    make_loop: MakeLoop, live_reads: list[tuple[int, float | None]]
) -> None:
    """Without a baseline the CPU of this attempt is unknown: None, never the child's total."""
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(budget_s=10)
    loop.cycle()  # the fake child's ready carried no total
    loop.advance(10)
    loop.step()
    loop.turn()
    assert figures(loop, task_id) == (None, 80 * MIB, 10.0)


def test_a_ready_message_gives_the_baseline(
    make_loop: MakeLoop, live_reads: list[tuple[int, float | None]]
) -> None:
    loop = make_loop(workers=1, ready=False)
    [task_id] = loop.enqueue(budget_s=10)
    child = loop.child(0)
    child.say(ReadyMessage(pid=child.pid, cpu_total_s=0.5))
    loop.step()
    loop.cycle()
    loop.advance(10)
    loop.step()
    loop.turn()
    assert live_reads == [(child.pid, 0.5)]
    assert figures(loop, task_id) == (4.5, 80 * MIB, 10.0)


def test_a_panic_takes_its_figures_from_the_dead_childs_usage(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    _, second = loop.enqueue(2)
    loop.cycle()
    child = loop.child(0)
    done(child, 1.0, 30 * MIB, 2.0)
    loop.step()
    loop.cycle()
    assert child.task().id == second
    reap = child.reap

    def reap_with_cpu() -> ExitStatus | None:
        status = reap()
        return None if status is None else attrs.evolve(status, cpu_s=5.5)

    child.reap = reap_with_cpu  # type: ignore[method-assign]
    loop.advance(0.5)
    child.exit(by=signal.SIGSEGV)
    loop.step()
    loop.turn()
    row = loop.row(second)
    assert (row.status, row.failure) == (Status.FAILED, Failure.PANIC)
    assert figures(loop, second) == (3.5, 50 * MIB, 0.5)  # the fake's wait4 peak is 50 MiB


def test_a_refund_keeps_the_figures_of_the_last_attempt_that_counts(
    make_loop: MakeLoop, live_reads: list[tuple[int, float | None]]
) -> None:
    loop = make_loop(workers=1, drain_timeout_s=5.0)
    [task_id] = loop.enqueue(max_attempts=3)
    loop.cycle()
    child = loop.child(0)
    loop.advance(1.0)
    child.say(
        ErrorMessage(
            id=task_id,
            message="ValueError: boom",
            traceback="...",
            permanent=False,
            cpu_s=0.5,
            peak_rss_bytes=25 * MIB,
            cpu_total_s=1.0,
        )
    )
    loop.step()
    loop.turn()
    loop.advance(30)  # the default backoff before attempt 2
    loop.step()
    loop.cycle()  # the second attempt starts
    assert loop.row(task_id).attempts == 2
    loop.sup.handle_sigterm()
    loop.step()
    loop.advance(5.0)
    loop.step()  # the drain deadline: killed, refunded
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.attempts) == (Status.QUEUED, 1)
    assert figures(loop, task_id) == (0.5, 25 * MIB, 1.0)


def test_a_cancelled_attempts_figures_reach_the_histograms_but_not_the_row(
    make_loop: MakeLoop, live_reads: list[tuple[int, float | None]]
) -> None:
    loop = make_loop(workers=1, lease_s=30)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.store.cancel(task_id)
    loop.advance(10)  # one heartbeat finds the claim gone
    loop.turn()
    loop.step()
    loop.advance(STACK_READ_LEAD_S)  # a cancelled task's stack is read, then its child killed
    loop.step()
    assert loop.child(0).kills == 1 or loop.spawner.spawned[0].kills == 1
    assert figures(loop, task_id) == (None, None, None)
    assert loop.metric("task_peak_rss_bytes_count", type="echo") == 1
    assert loop.metric("task_cpu_seconds_count", type="echo") == 0  # no baseline: no CPU


def test_figures_of_an_unknown_type_go_to_the_unknown_label(make_loop: MakeLoop) -> None:
    """The type label follows the other metrics' rule (a handled type, else ``unknown``)."""
    loop = make_loop(workers=1)
    telemetry: Any = loop.sup.telemetry
    telemetry.metrics.observe_usage("nobody-handles-this", 1.0, 2 * MIB)
    assert loop.metric("task_cpu_seconds_count", type="unknown") == 1
    assert loop.metric("task_peak_rss_bytes_count", type="unknown") == 1
