"""A database that hangs must not delay a deadline kill.

A refused connection fails at once; a database that hangs (a partition, a
stalled server) answers nothing, and a client waits until its own timeout.
The parent must still kill each child at its deadline whatever the database
does, so it must never wait on the database itself.

The real ``python -m supervisor`` reaches a real MariaDB through a TCP proxy
(:mod:`tests.e2e.tcp_proxy`) that the test blackholes: open connections stay
open and new ones are accepted, but nothing is forwarded either way. The
test's own reads go straight to the server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pymysql
import pytest

from supervisor.dsn import MysqlDsn, parse_dsn
from supervisor.lifecycle import Failure, Status
from tests.e2e.harness import Launcher, SupervisorProcess, gone
from tests.e2e.tcp_proxy import TcpProxy, in_front_of

pytestmark = pytest.mark.mysql

KILL_MESSAGE = "deadline reached; killing the child's tree"
WORKERS = 4
# Staggered deadlines: the first kill's timeout write (and the handlers' progress writes) keep
# a statement in flight on the blackholed connection when the later deadlines come.
BUDGETS_S = (3.0, 3.5, 4.0, 4.5)
MAX_LATE_S = 1.0  # generous for a noisy CI machine; a loop that waits on the database is ~10 s late
WATCH_AFTER_S = 12.0  # after the last deadline, keep watching this long so a failure says how late

# Writes its pid, then hangs forever, reporting progress five times a second so that the
# parent always has something to write.
HANGS = """
    import json
    import os
    import time

    def handle(task, progress):
        path = json.loads(task.options)["pid"]
        with open(path + ".tmp", "w") as file:
            file.write(f"{os.getpid()}\\n")
        os.replace(path + ".tmp", path)
        step = 0
        while True:
            time.sleep(0.2)
            step += 1
            progress(min(step, 99))
"""


@attrs.frozen(kw_only=True)
class Setup:
    launcher: Launcher
    proxy: TcpProxy
    proxied_dsn: str
    server: MysqlDsn


@pytest.fixture
def setup(tmp_path: Path, mysql_dsn: str) -> Iterator[Setup]:
    real = parse_dsn(mysql_dsn)
    assert isinstance(real, MysqlDsn)
    with in_front_of(mysql_dsn) as (proxy, proxied), Launcher(tmp_path, mysql_dsn) as launcher:
        launcher.handler("hangs", HANGS)
        try:
            yield Setup(launcher=launcher, proxy=proxy, proxied_dsn=proxied, server=real)
        finally:
            # Whatever happened: a supervisor stuck on a blackholed statement fails it at once
            # and stops at teardown instead of waiting out its timeouts.
            proxy.cut()


def deadlines_epoch(server: MysqlDsn, task_ids: list[int]) -> dict[int, float]:
    """Each task's ``deadline_at`` as Unix time, by the database's own clock and time zone."""
    conn = pymysql.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=server.database,
        autocommit=True,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT id, UNIX_TIMESTAMP(deadline_at) FROM tasks WHERE id IN %s",
                (task_ids,),
            )
            return {int(row[0]): float(row[1]) for row in cursor.fetchall()}
    finally:
        conn.close()


def kill_times(supervisor: SupervisorProcess) -> dict[int, float]:
    """When the parent logged each deadline kill (its wall clock), by task id."""
    return {
        int(record["task_id"]): log_time(record)
        for record in supervisor.events(message=KILL_MESSAGE)
    }


def log_time(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["time"]).timestamp()


@pytest.mark.timeout(60)
def test_a_blackholed_database_does_not_delay_deadline_kills(setup: Setup) -> None:
    """Four hanging tasks are running when the database starts to hang. Each child is killed
    within a second of its deadline while the database still answers nothing; once it is
    back, every row is failed with failure 'timeout'."""
    launcher, proxy = setup.launcher, setup.proxy
    supervisor = launcher.start_ready(
        "--dsn", setup.proxied_dsn, workers=WORKERS, lease=30, log_level="INFO"
    )
    task_ids = [
        launcher.enqueue("hangs", launcher.paths_json(pid=f"{n}.pid"), budget=budget)
        for n, budget in enumerate(BUDGETS_S)
    ]
    pids = {task_id: launcher.read_pid(f"{n}.pid") for n, task_id in enumerate(task_ids)}
    for task_id in task_ids:
        launcher.wait_status(task_id, Status.RUNNING)
    deadlines = deadlines_epoch(setup.server, task_ids)

    proxy.blackhole()
    blackholed_at = time.time()
    first = min(deadlines.values())
    assert blackholed_at < first - 0.5, "too slow to start the tasks: rerun on a quieter machine"

    gone_at: dict[int, float] = {}

    def all_gone() -> bool:
        now = time.time()
        for task_id, pid in pids.items():
            if task_id not in gone_at and gone(pid):
                gone_at[task_id] = now
        return len(gone_at) == len(pids)

    watch_until = max(deadlines.values()) + WATCH_AFTER_S
    while not all_gone() and time.time() < watch_until:
        time.sleep(0.02)
    kills = kill_times(supervisor)
    assert proxy.is_blackholed  # everything above was seen while the database hung
    restored_at = time.time()
    proxy.restore()

    lateness = {
        task_id: (round(kills[task_id] - deadlines[task_id], 3) if task_id in kills else None)
        for task_id in task_ids
    }
    seen_gone = {
        task_id: round(gone_at[task_id] - deadlines[task_id], 3) if task_id in gone_at else None
        for task_id in task_ids
    }
    report = (
        f"kill lateness by task (from the parent's log, s): {lateness}; child seen gone"
        f" after its deadline (s): {seen_gone}; blackholed for {restored_at - blackholed_at:.1f} s"
    )
    rows = [launcher.wait_terminal(task_id, timeout=30) for task_id in task_ids]

    assert all(late is not None and late < MAX_LATE_S for late in lateness.values()), (
        f"a deadline kill waited on the database: {report}"
    )
    assert all(task_id in gone_at for task_id in task_ids), report
    assert [(row.status, row.failure) for row in rows] == [(Status.FAILED, Failure.TIMEOUT)] * len(
        rows
    ), json.dumps([(row.id, row.status.value, row.last_error) for row in rows])
    assert supervisor.running
