"""``supervisor.testing`` without a child: make_task, the progress recorder, and its packaging."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.errors import UsageError
from supervisor.testing import ANY, ProgressRecorder, make_task

REPO_ROOT = Path(__file__).resolve().parents[2]


def handle(task, progress):  # type: ignore[no-untyped-def]
    """A handler as users write them, called directly."""
    options = json.loads(task.options)
    for step in range(options["steps"]):
        progress(100 * (step + 1) / options["steps"])
    return task.is_last_attempt


def test_make_task_gives_what_handle_receives_with_options_stored_as_a_producer_stores_them() -> (
    None
):
    task, progress = make_task("resize", {"steps": 4}, id=7, attempt=3, max_attempts=3, budget=60)

    assert handle(task, progress) is True
    assert (task.id, task.type, task.options) == (7, "resize", '{"steps": 4}')
    assert progress.values == [25, 50, 75, 100] and progress.last == 100
    assert 0 < task.remaining() <= 60


def test_the_recorder_clamps_and_ignores_values_as_the_child_does() -> None:
    progress = ProgressRecorder()
    for value in (10**400, -3, float("nan"), "abc", None, 42.9):
        progress(value)  # type: ignore[arg-type]

    assert progress.values == [100, 0, 42]
    assert ProgressRecorder().last is None


def test_make_task_refuses_what_a_producer_would_refuse() -> None:
    with pytest.raises(UsageError):
        make_task("not a type!")
    with pytest.raises(UsageError):
        make_task("resize", max_attempts=0)
    assert repr(ANY) == "ANY"


def test_the_testing_module_imports_without_pytest() -> None:
    """``pip install -e .`` without the test extra is enough: pytest is never imported."""
    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "import supervisor, supervisor.testing\n"
        "assert 'pytest' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    import supervisor.pytest_plugin\n"
        "except ImportError:\n"
        "    print('plugin needs pytest')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "plugin needs pytest\n"


def test_the_plugin_is_registered_for_pytest_to_load_by_itself() -> None:
    """The pytest11 entry point's name is the module's, so ``-p`` or ``pytest_plugins`` naming
    it as well (as this project's conftest does) never registers it twice."""
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    entries = setup["options.entry_points"]["pytest11"].split("\n")
    assert "supervisor.pytest_plugin = supervisor.pytest_plugin" in [e.strip() for e in entries]


def test_the_auto_loaded_plugin_costs_little_until_a_test_asks_for_the_fixture() -> None:
    """Every pytest run where the package is installed imports the plugin, used or not."""
    code = (
        "import sys\n"
        "import supervisor.pytest_plugin\n"
        "heavy = {'supervisor.workers', 'supervisor.store', 'loguru', 'psutil', 'pymysql'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
