"""The store contract for handler policies, on SQLite, MariaDB/MySQL and in memory.

A claim is told the claimer's policies by type. Where a row sets no
``max_attempts`` or ``timeout_s`` of its own, the claim writes the handler's
value (else 3 attempts, no per-attempt limit) into the row, so the running
row describes itself: a supervisor without the handler file rescues it
correctly. A value the producer set explicitly always wins.
"""

from __future__ import annotations

import pytest

from supervisor.lifecycle import Failure, Status
from supervisor.policy import HandlerPolicy
from supervisor.store import NewTask, Rescued, Store, SupervisorInfo
from tests.store.test_contract import (
    LEASE_RUN_OUT_S,
    LONG_LEASE_S,
    SHORT_LEASE_S,
    elapse,
    raw,
    row,
)

pytestmark = pytest.mark.timeout(60)

FIVE_TRIES = HandlerPolicy(max_attempts=5, timeout_s=2.5)
POLICIES = {"t": FIVE_TRIES, "u": HandlerPolicy(max_attempts=1)}


def info(supervisor_id: str) -> SupervisorInfo:
    return SupervisorInfo(id=supervisor_id, host="h", pid=1, workers=1, version="test")


# --- the claim writes the effective values -------------------------------------------------


def test_a_row_without_values_gets_the_handlers_max_attempts_and_timeout(store: Store) -> None:
    task_id = store.enqueue(NewTask(type="t"))
    (claim,) = store.claim("A", ["t"], 1, LONG_LEASE_S, policies=POLICIES)
    assert (claim.max_attempts, claim.timeout_s) == (5, 2.5)
    task = row(store, task_id)
    assert (task.max_attempts, task.timeout_s) == (5, 2.5), "written into the row"


def test_values_set_at_enqueue_beat_the_handlers(store: Store) -> None:
    task_id = store.enqueue(NewTask(type="t", max_attempts=2, timeout_s=9.0))
    (claim,) = store.claim("A", ["t"], 1, LONG_LEASE_S, policies=POLICIES)
    assert (claim.max_attempts, claim.timeout_s) == (2, 9.0)
    assert (row(store, task_id).max_attempts, row(store, task_id).timeout_s) == (2, 9.0)


def test_without_a_policy_a_row_gets_three_attempts_and_no_per_attempt_limit(
    store: Store,
) -> None:
    task_id = store.enqueue(NewTask(type="v"))
    (claim,) = store.claim("A", ["v"], 1, LONG_LEASE_S, policies=POLICIES)
    assert (claim.max_attempts, claim.timeout_s) == (3, None)
    assert (row(store, task_id).max_attempts, row(store, task_id).timeout_s) == (3, None)


def test_one_claim_of_several_types_writes_each_its_own_policy(store: Store) -> None:
    ids = store.enqueue_many([NewTask(type=t) for t in ("t", "u", "v", "t")])
    claims = store.claim("A", ["t", "u", "v"], 10, LONG_LEASE_S, policies=POLICIES)
    assert [(c.type, c.max_attempts, c.timeout_s) for c in claims] == [
        ("t", 5, 2.5),
        ("u", 1, None),
        ("v", 3, None),
        ("t", 5, 2.5),
    ]
    assert [row(store, i).max_attempts for i in ids] == [5, 1, 3, 5]


def test_complete_and_claim_passes_the_policies_too(store: Store) -> None:
    store.enqueue_many([NewTask(type="t"), NewTask(type="t")])
    (first,) = store.claim("A", ["t"], 1, LONG_LEASE_S, policies=POLICIES)
    won, (second,) = store.complete_and_claim(
        [first], "A", ["t"], 1, LONG_LEASE_S, policies=POLICIES
    )
    assert won == {first.id}
    assert (second.max_attempts, second.timeout_s) == (5, 2.5)


def test_a_plain_sql_insert_gets_the_handlers_policy(sql_store: Store) -> None:
    raw(sql_store, "INSERT INTO tasks (type, task_options) VALUES ('t', '{}')")
    (claim,) = sql_store.claim("A", ["t"], 1, LONG_LEASE_S, policies=POLICIES)
    assert (claim.max_attempts, claim.timeout_s) == (5, 2.5)


def test_explicit_sql_column_values_beat_the_handlers(sql_store: Store) -> None:
    raw(sql_store, "INSERT INTO tasks (type, max_attempts, timeout_s) VALUES ('t', 7, 0.5)")
    (claim,) = sql_store.claim("A", ["t"], 1, LONG_LEASE_S, policies=POLICIES)
    assert (claim.max_attempts, claim.timeout_s) == (7, 0.5)


# --- rescue needs no handler file ----------------------------------------------------------


@pytest.mark.parametrize(
    ("max_attempts", "expected"),
    [(1, Rescued(requeued=0, lost={"u": 1})), (2, Rescued(requeued=1))],
)
def test_a_rescue_without_the_handler_obeys_the_max_attempts_written_at_claim(
    store: Store, max_attempts: int, expected: Rescued
) -> None:
    """Supervisor A, with the handler (MAX_ATTEMPTS), claims and dies; the rescuer is told
    no policy at all (rescue takes none): the row's written value decides."""
    task_id = store.enqueue(NewTask(type="u"))
    policies = {"u": HandlerPolicy(max_attempts=max_attempts)}
    store.claim("A", ["u"], 1, SHORT_LEASE_S, policies=policies)
    elapse(store, LEASE_RUN_OUT_S)
    assert store.rescue_expired(100) == expected
    task = row(store, task_id)
    if max_attempts == 1:
        assert (task.status, task.failure) == (Status.FAILED, Failure.LOST)
    else:
        assert task.status is Status.QUEUED and task.max_attempts == 2


# --- declarations --------------------------------------------------------------------------


def test_declared_policies_read_back_and_none_for_an_undeclared_type(store: Store) -> None:
    policy = HandlerPolicy(
        max_attempts=4, backoff=(0.0, 1.5, 60.0), timeout_s=30.0, concurrency=2,
        concurrency_per_key=1,
    )  # fmt: skip
    assert store.declare_types("A", {"t": policy}) == []
    assert store.declared_policy("t") == policy
    assert store.declared_policy("nobody") is None


def test_a_declaration_replacing_another_live_supervisors_different_policy_is_reported(
    store: Store,
) -> None:
    store.register(info("A"), ttl_s=LONG_LEASE_S)
    store.register(info("B"), ttl_s=LONG_LEASE_S)
    store.declare_types("A", {"t": FIVE_TRIES, "u": FIVE_TRIES})
    overwritten = store.declare_types("B", {"t": HandlerPolicy(max_attempts=2), "u": FIVE_TRIES})
    assert [(o.type, o.declared_by, o.before) for o in overwritten] == [("t", "A", FIVE_TRIES)]
    assert store.declared_policy("t") == HandlerPolicy(max_attempts=2)
    assert store.declare_types("B", {"t": FIVE_TRIES}) == [], "its own declaration: no warning"


def test_a_schedule_is_not_part_of_the_declared_policy(store: Store) -> None:
    """The schedule has columns of its own: two supervisors whose handler files differ only
    in their SCHEDULE make no warning, and the declared policy reads back without it."""
    store.register(info("A"), ttl_s=LONG_LEASE_S)
    store.register(info("B"), ttl_s=LONG_LEASE_S)
    store.declare_types("A", {"t": HandlerPolicy(max_attempts=2, schedule="* * * * *")})
    every_five = HandlerPolicy(max_attempts=2, schedule="*/5 * * * *", schedule_options="x")
    assert store.declare_types("B", {"t": every_five}) == []
    assert store.declared_policy("t") == HandlerPolicy(max_attempts=2)


def test_replacing_a_dead_supervisors_declaration_is_not_reported(store: Store) -> None:
    store.register(info("A"), ttl_s=SHORT_LEASE_S)
    store.declare_types("A", {"t": FIVE_TRIES})
    elapse(store, LEASE_RUN_OUT_S)
    assert store.declare_types("B", {"t": HandlerPolicy()}) == []


def test_a_declaration_never_touches_an_operators_pause(sql_store: Store) -> None:
    raw(sql_store, "INSERT INTO task_types (type, paused) VALUES ('t', 1)")
    sql_store.declare_types("A", {"t": FIVE_TRIES})
    (found,) = raw(sql_store, "SELECT paused, max_attempts, declared_by FROM task_types")
    assert (int(found["paused"]), int(found["max_attempts"]), found["declared_by"]) == (1, 5, "A")
