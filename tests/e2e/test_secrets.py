"""A handler cannot read the database password from its parent (issue 10, item 14).

The supervisor is started the way the README recommends for production: the
DSN and the password in the environment (SUPERVISOR_DSN,
SUPERVISOR_DB_PASSWORD). A handler then looks where a hostile one would: the
parent's ``/proc/<ppid>/environ`` and ``cmdline``, and its own environment.
These tests run as root, which may read any process's ``/proc`` files: what
they prove is that the secrets are no longer there to read. That an
unprivileged child cannot open the files at all is tests/unit/test_hardening.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.lifecycle import Status
from tests.e2e.harness import Launcher

PASSWORD = "pw-in-env-7f3a"

SNOOPS = """
    import json, os

    def read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError as exc:
            return type(exc).__name__

    def handle(task, progress):
        ppid = os.getppid()
        report = {
            "environ": read(f"/proc/{ppid}/environ"),
            "cmdline": read(f"/proc/{ppid}/cmdline"),
            "own": {k: v for k, v in os.environ.items() if k.startswith("SUPERVISOR_")},
        }
        with open(json.loads(task.options)["out"], "w") as out:
            json.dump(report, out)
"""


@pytest.fixture
def launch(tmp_path: Path, sqlite_dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, sqlite_dsn) as launcher:
        yield launcher


def test_a_handler_finds_no_dsn_or_password_in_its_parents_proc_files(launch: Launcher) -> None:
    launch.handler("snoop", SNOOPS)
    launch.start_ready(env={"SUPERVISOR_DSN": launch.dsn, "SUPERVISOR_DB_PASSWORD": PASSWORD})
    task_id = launch.enqueue("snoop", launch.paths_json(out="report.json"))

    assert launch.wait_terminal(task_id).status is Status.COMPLETED
    report = json.loads(launch.path("report.json").read_text())

    assert PASSWORD not in report["environ"]
    assert f"SUPERVISOR_DSN={launch.dsn}" not in report["environ"]
    assert PASSWORD not in report["cmdline"]
    assert report["own"] == {}
