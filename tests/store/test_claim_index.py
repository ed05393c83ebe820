"""The claim reads its index in ORDER BY order: no full scan, no sort.

A claim that scans or sorts locks (MySQL) or reads (SQLite) every candidate
row before it can pick the first few, so supervisors sharing a table would
starve each other as the table grows. The plans are checked on a table of a
few thousand rows in mixed statuses, types and priorities, with statistics
gathered, so the optimizer sees a realistic table.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from supervisor.dsn import parse_dsn
from supervisor.lifecycle import MAX_OPTIONS_BYTES
from supervisor.store import open_store
from supervisor.store.mysql import MysqlStore
from supervisor.store.sqlite import SqliteStore

ROWS = 4000
STATUSES = ("queued", "running", "completed", "failed", "cancelled")
TYPES = ("a", "b", "c", "d", "e")


def mixed_rows() -> list[tuple[str, str, int, int]]:
    """(type, status, priority, run_at offset in seconds): every combination, repeated."""
    combos = itertools.cycle(itertools.product(TYPES, STATUSES, (-1, 0, 0, 5), (0, 0, 60)))
    return [next(combos) for _ in range(ROWS)]


def plan_text(plan: list[dict[str, Any]]) -> str:
    return "\n".join(str(step) for step in plan)


@pytest.mark.mysql
def test_mysql_claim_walks_the_claim_index_without_filesort(mysql_dsn: str) -> None:
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
            cursor.execute(
                "EXPLAIN " + store._queries["claim_select"],
                {"types": ("a", "b"), "limit": 8, "max_options_bytes": MAX_OPTIONS_BYTES},
            )
            plan = list(cursor.fetchall())
    finally:
        store.close()
    assert plan, "EXPLAIN returned no plan"
    for step in plan:
        extra = step.get("Extra") or ""
        assert step["type"] != "ALL", f"full table scan:\n{plan_text(plan)}"
        assert "filesort" not in extra.lower(), f"claim sorts its rows:\n{plan_text(plan)}"
        assert "temporary" not in extra.lower(), f"claim uses a temp table:\n{plan_text(plan)}"
    assert [step["key"] for step in plan] == ["tasks_claim"], plan_text(plan)


def test_sqlite_claim_walks_the_claim_index_without_a_sort(sqlite_dsn: str) -> None:
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
        claim = store._queries["claim_batch"]
        inner = claim[claim.index("SELECT id FROM tasks") : claim.index("LIMIT :limit")]
        params = {"types": '["a", "b"]', "limit": 8}
        inner_plan = [
            dict(r) for r in conn.execute(f"EXPLAIN QUERY PLAN {inner} LIMIT :limit", params)
        ]
        whole_params = {
            **params,
            "owner": "A",
            "lease_s": 60.0,
            "max_options_bytes": MAX_OPTIONS_BYTES,
            "defaults": json.dumps({"a": [5, 2.0]}),  # a type with a policy: a subquery per row
        }
        whole_plan = [dict(r) for r in conn.execute(f"EXPLAIN QUERY PLAN {claim}", whole_params)]
    finally:
        store.close()
    inner_details = [str(step["detail"]) for step in inner_plan]
    assert any("INDEX tasks_claim" in d for d in inner_details), plan_text(inner_plan)
    for plan in (inner_plan, whole_plan):
        details = [str(step["detail"]) for step in plan]
        assert not any("TEMP B-TREE" in d for d in details), plan_text(plan)
        assert not any(d.startswith("SCAN tasks") for d in details), plan_text(plan)


@pytest.mark.mysql
@pytest.mark.parametrize("full_keys", [(), ("k1", "k2")])
def test_mysql_limited_claim_walks_the_claim_index_and_counts_on_the_type_status_index(
    mysql_dsn: str, full_keys: tuple[str, ...]
) -> None:
    """The select of a limited type is claim_select's plan; its running count reads only
    the (type, status) range of tasks_type_status, never the whole table."""
    store = open_store(parse_dsn(mysql_dsn))
    assert isinstance(store, MysqlStore)
    store.migrate()
    conn = store._connection()
    keyed = [(*row, f"k{n % 7}") for n, row in enumerate(mixed_rows())]
    try:
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO tasks (type, status, priority, run_at, concurrency_key) "
                "VALUES (%s, %s, %s, NOW(6) + INTERVAL %s SECOND, %s)",
                keyed,
            )
            cursor.execute("ANALYZE TABLE tasks")
            cursor.fetchall()
            params = {
                "type": "a",
                "limit": 8,
                "max_options_bytes": MAX_OPTIONS_BYTES,
                "no_full_keys": not full_keys,
                "full_keys": store._full_keys_param(full_keys),
            }
            cursor.execute("EXPLAIN " + store._queries["claim_select_limited"], params)
            select_plan = list(cursor.fetchall())
            cursor.execute("EXPLAIN " + store._queries["running_by_key"], {"type": "a"})
            count_plan = list(cursor.fetchall())
    finally:
        store.close()
    for step in select_plan:
        extra = (step.get("Extra") or "").lower()
        assert step["type"] != "ALL", f"full table scan:\n{plan_text(select_plan)}"
        assert "filesort" not in extra, f"the claim sorts its rows:\n{plan_text(select_plan)}"
    assert [step["key"] for step in select_plan] == ["tasks_claim"], plan_text(select_plan)
    assert [step["key"] for step in count_plan] == ["tasks_type_status"], plan_text(count_plan)
    assert count_plan[0]["type"] in ("ref", "range"), plan_text(count_plan)
