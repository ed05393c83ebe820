"""The batched completion, now carrying each row's figures, still finds its rows by primary key.

``complete_many`` takes the batch's figures as JSON (SQLite joins an array of
them, MySQL looks each row's up by id): a plan that walked every running row
would cost (running rows x batch) per commit of the busiest statement there is.
Checked on a table of a few thousand rows in mixed statuses, with statistics.
"""

from __future__ import annotations

import json

import pytest

from tests.store.plans import (
    mysql_mixed_table,
    mysql_plan,
    plan_text,
    sqlite_mixed_table,
    sqlite_plan,
)

BATCH = [{"i": n, "a": 1, "c": 0.5, "r": 1024 * 1024, "w": 1.0} for n in range(1, 41)]


def test_sqlite_complete_many_looks_each_row_up_by_id(sqlite_dsn: str) -> None:
    with sqlite_mixed_table(sqlite_dsn) as (store, conn):
        params = {"owner": "A", "usage": json.dumps(BATCH)}
        plan = sqlite_plan(conn, store._queries["complete_many"], params)
    details = [str(step["detail"]) for step in plan]
    assert details[0].startswith("SCAN json_each"), plan_text(plan)
    assert any("tasks USING INTEGER PRIMARY KEY" in d for d in details), plan_text(plan)
    assert not any(d.startswith("SCAN tasks") for d in details), plan_text(plan)


@pytest.mark.mysql
def test_mysql_complete_many_reads_only_the_batchs_rows(mysql_dsn: str) -> None:
    with mysql_mixed_table(mysql_dsn) as (store, cursor):
        params = {
            "owner": "A",
            "ids": tuple(row["i"] for row in BATCH),
            "fences": tuple((row["i"], row["a"]) for row in BATCH),
            "usage": json.dumps({str(row["i"]): {"c": row["c"]} for row in BATCH}),
        }
        plan = mysql_plan(store, cursor, "complete_many", params)
    tasks = [step for step in plan if step["table"] == "tasks"]
    assert tasks, plan_text(plan)
    for step in tasks:
        assert step["type"] != "ALL", f"full table scan:\n{plan_text(plan)}"
        assert step["key"] == "PRIMARY", plan_text(plan)
