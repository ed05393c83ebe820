"""Claims: sized to idle children, never twice for one, completions riding along, renewal first."""

from __future__ import annotations

from supervisor.attempts import BACKLOG_WAIT_MAX_S
from supervisor.lifecycle import Status
from supervisor.link_events import Claimed
from tests.unit.conftest import MakeLoop


def running(loop_store_rows: list[Status]) -> int:
    return sum(status is Status.RUNNING for status in loop_store_rows)


def test_never_more_is_claimed_than_there_are_idle_children(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=3)
    ids = loop.enqueue(10)
    loop.cycle(3)
    assert [len(e.claims) for e in loop.events(Claimed)] == [3]
    assert running([loop.row(i).status for i in ids]) == 3


def test_a_claim_the_loop_has_not_seen_yet_is_not_claimed_again(make_loop: MakeLoop) -> None:
    """The need the loop stated counts claims up to a generation; the link waits for it."""
    loop = make_loop(workers=2)
    ids = loop.enqueue(10)
    loop.step()  # need 2, seen 0
    loop.turn()  # claims 2 (generation 1)
    loop.advance(1)
    loop.turn()  # the loop has not taken them yet: the need is stale
    loop.turn()
    assert loop.store.calls["complete_and_claim"] == 1
    assert running([loop.row(i).status for i in ids]) == 2
    loop.step()
    assert len(loop.busy()) == 2


def test_a_child_that_frees_up_after_a_long_attempt_gets_exactly_one_new_claim(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=2)
    ids = loop.enqueue(10)
    loop.cycle()
    first, _ = loop.busy()
    loop.advance(1.0)  # attempts this long are not prefetched for
    first.say_done()
    loop.cycle(3)
    assert [len(e.claims) for e in loop.events(Claimed)] == [2, 1]
    assert running([loop.row(i).status for i in ids]) == 2


def test_while_attempts_are_short_each_busy_child_gets_one_claim_ahead(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=2)
    ids = loop.enqueue(10)
    loop.cycle()
    first, second = loop.busy()
    first.say_done()  # instantly: attempts are short
    loop.cycle(3)
    # The freed child's claim, one ahead for its busy sibling, then one ahead for itself.
    assert [len(e.claims) for e in loop.events(Claimed)] == [2, 2, 1]
    assert running([loop.row(i).status for i in ids]) == 4
    assert len(loop.sup.attempts.backlog) == 2
    second.say_done()
    loop.step()
    assert len(second.tasks()) == 2  # its next task came from the backlog, without a round trip
    assert len(loop.sup.attempts.backlog) == 1


def test_a_claim_taken_ahead_that_no_child_takes_in_time_goes_back_refunded(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=2)
    ids = loop.enqueue(10)
    loop.cycle()
    first, _ = loop.busy()
    first.say_done()
    loop.cycle(3)
    [(waiting, _)] = list(loop.sup.attempts.backlog)[-1:]
    loop.advance(BACKLOG_WAIT_MAX_S + 0.01)
    loop.step()
    loop.turn()
    row = loop.row(waiting.id)
    assert (row.status, row.attempts) == (Status.QUEUED, 0)
    assert not loop.sup.attempts.backlog
    assert loop.sup.attempts.prefetch() == 0  # and no more claims ahead until attempts are short
    assert running([loop.row(i).status for i in ids]) == 2


def test_completions_that_arrive_between_turns_ride_with_the_next_claim_in_one_call(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=2)
    ids = loop.enqueue(4)
    loop.cycle()
    for child in loop.busy():
        child.say_done()
    loop.step()
    mark = len(loop.store.log)
    loop.turn()
    writes = [n for n in loop.store.log[mark:] if n != "register"]
    assert writes == ["complete_and_claim"]
    assert [loop.row(i).status for i in ids] == [Status.COMPLETED] * 2 + [Status.RUNNING] * 2


def test_completions_when_the_queue_ran_dry_are_written_in_one_statement(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=3)
    ids = loop.enqueue(2)
    loop.cycle()  # a short claim: the queue ran dry
    for child in loop.busy():
        child.say_done()
    loop.step()
    loop.advance(0.2)
    mark = len(loop.store.log)
    loop.turn()
    assert loop.store.log[mark:] == ["has_claimable", "complete_many"]
    assert [loop.row(i).status for i in ids] == [Status.COMPLETED] * 2


def test_after_a_dry_claim_the_next_claim_waits_a_poll_interval(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2, poll_interval_s=0.2)
    loop.cycle()  # nothing to claim
    [late] = loop.enqueue()
    loop.advance(0.1)
    loop.cycle()
    assert loop.busy() == []
    loop.advance(0.1)
    loop.cycle()
    assert [c.task().id for c in loop.busy()] == [late]


def test_lease_renewal_comes_first_in_every_turn_even_under_a_stream_of_full_claims(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=2, lease_s=3)  # a heartbeat every second
    loop.enqueue(60)
    loop.cycle()
    renewals = 0
    for _ in range(20):
        for child in loop.busy():
            child.say_done()
        loop.step()
        loop.advance(0.25)
        mark = len(loop.store.log)
        loop.turn()
        loop.step()
        calls = loop.store.log[mark:]
        assert "complete_and_claim" in calls  # every claim came back full
        if "renew_leases" in calls:
            renewals += 1
            assert calls[:2] == ["register", "renew_leases"]
    assert renewals == 5  # every 1 s over 5 s
    for child in loop.busy():
        row = loop.row(child.task().id)
        assert row.lease_expires_at is not None and row.lease_expires_at > loop.db_clock()


def test_claims_for_children_that_went_away_wait_in_the_backlog_and_nothing_more_is_claimed(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=2)
    loop.enqueue(10)
    loop.step()  # need 2
    loop.turn()  # two claimed ...
    loop.sup.handle_sighup()  # ... while both children are being replaced
    loop.step()
    assert len(loop.sup.attempts.backlog) == 2
    for child in loop.children():
        assert child.told_to_stop()
        child.exit(0)
    loop.step()
    loop.poll()
    loop.poll()
    assert [len(e.claims) for e in loop.events(Claimed)] == [2]  # the backlog is the need
    for child in loop.children():
        child.say_ready()
    loop.step()
    assert len(loop.busy()) == 2
    assert not loop.sup.attempts.backlog


def test_claims_that_cannot_run_do_not_keep_an_idle_child_from_the_rest_of_the_backlog(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=3)
    loop.enqueue(2, budget_s=1, priority=-1)  # claimed first, expire before dispatch
    [good] = loop.enqueue(budget_s=100)
    loop.step()
    loop.turn()
    loop.sup.handle_sighup()
    loop.step()
    assert len(loop.sup.attempts.backlog) == 3
    for child in loop.children():
        child.exit(0)
    loop.step()
    loop.advance(2)
    loop.child(0).say_ready()  # one child is ready before the others
    loop.step()
    assert loop.child(0).task().id == good
    assert not loop.sup.attempts.backlog


def test_a_claim_whose_handler_was_removed_by_a_reload_is_put_back(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, types=("echo", "gone"))
    [task_id] = loop.enqueue(type="gone")
    loop.step()
    loop.turn()
    (loop.handlers_dir / "gone.py").unlink()
    loop.sup.handle_sighup()
    loop.step()
    loop.child(0).exit(0)
    loop.step()
    loop.child(0).say_ready()
    loop.step()
    assert loop.busy() == []
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.attempts) == (Status.QUEUED, 0)
    loop.poll()
    assert loop.busy() == []  # no longer claimed


def test_a_child_that_vanished_before_its_task_was_sent_gives_the_task_back_attempt_counted(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.step()
    loop.turn()
    child = loop.child(0)
    child.peer.close()  # gone, its exit not noticed yet
    loop.step()
    assert child.kills == 1
    loop.turn()
    row = loop.row(task_id)
    # Counted, so a task whose dispatch fails every time ends (test_loop_poison.py).
    assert (row.status, row.attempts) == (Status.QUEUED, 1)
