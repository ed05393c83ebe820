"""Fork-server scenarios, run in a process of their own by ``test_forkserver.py``.

Each scenario makes this process a subreaper first (as the supervisor does),
which must not leak into the pytest process: orphans of every later test
would be re-parented to it. It prints one JSON document with what it saw.

Usage: ``python forkserver_scenario.py SCENARIO WORKDIR``
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from supervisor.forkserver import Template, is_our_child
from supervisor.protocol import DoneMessage, ReadyMessage, StopMessage, TaskMessage, decode
from supervisor.reaping import become_subreaper
from supervisor.workers import Child, child_environment

# What the handler reports from inside the forked child.
HANDLER = """
import json, os, random, sys

SECRETS = ("SUPERVISOR_DSN", "SUPERVISOR_DB_PASSWORD")
PARENT_ONLY = ("pymysql", "sqlite3", "loguru", "supervisor.store", "supervisor.parent")

def handle(task, progress):
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read().decode()
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    report = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "env_secrets": sorted(k for k in os.environ if k in SECRETS),
        # coverage.py (when measuring this run) keeps its data in SQLite itself.
        "modules": sorted(
            m for m in PARENT_ONLY
            if m in sys.modules and not (m == "sqlite3" and "coverage" in sys.modules)
        ),
        "random": random.random(),
        "cmdline": cmdline,
        "fds": fds,
    }
    with open(task.options, "w") as f:
        json.dump(report, f)
"""


def receive(child: Child, timeout: float = 10.0) -> Any:
    child.sock.settimeout(timeout)
    data = child.sock.recv(1 << 16)
    return decode(data.splitlines()[0])


def wait_reaped(child: Child, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while (status := child.reap()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"child {child.pid} did not exit")
        time.sleep(0.005)
    return status


def run_task(child: Child, handler: Path, report: Path) -> dict[str, Any]:
    message = TaskMessage(
        id=1,
        type="report",
        path=str(handler),
        options=str(report),
        attempt=1,
        max_attempts=1,
        remaining_s=30.0,
    )
    assert child.send(message)
    done = receive(child)
    assert isinstance(done, DoneMessage), done
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def scenario_task(workdir: Path, template: Template, lifeline_r: int) -> dict[str, Any]:
    """Two forked children each run a task; what they saw, and how they were reaped."""
    handler = workdir / "report.py"
    handler.write_text(HANDLER)
    out: dict[str, Any] = {"me": os.getpid(), "template": template.pid, "children": []}
    for slot in range(2):
        child = Child.fork(template, slot=slot, runtime_dir=workdir)
        seen: dict[str, Any] = {
            "pid": child.pid,
            "ours": is_our_child(child.pid),
            "ppid_now": psutil.Process(child.pid).ppid(),
            "pgid": os.getpgid(child.pid),
        }
        ready = receive(child)
        seen["ready"] = isinstance(ready, ReadyMessage) and ready.pid == child.pid
        seen["report"] = run_task(child, handler, workdir / f"report-{slot}.json")
        seen["cmdline"] = psutil.Process(child.pid).cmdline()
        assert child.send(StopMessage())
        status = wait_reaped(child)
        seen["exit_code"] = status.exit_code
        seen["peak_rss_bytes"] = status.peak_rss_bytes
        child.close()
        out["children"].append(seen)
    out["template_cmdline"] = psutil.Process(template.pid).cmdline()
    return out


def scenario_lifeline(workdir: Path, template: Template, lifeline_w: int) -> dict[str, Any]:
    """The parent's lifeline closes: the idle child and the template both end within a second."""
    child = Child.fork(template, slot=0, runtime_dir=workdir)
    assert isinstance(receive(child), ReadyMessage)
    grandchild_pid_file = workdir / "handler.pid"
    # The child's process group is killed with it: start something in it first.
    handler = workdir / "spawner.py"
    handler.write_text(
        "import subprocess, sys\n"
        "def handle(task, progress):\n"
        "    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"    open({str(grandchild_pid_file)!r}, 'w').write(str(p.pid))\n"
    )
    assert child.send(
        TaskMessage(
            id=1,
            type="spawner",
            path=str(handler),
            options=None,
            attempt=1,
            max_attempts=1,
            remaining_s=30,
        )
    )
    assert isinstance(receive(child), DoneMessage)
    grandchild = psutil.Process(int(grandchild_pid_file.read_text()))
    started = time.monotonic()
    os.close(lifeline_w)
    status = wait_reaped(child, timeout=5)
    child_s = time.monotonic() - started
    template_status = template._process.wait(5)
    template_s = time.monotonic() - started
    grandchild.wait(5)  # killed with the child's group (and reaped by the child or by us)
    return {
        "child_signal": status.signal_name,
        "child_exit": status.exit_code,
        "child_s": child_s,
        "template_exit": template_status,
        "template_s": template_s,
        "grandchild_gone": not grandchild.is_running(),
    }


def scenario_many(workdir: Path, template: Template, count: int = 200) -> dict[str, Any]:
    """Fork ``count`` children one after another, each up to ready, told to stop and reaped."""
    started = time.perf_counter()
    spawn_s = 0.0
    for slot in range(count):
        before = time.perf_counter()
        child = Child.fork(template, slot=slot, runtime_dir=workdir)
        spawn_s += time.perf_counter() - before
        assert isinstance(receive(child), ReadyMessage)
        assert child.send(StopMessage())
        status = wait_reaped(child)
        assert status.exit_code == 0, status
        child.close()
    return {
        "count": count,
        "seconds": time.perf_counter() - started,
        "spawn_ms_mean": spawn_s / count * 1e3,
    }


def scenario_failures(workdir: Path, template: Template) -> dict[str, Any]:
    """A template that does not answer fails spawn within ~1 s; after that, spawn fails at once."""
    out: dict[str, Any] = {}
    os.kill(template.pid, signal.SIGSTOP)
    parent_end, child_end = socket.socketpair()
    started = time.monotonic()
    try:
        template.spawn(slot=0, sock=child_end, dump_path=workdir / "x.dump", metrics_id=None)
    except OSError as exc:
        out["stopped_error"] = type(exc).__name__
    out["stopped_s"] = time.monotonic() - started
    started = time.monotonic()
    try:
        template.spawn(slot=0, sock=child_end, dump_path=workdir / "x.dump", metrics_id=None)
    except OSError as exc:
        out["again_error"] = str(exc)
    out["again_s"] = time.monotonic() - started
    os.kill(template.pid, signal.SIGCONT)
    template.close()
    out["template_gone"] = template._process.poll() is not None
    parent_end.close()
    child_end.close()
    return out


def main() -> int:
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    lifeline_r, lifeline_w = os.pipe()
    env = child_environment(os.environ, {})
    if scenario == "not-subreaper":
        try:
            Template.start(env=env, lifeline_fd=lifeline_r)
        except OSError as exc:
            print(json.dumps({"error": str(exc)}))
            return 0
        print(json.dumps({"error": None}))
        return 0
    become_subreaper()
    template = Template.start(env=env, lifeline_fd=lifeline_r)
    try:
        if scenario == "task":
            result = scenario_task(workdir, template, lifeline_r)
        elif scenario == "lifeline":
            result = scenario_lifeline(workdir, template, lifeline_w)
        elif scenario == "many":
            result = scenario_many(workdir, template)
        elif scenario == "failures":
            result = scenario_failures(workdir, template)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    finally:
        template.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
