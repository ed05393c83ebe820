"""The database link on its own: registration, sweeps, depth samples, its thread, closing."""

from __future__ import annotations

import select

from supervisor.lifecycle import Failure, Status
from supervisor.link_events import DepthSampled, Swept
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import OWNER


def test_the_first_turn_migrates_and_registers_the_supervisor(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=3)
    loop.turn()
    assert loop.store.log[:2] == ["migrate", "register"]
    [entry] = loop.store.supervisors()
    assert (entry.id, entry.workers) == (OWNER, 3)


def test_every_supervisor_rescues_expired_leases_of_others(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, lease_s=30)
    [again, last] = loop.enqueue(2, max_attempts=2)
    loop.store.claim("crashed-supervisor", ["echo"], 1, 30)
    loop.store.requeue(
        loop.store.claim("crashed-supervisor", ["echo"], 1, 30)[0], 0, "first attempt failed"
    )
    loop.store.claim("crashed-supervisor", ["echo"], 1, 30)  # the last attempt of `last`
    loop.advance(31)
    loop.turn()
    loop.step()
    [swept] = loop.events(Swept)
    assert (swept.requeued, swept.lost) == (1, {"echo": 1})
    assert loop.row(last).failure is Failure.LOST
    assert loop.logged("rescued tasks whose lease ran out; back to queued")
    assert loop.metric("tasks_processed_total", type="echo", outcome="lost") == 1
    assert (loop.row(again).status, loop.row(again).attempts) == (Status.QUEUED, 1)


def test_queued_tasks_past_their_deadline_are_expired_by_the_sweep(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(delay_s=10, budget_s=1)
    loop.advance(11)
    loop.cycle()
    assert loop.row(task_id).failure is Failure.EXPIRED
    assert loop.metric("tasks_processed_total", type="echo", outcome="expired") == 1


def test_queue_depth_is_sampled_every_five_seconds(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    loop.cycle()
    loop.enqueue(3, type="other")
    loop.advance(4.9)
    loop.cycle()
    assert len(loop.events(DepthSampled)) == 1
    loop.advance(0.1)
    loop.cycle()
    assert loop.events(DepthSampled)[-1].counts == (("other", "queued", 3),)
    assert loop.metric("supervisor_queue_depth", type="unknown", status="queued") == 3


def test_on_its_thread_the_link_claims_and_stops_when_closed(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.step()  # need 1
    loop.link.start()
    readable, _, _ = select.select([loop.link.fileno()], [], [], 10)
    assert readable  # the thread's first turn claimed, and said so
    loop.step()
    loop.child(0).say_done()
    loop.step()
    assert loop.close_link() is True
    assert loop.row(task_id).status is Status.COMPLETED
    assert loop.store.supervisors() == []
