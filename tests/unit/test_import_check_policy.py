"""The import check reports each handler's policy constants, as JSON, without the parent importing.

These run the real ``supervisor.child --check`` in a subprocess, watched by
:class:`~supervisor.importcheck.ImportWatch` on a selector as the loop does.
"""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from supervisor.importcheck import ImportWatch

pytestmark = pytest.mark.timeout(60)


class Findings:
    """What the watch reported: constants of the handlers that import, problems of the rest."""

    def __init__(self) -> None:
        self.constants: dict[str, Mapping[str, object]] = {}
        self.problems: dict[str, str] = {}

    def checked(self, task_type: str, constants: Mapping[str, object]) -> None:
        self.constants[task_type] = constants

    def failed(self, task_type: str, problem: str) -> None:
        self.problems[task_type] = problem


def check(tmp_path: Path, handlers: dict[str, str]) -> Findings:
    """Run the check over ``handlers`` (type -> source) until it has nothing more to say."""
    paths = {}
    for task_type, source in handlers.items():
        path = tmp_path / f"{task_type}.py"
        path.write_text(source)
        paths[task_type] = path
    findings = Findings()
    selector = selectors.DefaultSelector()
    watch = ImportWatch(selector, dict(os.environ), findings.failed, checked=findings.checked)
    watch.start(paths)
    try:
        while watch.next_due() is not None:
            selector.select(1.0)
            watch.on_readable()
            watch.check_deadline(time.monotonic())
    finally:
        watch.close()
        selector.close()
    return findings


def test_the_constants_a_handler_sets_are_reported_as_json_values(tmp_path: Path) -> None:
    found = check(
        tmp_path,
        {
            "full": "MAX_ATTEMPTS = 5\nBACKOFF = (0, 1.5)\nTIMEOUT = 30\nCONCURRENCY = 2\n"
            "CONCURRENCY_PER_KEY = 1\nOTHER = 'not a policy constant'\n"
            "def handle(task, progress):\n    pass\n",
            "plain": "def handle(task, progress):\n    pass\n",
        },
    )
    assert found.constants == {
        "full": {
            "MAX_ATTEMPTS": 5,
            "BACKOFF": [0, 1.5],
            "TIMEOUT": 30,
            "CONCURRENCY": 2,
            "CONCURRENCY_PER_KEY": 1,
        },
        "plain": {},
    }
    assert found.problems == {}


def test_a_value_json_cannot_carry_is_reported_as_its_repr(tmp_path: Path) -> None:
    """The parent then refuses it with a message that shows what the handler wrote."""
    found = check(tmp_path, {"odd": "TIMEOUT = {1, 2}\ndef handle(task, progress):\n    pass\n"})
    assert found.constants == {"odd": {"TIMEOUT": "{1, 2}"}}


def test_a_handler_that_ends_the_check_does_not_hide_the_policies_of_the_others(
    tmp_path: Path,
) -> None:
    """The handlers after it are checked again, by a new check without it."""
    found = check(
        tmp_path,
        {
            "aaa": "MAX_ATTEMPTS = 2\ndef handle(task, progress):\n    pass\n",
            "mmm": "import os\nos._exit(7)\n",
            "zzz": "TIMEOUT = 5\ndef handle(task, progress):\n    pass\n",
        },
    )
    assert found.constants == {"aaa": {"MAX_ATTEMPTS": 2}, "zzz": {"TIMEOUT": 5}}
    assert list(found.problems) == ["mmm"]
    assert "exit status 7" in found.problems["mmm"]


def test_a_handler_checked_before_one_that_hangs_is_known_at_once(tmp_path: Path) -> None:
    """Each type is claimable as soon as its own import is done, not after the slowest one."""
    (tmp_path / "aaa.py").write_text("TIMEOUT = 5\ndef handle(task, progress):\n    pass\n")
    (tmp_path / "mmm.py").write_text("import time\ntime.sleep(600)\n")
    findings = Findings()
    selector = selectors.DefaultSelector()
    watch = ImportWatch(selector, dict(os.environ), findings.failed, checked=findings.checked)
    watch.start({t: tmp_path / f"{t}.py" for t in ("aaa", "mmm")})
    try:
        while "aaa" not in findings.constants:
            selector.select(1.0)
            watch.on_readable()
        assert watch.next_due() is not None, "the check is still running (importing mmm)"
        assert findings.constants == {"aaa": {"TIMEOUT": 5}}
    finally:
        watch.close()
        selector.close()
