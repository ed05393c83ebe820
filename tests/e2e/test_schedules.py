"""Recurring schedules through real supervisors on both backends: one task per slot, no leader.

A real minute is too long to wait for, so the schedule's mark is set back as
if every supervisor had been down for ten minutes: the supervisors started
then enqueue the most recent missed slot, once between them, at once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from supervisor.lifecycle import Status
from supervisor.schedules import latest_slot, next_slot, slot_key
from supervisor.store import NewTask
from tests.e2e.harness import Launcher, wait_until
from tests.e2e.test_cli import run_cli

EVERY_MINUTE = "* * * * *"
TICK = """
SCHEDULE = "* * * * *"
SCHEDULE_OPTIONS = {"report": "minutely"}

def handle(task, progress):
    pass
"""


@pytest.fixture
def launch(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def test_two_supervisors_enqueue_the_latest_missed_slot_once_and_run_it(launch: Launcher) -> None:
    launch.handler("tick", TICK)
    ten_minutes_ago = launch.store.utc_now() - timedelta(minutes=10)
    missed = latest_slot(EVERY_MINUTE, ten_minutes_ago)
    launch.store.fire_slot(NewTask(type="tick"), EVERY_MINUTE, missed)

    catch_up = latest_slot(EVERY_MINUTE, launch.store.utc_now())
    first = launch.start_ready()
    second = launch.start_ready()

    def fired() -> list[dict[str, object]]:
        return first.events(message="schedule fired") + second.events(message="schedule fired")

    wait_until(lambda: fired() or None, 20, "a slot to fire")
    time.sleep(1.0)  # the other supervisor has looked by now, and must not fire it again
    by_slot = Counter(str(event["slot"]) for event in fired())
    # The minute may turn during the test: its slot then fires too, once, as any slot does
    # (and if it turned before the supervisors looked, it is the catch-up slot itself).
    first_two = {
        slot_key(catch_up + timedelta(minutes=n)).removeprefix("schedule:") for n in (0, 1)
    }
    assert min(by_slot) in first_two, by_slot
    assert set(by_slot.values()) == {1}, by_slot
    assert len(by_slot) <= 2, "one catch-up task, not one per missed slot"
    for event in fired():
        task = launch.wait_terminal(int(str(event["task_id"])))
        assert task.status is Status.COMPLETED
        assert task.options is not None and json.loads(task.options) == {"report": "minutely"}
        assert task.unique_key == f"schedule:{event['slot']}"
    assert sum(c.count for c in launch.store.counts()) == len(by_slot)


def test_status_lists_each_schedule_with_its_next_firing(launch: Launcher) -> None:
    launch.handler("tick", TICK)
    supervisor = launch.start_ready()
    wait_until(
        lambda: any(i.schedule for i in launch.store.type_infos()) or None,
        20,
        "the schedule to be recorded",
    )
    supervisor.stop()
    result = run_cli(launch.workdir, "status", "--json", dsn=launch.dsn)
    assert result.rc == 0, result.err
    [entry] = json.loads(result.out)["schedules"]
    upcoming = next_slot(EVERY_MINUTE, launch.store.utc_now() - timedelta(minutes=1))
    assert entry["type"] == "tick" and entry["schedule"] == EVERY_MINUTE
    assert entry["next_slot"] >= upcoming.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = run_cli(launch.workdir, "status", dsn=launch.dsn).out
    assert "schedules: 1 (cron in UTC)" in text and "tick  * * * * *  next " in text


def test_a_bad_schedule_is_an_import_check_error_and_its_type_is_not_claimed(
    launch: Launcher,
) -> None:
    launch.handler("broken", 'SCHEDULE = "every minute"\n\ndef handle(task, progress):\n    pass\n')
    launch.handler("fine", "def handle(task, progress):\n    pass\n")
    supervisor = launch.start_ready()
    task_id = launch.enqueue("broken")
    other = launch.enqueue("fine")
    assert launch.wait_terminal(other).status is Status.COMPLETED
    report = wait_until(
        lambda: [e for e in supervisor.logs() if "SCHEDULE must be" in json.dumps(e)] or None,
        20,
        "the import check to report the bad SCHEDULE",
    )
    assert report
    time.sleep(0.5)
    assert launch.get(task_id).status is Status.QUEUED
