"""The database link and paused types: what it claims, and what a pause costs it, turned by hand."""

from __future__ import annotations

from supervisor.lifecycle import Status
from supervisor.link_events import PausedChanged
from supervisor.policy import DEFAULT_POLICY
from supervisor.store import MemoryStore, NewTask
from tests.unit.test_dblink import Clocks, claimed, make_link

POLL_S = 0.1  # make_link's poll interval


def test_a_paused_type_is_left_out_of_claims_from_the_next_poll_and_others_are_claimed() -> None:
    clocks = Clocks()
    store = MemoryStore(clock=clocks.db)
    link = make_link(store, clocks)
    link.set_types({"t": DEFAULT_POLICY, "u": DEFAULT_POLICY})
    store.set_paused("t", True)
    held = store.enqueue(NewTask(type="t"))
    free = store.enqueue(NewTask(type="u"))

    link.want(2, seen=0)
    link.turn()
    events = link.take_events()
    assert [c.id for c in claimed(events)] == [free]
    assert PausedChanged(paused=frozenset({"t"})) in events

    store.set_paused("t", False)
    clocks.advance(POLL_S)
    link.want(1, seen=1)
    link.turn()
    events = link.take_events()
    assert [c.id for c in claimed(events)] == [held], "resumed: claimed at the next poll"
    assert PausedChanged(paused=frozenset()) in events


def test_a_pause_made_while_the_link_is_busy_takes_effect_within_one_poll_interval() -> None:
    clocks = Clocks()
    store = MemoryStore(clock=clocks.db)
    link = make_link(store, clocks)
    first, second = (store.enqueue(NewTask(type="t")) for _ in range(2))
    link.want(1, seen=0)
    link.turn()
    assert [c.id for c in claimed(link.take_events())] == [first]

    store.set_paused("t", True)
    clocks.advance(POLL_S)
    link.want(1, seen=1)
    link.turn()
    assert claimed(link.take_events()) == []
    waiting = store.get(second)
    assert waiting is not None and waiting.status is Status.QUEUED


def test_an_idle_supervisor_with_nothing_paused_reads_pauses_only_with_its_depth_sample() -> None:
    """A fleet of idle supervisors pays one cheap probe per poll, as before pauses existed."""
    clocks = Clocks()
    store = MemoryStore(clock=clocks.db)
    link = make_link(store, clocks)
    link.want(1, seen=0)
    for _ in range(20):  # 2 s of idle polls, inside one 5 s depth-sample interval
        link.turn()
        clocks.advance(POLL_S)
    assert store.calls["paused_types"] == 1, "the one read is the depth sample's"
    assert store.calls["has_claimable"] >= 18


def test_while_one_of_its_types_is_paused_an_idle_supervisor_reads_pauses_every_poll() -> None:
    """Otherwise it would never see the resume: the probe leaves paused types out."""
    clocks = Clocks()
    store = MemoryStore(clock=clocks.db)
    link = make_link(store, clocks)
    store.set_paused("t", True)
    task_id = store.enqueue(NewTask(type="t"))
    link.want(1, seen=0)
    for _ in range(5):
        link.turn()
        clocks.advance(POLL_S)
    assert claimed(link.take_events()) == []
    store.set_paused("t", False)
    link.turn()
    assert [c.id for c in claimed(link.take_events())] == [task_id]
