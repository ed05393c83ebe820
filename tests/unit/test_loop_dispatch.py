"""Dispatch: claims go to idle children, and each report is settled once."""

from __future__ import annotations

from supervisor.lifecycle import Status
from tests.unit.conftest import MakeLoop


def test_a_claimed_task_is_handed_to_an_idle_child_and_its_completion_written(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1)
    [task_id] = loop.enqueue()
    loop.cycle()
    [child] = loop.busy()
    task = child.task()
    assert (task.id, task.type, task.attempt) == (task_id, "echo", 1)
    assert task.path == str((loop.handlers_dir / "echo.py").resolve())
    assert loop.row(task_id).status is Status.RUNNING

    child.say_done()
    loop.step()
    assert loop.busy() == []
    loop.turn()
    assert loop.row(task_id).status is Status.COMPLETED
