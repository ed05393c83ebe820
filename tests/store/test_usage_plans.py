"""The batched completion, now carrying each row's figures, still finds its rows by primary key.

``complete_many`` joins a JSON array of (id, attempt, figures) to the table: a
plan that walked every running row and searched the array for each would cost
(running rows x batch) per commit of the busiest statement there is. Checked on
a table of a few thousand rows in mixed statuses, with statistics gathered.
"""

from __future__ import annotations

import json

import pytest

from supervisor.dsn import parse_dsn
from supervisor.store import open_store
from supervisor.store.mysql import MysqlStore
from supervisor.store.sqlite import SqliteStore
from tests.store.test_claim_index import mixed_rows, plan_text

BATCH = [{"i": n, "a": 1, "c": 0.5, "r": 1024 * 1024, "w": 1.0} for n in range(1, 41)]


def test_sqlite_complete_many_looks_each_row_up_by_id(sqlite_dsn: str) -> None:
    store = open_store(parse_dsn(sqlite_dsn))
    assert isinstance(store, SqliteStore)
    store.migrate()
    conn = store._connection()
    try:
        conn.executemany(
            "INSERT INTO tasks (type, status, priority, run_at) "
            "VALUES (?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || ? || ' seconds'))",
            mixed_rows(),
        )
        conn.execute("ANALYZE")
        params = {"owner": "A", "usage": json.dumps(BATCH)}
        plan = [
            dict(r)
            for r in conn.execute("EXPLAIN QUERY PLAN " + store._queries["complete_many"], params)
        ]
    finally:
        store.close()
    details = [str(step["detail"]) for step in plan]
    assert details[0].startswith("SCAN json_each"), plan_text(plan)
    assert any("tasks USING INTEGER PRIMARY KEY" in d for d in details), plan_text(plan)
    assert not any(d.startswith("SCAN tasks") for d in details), plan_text(plan)


@pytest.mark.mysql
def test_mysql_complete_many_reads_only_the_batchs_rows(mysql_dsn: str) -> None:
    store = open_store(parse_dsn(mysql_dsn))
    assert isinstance(store, MysqlStore)
    store.migrate()
    conn = store._connection()
    try:
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO tasks (type, status, priority, run_at) "
                "VALUES (%s, %s, %s, NOW(6) + INTERVAL %s SECOND)",
                mixed_rows(),
            )
            cursor.execute("ANALYZE TABLE tasks")
            cursor.fetchall()
            params = {
                "owner": "A",
                "ids": tuple(row["i"] for row in BATCH),
                "fences": tuple((row["i"], row["a"]) for row in BATCH),
                "usage": json.dumps({str(row["i"]): {"c": row["c"]} for row in BATCH}),
            }
            cursor.execute("EXPLAIN " + store._queries["complete_many"], params)
            plan = list(cursor.fetchall())
    finally:
        store.close()
    tasks = [step for step in plan if step["table"] == "tasks"]
    assert tasks, plan_text(plan)
    for step in tasks:
        assert step["type"] != "ALL", f"full table scan:\n{plan_text(plan)}"
        assert step["key"] == "PRIMARY", plan_text(plan)
