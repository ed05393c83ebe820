"""Fixtures for driving the parent's loop by hand (see :mod:`tests.unit.fakes`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import parent
from tests.unit.fakes import Loop

MakeLoop = Callable[..., Loop]


@pytest.fixture
def make_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeLoop]:
    """``make_loop(workers=2, ...)``: a started Loop, closed after the test.

    The parent's orphan sweep would kill this test process's real children;
    here it only counts how often it ran. Nor does ``run()`` make the test
    process a subreaper.
    """
    made: list[Loop] = []

    def sweep(known: set[int]) -> int:
        for loop in made:
            loop.orphan_sweeps += 1
        return 0

    monkeypatch.setattr(parent, "kill_orphans", sweep)
    monkeypatch.setattr(parent, "become_subreaper", lambda: None)

    def make(*, start: bool = True, ready: bool = True, **options: Any) -> Loop:
        loop = Loop(tmp_path / f"loop-{len(made)}", **options)
        made.append(loop)
        if start:
            loop.start(ready=ready)
        return loop

    yield make
    for loop in made:
        loop.close()
