"""The database link fires schedule slots: on time, once, and without a catch-up storm.

Turned by hand on a MemoryStore whose database clock moves with the link's.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from supervisor.dblink import DatabaseLink
from supervisor.link_events import ScheduleFired
from supervisor.schedules import Schedule
from supervisor.store import ManualClock, MemoryStore, SupervisorInfo, TaskRow
from tests.unit.test_dblink import Clocks

EVERY_MINUTE = Schedule(type="tick", cron="* * * * *", options='{"n": 1}')


def start_at(moment: datetime) -> tuple[Clocks, MemoryStore]:
    clocks = Clocks()
    clocks.db = ManualClock(moment)
    return clocks, MemoryStore(clock=clocks.db)


def link_for(store: MemoryStore, clocks: Clocks, owner: str = "A") -> DatabaseLink:
    link = DatabaseLink(
        store,
        owner=owner,
        info=lambda: SupervisorInfo(id=owner, host="h", pid=1, workers=1, version="t"),
        lease_s=30.0,
        poll_interval_s=0.1,
        clock=clocks,
    )
    link.set_schedules([EVERY_MINUTE])
    return link


def fired(link: DatabaseLink) -> list[ScheduleFired]:
    return [e for e in link.take_events() if isinstance(e, ScheduleFired)]


def test_a_new_schedule_waits_for_its_next_slot_and_wakes_the_link_for_it() -> None:
    clocks, store = start_at(datetime(2030, 1, 1, 12, 0, 20))
    link = link_for(store, clocks)
    link.turn()
    assert fired(link) == [] and store.counts() == []
    assert link.next_due() <= clocks.now + 40.001, "woken by 12:01:00 at the latest"

    clocks.advance(39.9)
    link.turn()
    assert fired(link) == [], "not before its time"
    clocks.advance(0.101)
    link.turn()
    [event] = fired(link)
    assert (event.type, event.slot) == ("tick", datetime(2030, 1, 1, 12, 1))
    task = store.get(event.task_id)
    assert task is not None
    assert task.unique_key == "schedule:2030-01-01T12:01:00Z"
    assert task.options == '{"n": 1}'
    assert (task.deadline_at - datetime(2030, 1, 1, 12, 1)).total_seconds() == 3600.0, (
        "the budget counts from the slot time"
    )


def test_two_supervisors_fire_each_slot_once() -> None:
    clocks, store = start_at(datetime(2030, 1, 1, 12, 0, 59))
    first, second = link_for(store, clocks, "A"), link_for(store, clocks, "B")
    first.turn()
    second.turn()
    clocks.advance(1.001)
    first.turn()
    second.turn()
    assert len(fired(first)) + len(fired(second)) == 1
    assert sum(c.count for c in store.counts()) == 1


@pytest.mark.parametrize("missed", [2, 10])
def test_after_everyone_was_down_only_the_most_recent_missed_slot_is_enqueued(missed: int) -> None:
    clocks, store = start_at(datetime(2030, 1, 1, 12, 0, 30))
    link = link_for(store, clocks)
    link.turn()  # the schedule is known: its mark is at 12:00
    clocks.advance(missed * 60)  # slots pass with no supervisor running
    restarted = link_for(store, clocks, "B")
    restarted.turn()
    [event] = fired(restarted)
    assert event.slot == datetime(2030, 1, 1, 12, missed)
    assert sum(c.count for c in store.counts()) == 1


def test_a_slot_older_than_its_budget_is_skipped_rather_than_born_expired() -> None:
    clocks, store = start_at(datetime(2030, 1, 1, 12, 0, 30))
    link = link_for(store, clocks)
    link.set_schedules([Schedule(type="daily", cron="0 3 * * *")])
    link.turn()
    clocks.advance(86400)  # the next 03:00 slot passed 9.5 hours before this look
    link.turn()
    assert fired(link) == [] and store.counts() == []


def test_three_supervisors_over_three_hours_enqueue_exactly_one_task_per_slot() -> None:
    """The fleet test on an injected clock: every minute for three hours, three links turning
    at their own moments; each slot has exactly one task, and none is missing."""
    clocks, store = start_at(datetime(2030, 1, 1, 12, 0, 30))
    fleet = [link_for(store, clocks, owner) for owner in "ABC"]
    for link in fleet:
        link.turn()  # the schedule is known from 12:00; its first firing is 12:01
    events: list[ScheduleFired] = []
    firers: set[str] = set()
    order = random.Random(7)  # who looks first after each step: seeded, so the test repeats
    for _ in range(3 * 60 * 6):  # ten-second steps, each link turning when it is due
        clocks.advance(10.0)
        for link in order.sample(fleet, len(fleet)):
            if link.next_due() <= clocks.now:
                link.turn()
            mine = fired(link)
            events += mine
            firers |= {link.owner} if mine else set()
    slots = sorted(e.slot for e in events)
    expected = [datetime(2030, 1, 1, 12, 1) + timedelta(minutes=n) for n in range(180)]
    assert slots == expected, "one task per slot, none missing, none twice"
    assert sum(c.count for c in store.counts()) == 180
    assert {e.task_id for e in events} == {t.id for t in store_tasks(store)}
    assert firers == {"A", "B", "C"}, "no leader: whoever looks first fires the slot"


def store_tasks(store: MemoryStore) -> list[TaskRow]:
    return [row for row in (store.get(i) for i in range(1, 400)) if row is not None]
