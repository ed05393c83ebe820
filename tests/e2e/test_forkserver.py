"""The fork server with real processes: children forked from the template behave like spawned ones.

The scenarios run in ``forkserver_scenario.py``, a process of their own,
because each makes its process a subreaper, which must not leak into pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from supervisor.lifecycle import Status

from .harness import Launcher, clean_env

SCENARIO = Path(__file__).with_name("forkserver_scenario.py")
SECRET_DSN = "mysql://app:hunter2@db.example:3306/queue"


def run_scenario(name: str, workdir: Path, timeout: float = 60) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCENARIO), name, str(workdir)],
        env=clean_env(SUPERVISOR_DSN=SECRET_DSN, SUPERVISOR_DB_PASSWORD="hunter2"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_forked_child_runs_a_task_as_the_subreapers_own_child(tmp_path: Path) -> None:
    result = run_scenario("task", tmp_path)
    me, template = result["me"], result["template"]
    first, second = result["children"]
    for child in (first, second):
        report = child["report"]
        # Re-parented to the process that started the template (the intermediate is gone),
        # which can wait for it: wait4 gave the exit code and the peak RSS.
        assert child["ours"] is True
        assert child["ppid_now"] == me
        assert report["ppid"] == me
        assert child["exit_code"] == 0
        assert child["peak_rss_bytes"] > 1024 * 1024
        # Its own process group, and it said ready with its own pid.
        assert child["pgid"] == child["pid"] == report["pid"] == report["pgid"]
        assert child["ready"] is True
        # No secret in its environment; no database code inherited from the template.
        assert report["env_secrets"] == []
        assert report["modules"] == []
        # stdin is /dev/null; stdout and stderr are both its own output pipe (the parent
        # re-emits what comes through as log records); besides stdio only its socket, the
        # lifeline and its dump file (not the template's control socket, nor anything of
        # the intermediate's).
        fds = report["fds"]
        assert fds["0"] == "/dev/null"
        assert fds["1"] == fds["2"] and fds["1"].startswith("pipe:"), fds
        held = sorted(
            target if target.endswith(".dump") else target.split(":")[0]
            for fd, target in fds.items()
            if int(fd) > 2 and not target.startswith("/proc/")
        )
        assert held[0] in {str(tmp_path / f"child-{slot}.dump") for slot in (0, 1)}
        assert held[1:] == ["pipe", "socket"]
        # ps shows a worker child, not the template.
        assert "supervisor.child" in child["cmdline"]
        assert "--forked" in child["cmdline"]
    assert "supervisor.template" in result["template_cmdline"]
    assert "supervisor.child" not in result["template_cmdline"]
    assert first["pid"] != template
    # The random module was reseeded in each child (os.register_at_fork).
    assert first["report"]["random"] != second["report"]["random"]


def test_child_and_template_die_when_the_lifeline_closes(tmp_path: Path) -> None:
    result = run_scenario("lifeline", tmp_path)
    # The child kills its own tree (SIGKILL to its group, itself included).
    assert result["child_signal"] == "SIGKILL" or result["child_exit"] == 1
    assert result["child_s"] < 2.0
    assert result["template_exit"] == 0
    assert result["template_s"] < 2.0
    assert result["grandchild_gone"] is True


def test_spawn_fails_fast_when_the_template_does_not_answer(tmp_path: Path) -> None:
    result = run_scenario("failures", tmp_path)
    assert result["stopped_error"] == "TimeoutError"
    assert 0.9 <= result["stopped_s"] < 2.0
    assert "unusable" in result["again_error"]
    assert result["again_s"] < 0.1
    assert result["template_gone"] is True


def test_the_template_refuses_to_start_unless_its_parent_is_a_subreaper(tmp_path: Path) -> None:
    result = run_scenario("not-subreaper", tmp_path)
    assert result["error"] is not None
    assert "subreaper" in result["error"]


def test_two_hundred_children_one_after_another(tmp_path: Path) -> None:
    result = run_scenario("many", tmp_path, timeout=120)
    assert result["count"] == 200
    # A figure to read, not to assert: the machine is shared.
    print(
        f"\n200 forked children, each spawned, ready, stopped and reaped in turn:"
        f" {result['seconds']:.2f} s ({result['count'] / result['seconds']:.0f}/s),"
        f" spawn {result['spawn_ms_mean']:.2f} ms on average"
    )


def test_the_supervisor_runs_fresh_children_through_the_fork_server(tmp_path: Path) -> None:
    with Launcher(tmp_path, f"sqlite:///{tmp_path / 'queue.db'}") as launcher:
        launcher.handler(
            "whoami",
            """
            import json, os
            def handle(task, progress):
                with open("/proc/self/cmdline", "rb") as f:
                    cmdline = f.read().decode()
                with open(task.options, "w") as f:
                    json.dump({"pid": os.getpid(), "ppid": os.getppid(), "cmdline": cmdline}, f)
            """,
        )
        ids = [launcher.enqueue("whoami", str(launcher.path(f"who-{n}.json"))) for n in range(6)]
        supervisor = launcher.start("--max-tasks-per-child", "1", workers=2)
        for task_id in ids:
            assert launcher.wait_terminal(task_id).status is Status.COMPLETED
        pids = set()
        for n in range(6):
            who = json.loads(launcher.path(f"who-{n}.json").read_text())
            assert who["ppid"] == supervisor.pid
            assert "--forked" in who["cmdline"]
            pids.add(who["pid"])
        assert len(pids) == 6  # a fresh process per task
        assert not [r for r in supervisor.logs() if "fork server" in r["message"]]
        # The template is the supervisor's child too, and not taken for a worker.
        kids = psutil.Process(supervisor.pid).children()
        assert any("supervisor.template" in p.cmdline() for p in kids)
        assert os.getpid() not in pids
