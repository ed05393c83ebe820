"""The claim reads its index in ORDER BY order: no full scan, no sort.

A claim that scans or sorts locks (MySQL) or reads (SQLite) every candidate
row before it can pick the first few, so supervisors sharing a table would
starve each other as the table grows. The plans are checked on a table of a
few thousand rows in mixed statuses, types and priorities, with statistics
gathered, so the optimizer sees a realistic table.
"""

from __future__ import annotations

import json

import pytest

from supervisor.lifecycle import MAX_OPTIONS_BYTES
from tests.store.plans import (
    mysql_mixed_table,
    mysql_plan,
    plan_text,
    sqlite_mixed_table,
    sqlite_plan,
)


@pytest.mark.mysql
def test_mysql_claim_walks_the_claim_index_without_filesort(mysql_dsn: str) -> None:
    with mysql_mixed_table(mysql_dsn) as (store, cursor):
        plan = mysql_plan(
            store,
            cursor,
            "claim_select",
            {"types": ("a", "b"), "limit": 8, "max_options_bytes": MAX_OPTIONS_BYTES},
        )
    assert plan, "EXPLAIN returned no plan"
    for step in plan:
        extra = step.get("Extra") or ""
        assert step["type"] != "ALL", f"full table scan:\n{plan_text(plan)}"
        assert "filesort" not in extra.lower(), f"claim sorts its rows:\n{plan_text(plan)}"
        assert "temporary" not in extra.lower(), f"claim uses a temp table:\n{plan_text(plan)}"
    assert [step["key"] for step in plan] == ["tasks_claim"], plan_text(plan)


def test_sqlite_claim_walks_the_claim_index_without_a_sort(sqlite_dsn: str) -> None:
    with sqlite_mixed_table(sqlite_dsn) as (store, conn):
        claim = store._queries["claim_batch"]
        inner = claim[claim.index("SELECT id FROM tasks") : claim.index("LIMIT :limit")]
        params = {"types": '["a", "b"]', "limit": 8}
        inner_plan = sqlite_plan(conn, f"{inner} LIMIT :limit", params)
        whole_params = {
            **params,
            "owner": "A",
            "lease_s": 60.0,
            "max_options_bytes": MAX_OPTIONS_BYTES,
            "defaults": json.dumps({"a": [5, 2.0]}),  # a type with a policy: a subquery per row
        }
        whole_plan = sqlite_plan(conn, claim, whole_params)
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
    with mysql_mixed_table(mysql_dsn) as (store, cursor):
        params = {
            "type": "a",
            "limit": 8,
            "max_options_bytes": MAX_OPTIONS_BYTES,
            "no_full_keys": not full_keys,
            "full_keys": store._full_keys_param(full_keys),
        }
        select_plan = mysql_plan(store, cursor, "claim_select_limited", params)
        count_plan = mysql_plan(store, cursor, "running_by_key", {"type": "a"})
    for step in select_plan:
        extra = (step.get("Extra") or "").lower()
        assert step["type"] != "ALL", f"full table scan:\n{plan_text(select_plan)}"
        assert "filesort" not in extra, f"the claim sorts its rows:\n{plan_text(select_plan)}"
    assert [step["key"] for step in select_plan] == ["tasks_claim"], plan_text(select_plan)
    assert [step["key"] for step in count_plan] == ["tasks_type_status"], plan_text(count_plan)
    assert count_plan[0]["type"] in ("ref", "range"), plan_text(count_plan)
