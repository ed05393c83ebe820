"""Drain (TERM/INT): no new claims, in-flight tasks finish, exit when idle; then the timeout."""

from __future__ import annotations

from supervisor.lifecycle import Status
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import Loop


def running_two_of_four(make_loop: MakeLoop, **options: object) -> tuple[Loop, list[int]]:
    loop = make_loop(workers=2, **options)
    ids = loop.enqueue(4)
    loop.cycle()
    assert len(loop.busy()) == 2
    return loop, ids


def test_term_stops_claiming_lets_in_flight_tasks_finish_and_exits_when_idle(
    make_loop: MakeLoop,
) -> None:
    loop, ids = running_two_of_four(make_loop)
    first, second = loop.busy()
    running = [first.task().id, second.task().id]
    queued = [i for i in ids if i not in running]

    loop.sup.handle_sigterm()
    loop.step()
    first.say_done()
    loop.step()
    assert first.told_to_stop()  # finished its task, then told to stop
    first.exit(0)
    loop.step()
    loop.poll()
    loop.advance(5)
    loop.poll()
    assert not loop.sup.finished()  # the second task still runs
    assert second.running is not None and not second.told_to_stop()

    second.say_done()
    loop.step()
    second.exit(0)
    loop.step()
    assert loop.sup.finished()
    assert loop.sup.pool.children == {}
    assert len(loop.spawner.spawned) == 2  # nobody was replaced
    loop.turn()
    assert [loop.row(i).status for i in running] == [Status.COMPLETED] * 2
    for task_id in queued:  # never claimed
        assert (loop.row(task_id).status, loop.row(task_id).attempts) == (Status.QUEUED, 0)


def test_term_tells_idle_children_to_stop_at_once(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=3)
    loop.enqueue()
    loop.cycle()
    [busy] = loop.busy()
    idle = [c for c in loop.children() if c is not busy]
    loop.sup.handle_sigterm()
    assert all(c.told_to_stop() for c in idle)
    assert not busy.told_to_stop()
    for child in idle:
        child.exit(0)
    loop.step()
    assert loop.children() == [busy]


def test_claims_that_arrive_after_term_are_refunded(make_loop: MakeLoop) -> None:
    """The link may be mid-claim when TERM comes: those tasks go back, attempt given back."""
    loop = make_loop(workers=2)
    ids = loop.enqueue(2)
    loop.step()  # the loop has asked for two
    loop.sup.handle_sigterm()
    loop.turn()  # the claim was already on its way
    loop.step()
    assert loop.busy() == []
    assert not loop.sup.attempts.backlog
    loop.turn()
    for task_id in ids:
        row = loop.row(task_id)
        assert (row.status, row.attempts, row.claimed_by) == (Status.QUEUED, 0, None)


def test_at_the_drain_timeout_running_tasks_are_killed_and_put_back_with_the_attempt_refunded(
    make_loop: MakeLoop,
) -> None:
    loop, _ = running_two_of_four(make_loop, drain_timeout_s=10.0)
    children = loop.busy()
    running = [c.task().id for c in children]
    loop.sup.handle_sigterm()
    loop.step()

    loop.advance(9.999)
    loop.step()
    assert [c.kills for c in children] == [0, 0]
    loop.advance(0.001)
    loop.step()
    assert [c.kills for c in children] == [1, 1]
    loop.step()  # their exits
    assert loop.sup.finished()
    assert len(loop.spawner.spawned) == 2

    loop.turn()
    for task_id in running:
        row = loop.row(task_id)
        assert (row.status, row.attempts, row.claimed_by) == (Status.QUEUED, 0, None)
        assert row.run_at == loop.db_clock()
    loop.step()
    assert len(loop.logged("task put back to queued (attempt refunded)")) == 2


def test_a_second_term_puts_in_flight_tasks_back_without_waiting(make_loop: MakeLoop) -> None:
    loop, _ = running_two_of_four(make_loop, drain_timeout_s=60.0)
    loop.sup.handle_sigterm()
    loop.step()
    loop.advance(1)
    loop.sup.handle_sigint()
    loop.step()
    assert all(c.kills == 1 for c in loop.spawner.spawned)
    loop.step()
    assert loop.sup.finished()
    assert loop.logged("second stop signal: putting in-flight tasks back now")


def test_quit_drains_without_waiting(make_loop: MakeLoop) -> None:
    loop, ids = running_two_of_four(make_loop, drain_timeout_s=60.0)
    loop.sup.handle_sigquit()
    loop.step()
    loop.step()
    assert loop.sup.finished()
    loop.turn()
    assert sorted(loop.row(i).status for i in ids) == [Status.QUEUED] * 4


def test_operator_signals_are_ignored_while_draining(make_loop: MakeLoop) -> None:
    loop, _ = running_two_of_four(make_loop)
    loop.sup.handle_sigterm()
    loop.sup.handle_sighup()
    loop.sup.handle_sigttin()
    loop.sup.handle_sigttou()
    assert loop.sup.pool.target == 2
    assert not any(c.retire_when_idle for c in loop.busy())


def test_the_final_flush_writes_what_the_link_still_holds_and_deregisters(
    make_loop: MakeLoop,
) -> None:
    loop, _ = running_two_of_four(make_loop)
    [first, second] = loop.busy()
    loop.sup.handle_sigterm()
    first.say_done()
    second.say_error()
    loop.step()
    assert loop.link.held == 2
    assert loop.store.supervisors() != []
    assert loop.close_link() is True
    assert loop.row(first.task().id).status is Status.COMPLETED
    assert loop.row(second.task().id).status is Status.QUEUED
    assert loop.store.supervisors() == []
