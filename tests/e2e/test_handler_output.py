"""What a handler writes to stdout and stderr never corrupts or forges the supervisor's log
(issue 10, item 10).

Real ``python -m supervisor``, real children: the handler prints without a final
newline, prints a line that looks like one of the supervisor's own records,
prints a very long line, writes to fd 2 directly and from a subprocess it
starts. Every line of the supervisor's stderr must then be one of its own JSON
records, and the handler's text must appear only inside ``handler output``
records tagged with the real task.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.lifecycle import Status
from supervisor.testing import run_handler
from tests.e2e.harness import Launcher

FORGED = json.dumps(
    {
        "time": "2026-01-01T00:00:00+00:00",
        "level": "INFO",
        "message": "task completed",
        "task_id": 999,
        "type": "forged",
        "outcome": "completed",
    }
)
LONG = 100_000  # characters in the long line; far above the cap

NOISY = f"""
    import os
    import subprocess
    import sys

    def handle(task, progress):
        print("no newline at the end", end="")
        print()
        print({FORGED!r})
        print("x" * {LONG})
        os.write(2, b"straight to fd 2\\n")
        subprocess.run([sys.executable, "-c", "print('from a subprocess')"], check=True)
        sys.stderr.write("stderr without newline")
"""

GLUED = """
    def handle(task, progress):
        print("glued", end="")
"""


@pytest.fixture
def launch(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def every_line_is_a_record(stderr: str) -> list[dict[str, Any]]:
    records = []
    for line in stderr.splitlines():
        record = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(record, dict) and "level" in record and "message" in record, line
        records.append(record)
    return records


def test_handler_output_becomes_tagged_records_and_cannot_forge_one(launch: Launcher) -> None:
    launch.handler("noisy", NOISY)
    launch.handler("glued", GLUED)
    supervisor = launch.start_ready()
    noisy_id = launch.enqueue("noisy")
    assert launch.wait_terminal(noisy_id).status is Status.COMPLETED
    glued_id = launch.enqueue("glued")
    assert launch.wait_terminal(glued_id).status is Status.COMPLETED
    supervisor.wait_log(message="handler output", task_id=glued_id)
    supervisor.stop()

    records = every_line_is_a_record(supervisor.stderr())
    output = [r for r in records if r["message"] == "handler output"]
    noisy = {r["line"] for r in output if r.get("task_id") == noisy_id}
    for record in output:
        assert record["stream"] == "output"
        if record.get("task_id") == noisy_id:
            assert record["type"] == "noisy" and record["attempt"] == 1

    # The forged record is only ever the text of a handler-output record of the real task.
    assert FORGED in noisy
    assert not [r for r in records if r.get("task_id") == 999]
    assert "no newline at the end" in noisy
    assert "straight to fd 2" in noisy
    assert "from a subprocess" in noisy
    # A partial last line is flushed as its own record, with the task it belongs to.
    assert "stderr without newline" in noisy
    assert {r["line"] for r in output if r.get("task_id") == glued_id} == {"glued"}
    # The long line is capped, not dropped nor passed through whole.
    long_lines = [line for line in noisy if line.startswith("xxxx")]
    assert long_lines, noisy
    assert all(len(line) < LONG for line in long_lines)
    assert max(len(line) for line in long_lines) <= 8 * 1024 + 64


SPAWNED = """
import os
import subprocess
import sys

def handle(task, progress):
    print("printed")
    os.write(2, b"fd 2\\n")
    subprocess.run([sys.executable, "-c", "print('grandchild')"], check=True)
    print("no newline", end="")
"""


def test_a_spawned_child_prints_into_its_output_pipe_too(tmp_path: Path) -> None:
    """The Popen fallback (no fork server) gives the child the same pipe on fds 1 and 2.

    ``run_handler`` starts its child that way (``Child.spawn``), so its output is the pipe's.
    """
    (tmp_path / "spawned.py").write_text(SPAWNED)

    run = run_handler("spawned", handlers=tmp_path, budget=30)

    assert run.completed, run.last_error
    assert run.output == ("printed", "fd 2", "grandchild", "no newline")


FLOOD = """
    def handle(task, progress):
        for i in range(20_000):
            print("flood", i)
        print("end", end="")
"""


def test_a_flood_of_output_is_all_logged_under_its_own_task(launch: Launcher) -> None:
    """More than one turn's share is printed: what is read after the outcome keeps its tag."""
    launch.handler("flood", FLOOD)
    launch.handler("glued", GLUED)
    supervisor = launch.start_ready()
    flood_id = launch.enqueue("flood")
    assert launch.wait_terminal(flood_id).status is Status.COMPLETED
    glued_id = launch.enqueue("glued")
    assert launch.wait_terminal(glued_id).status is Status.COMPLETED
    supervisor.wait_log(message="handler output", task_id=glued_id)
    supervisor.stop()

    output = [r for r in every_line_is_a_record(supervisor.stderr()) if "line" in r]
    flood = [r["line"] for r in output if r["task_id"] == flood_id]
    assert flood == [f"flood {i}" for i in range(20_000)] + ["end"]
    assert [r["line"] for r in output if r["task_id"] != flood_id] == ["glued"]
