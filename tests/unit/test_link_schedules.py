"""The database link fires schedule slots: on time, once, and without a catch-up storm.

Turned by hand on a MemoryStore whose database clock moves with the link's.
"""

from __future__ import annotations

from datetime import datetime

from supervisor.dblink import DatabaseLink
from supervisor.link_events import ScheduleFired
from supervisor.schedules import Schedule
from supervisor.store import ManualClock, MemoryStore, SupervisorInfo
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


def test_after_everyone_was_down_only_the_most_recent_missed_slot_is_enqueued() -> None:
    clocks, store = start_at(datetime(2030, 1, 1, 12, 0, 30))
    link = link_for(store, clocks)
    link.turn()  # the schedule is known: its mark is at 12:00
    clocks.advance(10 * 60)  # ten slots pass with no supervisor running
    restarted = link_for(store, clocks, "B")
    restarted.turn()
    [event] = fired(restarted)
    assert event.slot == datetime(2030, 1, 1, 12, 10)
    assert sum(c.count for c in store.counts()) == 1


def test_a_slot_older_than_its_budget_is_skipped_rather_than_born_expired() -> None:
    clocks, store = start_at(datetime(2030, 1, 1, 12, 0, 30))
    link = link_for(store, clocks)
    link.set_schedules([Schedule(type="daily", cron="0 3 * * *")])
    link.turn()
    clocks.advance(86400)  # the next 03:00 slot passed 9.5 hours before this look
    link.turn()
    assert fired(link) == [] and store.counts() == []
