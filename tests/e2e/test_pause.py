"""Pause and resume through the real CLI, with real supervisors, on both backends.

`supervisor pause TYPE`: no new claims of that type anywhere in the fleet from
each supervisor's next poll; running tasks finish; other types go on.
`supervisor resume TYPE` lets it be claimed again. `status` lists paused
types, and says when no handler exists for one; a metric carries the state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.lifecycle import Status
from tests.e2e.harness import Launcher, wait_until
from tests.e2e.test_cli import run_cli
from tests.e2e.test_metrics import free_port, wait_metrics, wait_scrape

SLOW = """
import json, os, time

def handle(task, progress):
    paths = json.loads(task.options)
    open(paths["started"], "w").close()
    while not os.path.exists(paths["release"]):
        time.sleep(0.02)
"""
QUICK = "def handle(task, progress):\n    pass\n"
QUIET_S = 1.0  # many poll intervals (0.05 s): a paused type would have been claimed by now


@pytest.fixture
def launch(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def cli(launch: Launcher, *args: str) -> str:
    result = run_cli(launch.workdir, *args, dsn=launch.dsn)
    assert result.rc == 0, result.err
    return result.out


def test_a_paused_type_is_not_claimed_while_running_tasks_finish_and_others_go_on(
    launch: Launcher,
) -> None:
    launch.handler("slow", SLOW)
    launch.handler("quick", QUICK)
    supervisor = launch.start_ready(workers=2)
    running = launch.enqueue("slow", launch.paths_json(started="s1", release="r1"))
    wait_until(lambda: launch.path("s1").exists(), 15, "the first slow task to start")

    assert "paused slow" in cli(launch, "pause", "slow")
    time.sleep(QUIET_S)  # the pause is seen within one poll interval
    waiting = launch.enqueue("slow", launch.paths_json(started="s2", release="r2"))
    other = launch.enqueue("quick")
    assert launch.wait_terminal(other).status is Status.COMPLETED, "other types go on"
    launch.path("r1").touch()
    assert launch.wait_terminal(running).status is Status.COMPLETED, "running tasks finish"
    time.sleep(QUIET_S)
    assert launch.get(waiting).status is Status.QUEUED, "a paused type is not claimed"
    assert supervisor.events(message="paused types changed; these are not claimed")

    assert "resumed slow" in cli(launch, "resume", "slow")
    launch.path("r2").touch()
    assert launch.wait_terminal(waiting).status is Status.COMPLETED


def test_status_lists_paused_types_and_says_when_no_handler_exists(launch: Launcher) -> None:
    launch.handler("quick", QUICK)
    cli(launch, "pause", "quick")
    out = cli(launch, "pause", "from_the_future")
    assert "no supervisor has declared a handler" in out
    assert "already paused" in cli(launch, "pause", "quick")

    text = cli(launch, "status")
    assert "paused: 2" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert "no handler exists" in lines["from_the_future"]
    assert "no handler" not in lines["quick"], "quick has a file in ./handlers"

    document = json.loads(cli(launch, "status", "--json"))
    paused = {entry["type"]: entry["handler"] for entry in document["paused"]}
    assert paused == {"quick": True, "from_the_future": False}

    cli(launch, "resume", "quick")
    assert [e["type"] for e in json.loads(cli(launch, "status", "--json"))["paused"]] == [
        "from_the_future"
    ]


def test_pausing_a_bad_type_name_is_a_usage_error(launch: Launcher) -> None:
    result = run_cli(launch.workdir, "pause", "not a type", dsn=launch.dsn)
    assert "task type must be" in result.assert_one_line_error(2)


def test_the_paused_state_is_a_metric_per_handled_type(launch: Launcher) -> None:
    launch.handler("quick", QUICK)
    launch.handler("other", QUICK)
    port = free_port()
    supervisor = launch.start_ready("--metrics-port", str(port))
    wait_metrics(port, supervisor)
    cli(launch, "pause", "quick")
    cli(launch, "pause", "nobody_handles_this")

    def shows_pause(scrape: object) -> bool:
        return scrape.value("supervisor_type_paused", type="quick") == 1  # type: ignore[attr-defined]

    scrape = wait_scrape(port, shows_pause, what="quick paused in the metrics")
    assert scrape.value("supervisor_type_paused", type="quick") == 1
    assert scrape.value("supervisor_type_paused", type="other") == 0
    assert scrape.value("supervisor_type_paused", type="nobody_handles_this") is None
