"""Poison rows against the real ``python -m supervisor``: each fails alone, the fleet keeps going.

Plain SQL is a supported producer, so a row may hold anything. Each row here
once crashed the parent, stalled every claim, or was claimed again forever;
now the parent fails it with a clear ``last_error`` (never echoing its
options, nor logging them) and the innocent task queued after it completes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.lifecycle import MAX_OPTIONS_BYTES, Failure, Status
from supervisor.store import NewTask
from supervisor.store.sqlite import SqliteStore
from tests.e2e.harness import Launcher, wait_until

SECRET = "hunter2-POISON"

RETURNS = """
    def handle(task, progress):
        progress(10)
"""


@pytest.fixture
def launch(tmp_path: Path, dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


def sql(launch: Launcher, statement: str, *params: Any) -> list[dict[str, Any]]:
    """A statement on the launcher's own connection (autocommit), rows as dicts."""
    conn: Any = launch.store._connection()  # type: ignore[attr-defined]
    if isinstance(launch.store, SqliteStore):
        return [dict(r) for r in conn.execute(statement.replace("%s", "?"), params).fetchall()]
    with conn.cursor() as cursor:
        cursor.execute(statement, params)
        return list(cursor.fetchall())


def insert(launch: Launcher, columns: str, values: str) -> int:
    sql(launch, f"INSERT INTO tasks (type, {columns}) VALUES ('ok', {values})")
    return int(sql(launch, "SELECT max(id) AS id FROM tasks")[0]["id"])


def outcome(launch: Launcher, task_id: int) -> dict[str, Any]:
    """Status, failure and last_error read raw: ``get`` itself may not read a poison row."""
    rows = sql(launch, "SELECT status, failure, last_error FROM tasks WHERE id = %s", task_id)
    return rows[0]


def wait_failed(launch: Launcher, task_id: int) -> dict[str, Any]:
    def failed() -> dict[str, Any] | None:
        found = outcome(launch, task_id)
        return found if found["status"] == Status.FAILED.value else None

    return wait_until(failed, 20, f"poison task {task_id} to fail")


def test_poison_rows_fail_alone_and_the_innocent_task_completes(launch: Launcher) -> None:
    launch.handler("ok", RETURNS)
    secret_hex = f'{{"s": "{SECRET}"}}'.encode().hex()
    poison: dict[int, str] = {}
    big = launch.store.enqueue(
        NewTask(type="ok", options='"' + "\x01" * MAX_OPTIONS_BYTES + f'{SECRET}"')
    )
    poison[big] = "over the limit"
    used_up = insert(launch, "task_options, attempts, max_attempts", "NULL, 5, 3")
    poison[used_up] = "beyond max_attempts 3"
    if isinstance(launch.store, SqliteStore):
        poison[insert(launch, "task_options", f"X'{secret_hex}'")] = "BLOB"
        poison[insert(launch, "task_options", f"CAST(X'FF{secret_hex}' AS TEXT)")] = "UTF-8"
        poison[insert(launch, "deadline_at", "'not a date'")] = "deadline_at is not a valid date"
    padded = insert(launch, "task_options", "NULL")
    sql(launch, "UPDATE tasks SET type = 'ok ' WHERE id = %s", padded)
    innocent = launch.enqueue("ok", "{}")

    supervisor = launch.start_ready()
    assert launch.wait_terminal(innocent).status is Status.COMPLETED
    for task_id, words in poison.items():
        found = wait_failed(launch, task_id)
        assert found["failure"] == Failure.ERROR.value
        assert words in found["last_error"], found["last_error"]
        assert SECRET not in found["last_error"]
    # Not a type this supervisor runs (types compare exactly): left alone, not looping.
    assert outcome(launch, padded)["status"] == Status.QUEUED.value
    assert supervisor.running
    assert SECRET not in supervisor.stderr()
