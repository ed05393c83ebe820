"""Operator actions on the pool: TTIN/TTOU scale, HUP reloads, recycling after N tasks."""

from __future__ import annotations

from supervisor.lifecycle import Status
from tests.unit.conftest import MakeLoop


def test_ttin_adds_a_worker_in_the_next_slot(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2)
    loop.sup.handle_sigttin()
    assert (loop.sup.pool.target, sorted(loop.sup.pool.children)) == (3, [0, 1, 2])
    assert loop.sup.info().workers == 3
    loop.step()
    assert loop.metric("supervisor_workers") == 3


def test_ttou_retires_the_highest_slot_an_idle_child_at_once(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2)
    last = loop.child(1)
    loop.sup.handle_sigttou()
    assert last.told_to_stop()
    last.exit(0)
    loop.step()
    assert sorted(loop.sup.pool.children) == [0]


def test_ttou_lets_a_busy_child_finish_its_task_first(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2)
    loop.enqueue(2)
    loop.cycle()
    last = loop.child(1)
    loop.sup.handle_sigttou()
    assert not last.told_to_stop()
    last.say_done()
    loop.step()
    assert last.told_to_stop()
    last.exit(0)
    loop.step()
    assert sorted(loop.sup.pool.children) == [0]
    loop.turn()
    assert loop.row(last.task().id).status is Status.COMPLETED


def test_ttin_after_ttou_keeps_the_child_that_was_finishing(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2)
    loop.enqueue(2)
    loop.cycle()
    last = loop.child(1)
    loop.sup.handle_sigttou()
    loop.sup.handle_sigttin()
    last.say_done()
    loop.step()
    assert not last.told_to_stop()
    assert loop.child(1) is last


def test_ttou_never_goes_below_one_worker(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    loop.sup.handle_sigttou()
    assert loop.sup.pool.target == 1
    assert not loop.child(0).told_to_stop()


def test_a_child_ready_in_a_slot_no_longer_wanted_is_retired(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2, ready=False)
    loop.sup.handle_sigttou()  # slot 1 was still starting
    loop.child(0).say_ready()
    loop.step()
    assert loop.child(1).told_to_stop()


def test_hup_rereads_the_handlers_and_replaces_children_once_idle(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2)
    loop.enqueue()
    loop.cycle()
    [busy] = loop.busy()
    [idle] = [c for c in loop.children() if c is not busy]
    loop.add_handler("new_type")
    loop.sup.handle_sighup()
    assert "new_type" in loop.sup.handlers
    assert idle.told_to_stop() and not busy.told_to_stop()
    busy.say_done()
    loop.step()
    assert busy.told_to_stop()
    for child in (busy, idle):
        child.exit(0)
    loop.step()
    assert len(loop.spawner.spawned) == 4
    assert loop.metric("supervisor_child_restarts_total", reason="reload") == 2
    [new] = loop.enqueue(type="new_type")
    for child in loop.children():
        child.say_ready()
    loop.step()
    loop.poll()
    assert [c.task().id for c in loop.busy()] == [new]


def test_a_child_is_recycled_after_max_tasks_per_child(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, max_tasks_per_child=2)
    loop.enqueue(3)
    loop.cycle()
    first = loop.child(0)
    first.say_done()
    loop.step()
    loop.poll()
    assert not first.told_to_stop()
    first.say_done()
    loop.step()
    assert first.told_to_stop()
    first.exit(0)
    loop.step()
    assert loop.child(0) is not first
    assert loop.metric("supervisor_child_restarts_total", reason="recycled") == 1
