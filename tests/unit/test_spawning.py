"""Making children: a fork server that must be started again never holds the loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor import spawning
from supervisor.spawning import TEMPLATE_RETRY_S, ChildFactory


class FakeTemplate:
    pid = 4242

    def close(self) -> None:
        pass


def test_a_template_restart_runs_beside_the_loop_and_is_adopted_when_ready(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    now = [0.0]
    release = threading.Event()
    started: list[int] = []
    forked: list[object] = []

    def slow_start(**options: Any) -> FakeTemplate:
        options["on_process"](4242)
        started.append(1)
        if len(started) > 1:  # the restart: slow, like a template that takes its time
            release.wait(5)
        return FakeTemplate()

    monkeypatch.setattr(spawning.Template, "start", slow_start)
    monkeypatch.setattr(spawning.Child, "spawn", lambda **kw: "spawned")
    monkeypatch.setattr(spawning.Child, "fork", lambda template, **kw: forked.append(template))
    factory = ChildFactory(
        runtime_dir=tmp_path, lifeline_fd=-1, env={}, with_metrics=False, clock=lambda: now[0]
    )
    factory.start()
    factory.close()  # the template failed: children are spawned the slow way for now
    now[0] += TEMPLATE_RETRY_S

    began = time.monotonic()
    assert factory(0) == "spawned"  # not waiting for the restart
    assert time.monotonic() - began < 1.0
    assert factory.template_pids == {4242}  # the orphan killer leaves the new template alone

    release.set()
    deadline = time.monotonic() + 5
    while factory(1) == "spawned" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(forked) == 1 and isinstance(forked[0], FakeTemplate)
    assert len(started) == 2
