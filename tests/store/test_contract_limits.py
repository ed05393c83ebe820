"""The store contract for concurrency limits: CONCURRENCY and CONCURRENCY_PER_KEY in a claim.

Run on every backend, as the rest of the contract (the ``store`` fixture of
``test_contract``: SQLite, MariaDB/MySQL and MemoryStore). The limits are the
claimer's own handler policies, passed as ``policies=``; they count every
``running`` row of the type in the table, whoever claimed it. A task that does
not fit stays ``queued`` with no attempt used, and the first claim after a slot
frees takes it.
"""

from __future__ import annotations

import pytest

from supervisor.errors import StoreError
from supervisor.lifecycle import Failure, Status
from supervisor.policy import HandlerPolicy
from supervisor.store import NewTask, Store
from tests.store.test_contract import LONG_LEASE_S, enqueue, row

TWO_AT_ONCE = {"lim": HandlerPolicy(concurrency=2)}
ONE_PER_KEY = {"lim": HandlerPolicy(concurrency_per_key=1)}


def claim_ids(
    store: Store,
    policies: dict[str, HandlerPolicy],
    owner: str = "A",
    types: tuple[str, ...] = ("lim",),
    limit: int = 10,
) -> list[int]:
    return [c.id for c in store.claim(owner, types, limit, LONG_LEASE_S, policies=policies)]


def test_one_claim_takes_no_more_than_the_concurrency_limit(store: Store) -> None:
    ids = [enqueue(store, "lim") for _ in range(5)]
    assert claim_ids(store, TWO_AT_ONCE) == ids[:2]
    assert [row(store, i).status for i in ids[2:]] == [Status.QUEUED] * 3


def test_the_limit_counts_tasks_running_under_any_owner(store: Store) -> None:
    """Fleet-wide: what A runs leaves B no room; a later claim of A gets none either."""
    [enqueue(store, "lim") for _ in range(4)]
    assert len(claim_ids(store, TWO_AT_ONCE, owner="A")) == 2
    assert claim_ids(store, TWO_AT_ONCE, owner="B") == []
    assert claim_ids(store, TWO_AT_ONCE, owner="A") == []


def test_tasks_over_the_limit_stay_queued_with_no_attempt_used(store: Store) -> None:
    ids = [enqueue(store, "lim") for _ in range(3)]
    claim_ids(store, TWO_AT_ONCE)
    claim_ids(store, TWO_AT_ONCE)
    waiting = row(store, ids[2])
    assert (waiting.status, waiting.attempts, waiting.failure) == (Status.QUEUED, 0, None)


@pytest.mark.parametrize("ending", ["complete", "fail", "requeue", "cancel"])
def test_a_slot_that_frees_goes_to_the_next_claim(store: Store, ending: str) -> None:
    ids = [enqueue(store, "lim") for _ in range(4)]
    first, _ = store.claim("A", ["lim"], 10, LONG_LEASE_S, policies=TWO_AT_ONCE)
    if ending == "complete":
        assert store.complete(first)
    elif ending == "fail":
        assert store.fail(first, Failure.ERROR, "boom")
    elif ending == "requeue":
        assert store.requeue(first, 3600.0, "later")
    else:
        assert store.cancel(first.id).applied
    assert claim_ids(store, TWO_AT_ONCE, owner="B") == [ids[2]]
    assert claim_ids(store, TWO_AT_ONCE, owner="B") == []


def test_completing_in_the_same_transaction_frees_the_slot_for_its_claim(store: Store) -> None:
    ids = [enqueue(store, "lim") for _ in range(3)]
    claims = store.claim("A", ["lim"], 10, LONG_LEASE_S, policies=TWO_AT_ONCE)
    won, more = store.complete_and_claim(
        claims[:1], "A", ["lim"], 10, LONG_LEASE_S, policies=TWO_AT_ONCE
    )
    assert won == {ids[0]}
    assert [c.id for c in more] == [ids[2]]


def test_per_key_limit_lets_one_task_of_each_key_run(store: Store) -> None:
    """A busy key does not hold up the keys queued behind it."""
    a1, a2, b1, a3, c1 = (
        enqueue(store, "lim", concurrency_key=key) for key in ("a", "a", "b", "a", "c")
    )
    claims = store.claim("A", ["lim"], 10, LONG_LEASE_S, policies=ONE_PER_KEY)
    assert [c.id for c in claims] == [a1, b1, c1]
    assert claim_ids(store, ONE_PER_KEY) == []
    assert store.complete(claims[0])
    assert claim_ids(store, ONE_PER_KEY) == [a2]
    assert row(store, a3).status is Status.QUEUED


def test_tasks_without_a_key_are_not_limited_per_key(store: Store) -> None:
    ids = [enqueue(store, "lim") for _ in range(3)]
    assert claim_ids(store, ONE_PER_KEY) == ids


def test_concurrency_still_counts_tasks_without_a_key(store: Store) -> None:
    policies = {"lim": HandlerPolicy(concurrency=3, concurrency_per_key=1)}
    a1, _a2, n1, n2, _n3 = (
        enqueue(store, "lim", concurrency_key=key) for key in ("a", "a", None, None, None)
    )
    assert claim_ids(store, policies) == [a1, n1, n2]
    assert claim_ids(store, policies) == []


def test_keys_are_compared_exactly(store: Store) -> None:
    """'a ' is not 'a' (MySQL's PAD SPACE collation would say it is), nor is 'A'."""
    ids = [enqueue(store, "lim", concurrency_key=key) for key in ("a", "a ", "A", "a")]
    assert claim_ids(store, ONE_PER_KEY) == ids[:3]


def test_types_without_limits_claim_as_before_in_the_same_claim(store: Store) -> None:
    """One claim of both kinds: the limited type within its limit, the other type in full,
    all in claim order (priority, then id)."""
    lim = [enqueue(store, "lim", priority=1) for _ in range(3)]
    free = [enqueue(store, "free", priority=2) for _ in range(3)]
    urgent = enqueue(store, "free", priority=0)
    policies = {"lim": HandlerPolicy(concurrency=1)}
    got = claim_ids(store, policies, types=("lim", "free"), limit=10)
    assert got == [urgent, lim[0], *free]


def test_the_batch_limit_still_applies_across_limited_and_other_types(store: Store) -> None:
    lim = [enqueue(store, "lim") for _ in range(3)]
    free = [enqueue(store, "free") for _ in range(3)]
    got = claim_ids(store, TWO_AT_ONCE, types=("lim", "free"), limit=3)
    assert got == [*lim[:2], free[0]]


def test_a_policy_without_limits_claims_as_if_none_were_given(store: Store) -> None:
    ids = [enqueue(store, "lim") for _ in range(3)]
    assert claim_ids(store, {"lim": HandlerPolicy(max_attempts=5)}) == ids


def test_has_claimable_says_no_while_the_limited_type_is_full(store: Store) -> None:
    """A supervisor whose limited type is full idles on this read instead of claiming."""
    [enqueue(store, "lim") for _ in range(3)]
    claims = store.claim("A", ["lim"], 10, LONG_LEASE_S, policies=TWO_AT_ONCE)
    assert store.has_claimable(["lim"]) is True  # without policies: there is queued work
    assert store.has_claimable(["lim"], policies=TWO_AT_ONCE) is False
    store.complete(claims[0])
    assert store.has_claimable(["lim"], policies=TWO_AT_ONCE) is True


def test_has_claimable_looks_past_full_keys(store: Store) -> None:
    enqueue(store, "lim", concurrency_key="a")
    enqueue(store, "lim", concurrency_key="a")
    claim_ids(store, ONE_PER_KEY)
    assert store.has_claimable(["lim"], policies=ONE_PER_KEY) is False
    enqueue(store, "lim", concurrency_key="b")
    assert store.has_claimable(["lim"], policies=ONE_PER_KEY) is True


def test_has_claimable_still_sees_other_types_beside_a_full_one(store: Store) -> None:
    enqueue(store, "lim")
    claim_ids(store, {"lim": HandlerPolicy(concurrency=1)})
    enqueue(store, "lim")
    assert (
        store.has_claimable(["lim", "free"], policies={"lim": HandlerPolicy(concurrency=1)})
        is False
    )
    enqueue(store, "free")
    assert (
        store.has_claimable(["lim", "free"], policies={"lim": HandlerPolicy(concurrency=1)}) is True
    )


def test_a_key_longer_than_the_column_is_refused_and_nothing_is_written(store: Store) -> None:
    """Producers validate first; a store handed a bad key anyway refuses as the column does."""
    with pytest.raises(StoreError):
        store.enqueue_many([NewTask(type="lim"), NewTask(type="lim", concurrency_key="k" * 256)])
    assert store.counts() == []
