"""Recurring schedules through real supervisors on both backends: one task per slot, no leader.

A real minute is too long to wait for, so the schedule's mark is set back as
if every supervisor had been down for ten minutes: the supervisors started
then enqueue the most recent missed slot, once between them, at once.
"""

from __future__ import annotations

import json
import time
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

    first = launch.start_ready()
    second = launch.start_ready()
    fired = wait_until(
        lambda: first.events(message="schedule fired") + second.events(message="schedule fired")
        or None,
        20,
        "a slot to fire",
    )
    time.sleep(1.0)  # the other supervisor has looked by now, and must not fire it again
    events = first.events(message="schedule fired") + second.events(message="schedule fired")
    assert len(events) == 1, events
    task = launch.wait_terminal(int(fired[0]["task_id"]))
    assert task.status is Status.COMPLETED
    assert task.options is not None and json.loads(task.options) == {"report": "minutely"}
    slot = latest_slot(EVERY_MINUTE, launch.store.utc_now())
    assert task.unique_key in (slot_key(slot), slot_key(slot - timedelta(minutes=1)))
    assert sum(c.count for c in launch.store.counts()) == 1, "no catch-up storm"


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
