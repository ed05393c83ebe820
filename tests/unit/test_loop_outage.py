"""An outage: results are held, the link backs off, and all is written once the store answers."""

from __future__ import annotations

from datetime import timedelta

from supervisor.dblink import DB_RETRY_MIN_S
from supervisor.errors import StoreUnavailable
from supervisor.lifecycle import Status
from supervisor.link_events import DbBack, DbFailed
from tests.unit.conftest import MakeLoop

DOWN = StoreUnavailable("connection refused")


def test_results_are_held_through_an_outage_and_written_when_the_store_answers(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=3, lease_s=30)
    ids = loop.enqueue(5)
    loop.cycle()
    done, errored, still_running = loop.busy()
    done_id, errored_id, running_id = (c.task().id for c in (done, errored, still_running))
    queued = ids[3:]

    loop.store.fail_with(DOWN)
    done.say_done()
    errored.say_error()
    loop.step()
    for _ in range(6):
        loop.turn()
        loop.step()
        assert loop.link.held == 2
        assert len(loop.busy()) == 1  # nothing claimed for the two idle children
        loop.advance_to(loop.link.next_due())
    assert len(loop.events(DbFailed)) == 6

    loop.store.fail_with(None)
    mark = len(loop.store.log)
    loop.turn()
    loop.step()
    assert loop.store.log[mark : mark + 2] == ["register", "renew_leases"]  # first contact
    assert loop.link.held == 0
    assert loop.row(done_id).status is Status.COMPLETED
    assert loop.row(errored_id).status is Status.QUEUED
    lease = loop.row(running_id).lease_expires_at
    assert lease == loop.db_clock() + timedelta(seconds=30)
    assert len(loop.busy()) == 3  # claims resumed for the idle children
    assert sorted(c.task().id for c in loop.busy()) == [running_id, *queued]
    assert [e.after_failures for e in loop.events(DbBack)] == [6]
    assert loop.logged("database is back")


def test_the_link_backs_off_with_doubling_jittered_delays_capped_at_half_a_heartbeat(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=30)  # heartbeat 10 s, so the cap is 5 s
    loop.enqueue()
    loop.store.fail_with(DOWN)
    for _ in range(7):
        loop.turn()
        loop.step()
        loop.advance_to(loop.link.next_due())
    delays = [e.retry_in_s for e in loop.events(DbFailed)]
    ceilings = [DB_RETRY_MIN_S * 2**n for n in range(4)] + [5.0] * 3  # 0.5, 1, 2, 4, 5, 5, 5
    assert len(delays) == 7
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_the_link_does_not_touch_the_store_before_its_retry_time(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    loop.store.fail_with(DOWN)
    loop.turn()
    retry_at = loop.link.next_due()
    assert retry_at > loop.clock()
    before = loop.store.calls
    loop.advance_to(retry_at - 0.001)
    loop.turn()
    loop.turn()
    assert loop.store.calls == before


def test_the_loop_keeps_killing_at_deadlines_while_the_store_is_down(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue(budget_s=5)
    loop.cycle()
    loop.store.fail_with(DOWN)
    loop.advance(5)
    loop.step()
    assert loop.spawner.spawned[0].kills == 1
    loop.turn()
    assert loop.link.held == 1
    loop.store.fail_with(None)
    loop.advance_to(loop.link.next_due())
    loop.turn()
    assert loop.row(task_id).status is Status.FAILED


def test_progress_reported_during_an_outage_is_written_when_the_store_answers(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, lease_s=30)
    [task_id] = loop.enqueue()
    loop.cycle()
    child = loop.child(0)
    loop.store.fail_with(DOWN)
    child.say_progress(40)
    loop.step()
    for _ in range(3):  # after the first failure, each retry renews (and fails) first
        loop.turn()
        loop.advance_to(loop.link.next_due())
    loop.store.fail_with(None)
    loop.turn()
    assert loop.row(task_id).progress_pct == 40


def test_results_the_store_never_took_are_reported_not_recorded_at_exit(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1)
    loop.enqueue()
    loop.cycle()
    loop.store.fail_with(DOWN)
    loop.child(0).say_done()
    loop.step()
    loop.turn()
    assert loop.close_link() is False
    loop.step()
    [entry] = loop.logged(
        "result not recorded (database unavailable); the task will be rescued when "
        "its lease expires"
    )
    assert entry["would_have_been"] == "completed"
    assert "deregister" not in loop.store.log  # the store never answered


def test_an_unexpected_error_from_the_store_is_an_outage_not_the_end_of_the_link(
    make_loop: MakeLoop,
) -> None:
    # Only StoreError was caught: anything else ended the link's thread silently, and with it
    # every lease renewal and every result still to be written.
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.store.fail_with(RuntimeError("driver bug"))  # type: ignore[arg-type]
    loop.child(0).say_done()
    loop.step()
    loop.turn()
    loop.step()
    [failed] = loop.events(DbFailed)
    assert failed.error == "RuntimeError: driver bug"
    assert loop.link.held == 1
    loop.store.fail_with(None)
    loop.advance_to(loop.link.next_due())
    loop.turn()
    assert loop.row(task_id).status is Status.COMPLETED
