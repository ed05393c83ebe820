"""The row keeps the last attempt's figures (cpu_s, peak_rss_bytes, wall_s): every backend.

Every outcome write stores them (NULL for a figure not measured, so an
earlier attempt's never shows as this one's); a refund leaves them alone (the
attempt is undone); a batch of completions gives each row its own figures.
"""

from __future__ import annotations

import pytest

from supervisor.lifecycle import Failure, Status
from supervisor.store import Store
from supervisor.usage import MAX_RSS_BYTES, Usage
from tests.store.test_contract import LONG_LEASE_S, claim_one, enqueue, row, take_over

FIRST = Usage(cpu_s=1.25, peak_rss_bytes=300 * 1024 * 1024, wall_s=1.5)
SECOND = Usage(cpu_s=0.004, peak_rss_bytes=12 * 1024 * 1024, wall_s=0.0125)


def figures(store: Store, task_id: int) -> Usage:
    task = row(store, task_id)
    return Usage(cpu_s=task.cpu_s, peak_rss_bytes=task.peak_rss_bytes, wall_s=task.wall_s)


def test_a_new_task_has_no_figures(store: Store) -> None:
    assert figures(store, enqueue(store)) == Usage()


def test_complete_stores_the_attempts_figures(store: Store) -> None:
    enqueue(store)
    claim = claim_one(store)
    assert store.complete(claim, FIRST)
    assert figures(store, claim.id) == FIRST


def test_fail_stores_the_attempts_figures(store: Store) -> None:
    enqueue(store)
    claim = claim_one(store)
    assert store.fail(claim, Failure.TIMEOUT, "timed out", FIRST)
    assert row(store, claim.id).status is Status.FAILED
    assert figures(store, claim.id) == FIRST


def test_requeue_stores_the_attempts_figures_and_the_next_attempt_replaces_them(
    store: Store,
) -> None:
    enqueue(store)
    first = claim_one(store)
    assert store.requeue(first, 0.0, "boom", FIRST)
    assert figures(store, first.id) == FIRST
    second = claim_one(store)
    assert second.id == first.id and second.attempt == 2
    assert store.complete(second, SECOND)
    assert figures(store, first.id) == SECOND


def test_a_figure_not_measured_is_null_not_the_earlier_attempts(store: Store) -> None:
    enqueue(store)
    first = claim_one(store)
    assert store.requeue(first, 0.0, "boom", FIRST)
    second = claim_one(store)
    assert store.fail(second, Failure.PANIC, "died", Usage(wall_s=0.5))
    assert figures(store, first.id) == Usage(wall_s=0.5)


def test_an_outcome_written_without_usage_clears_the_figures(store: Store) -> None:
    enqueue(store)
    first = claim_one(store)
    assert store.requeue(first, 0.0, "boom", FIRST)
    assert store.complete(claim_one(store))
    assert figures(store, first.id) == Usage()


def test_a_refund_keeps_the_last_counted_attempts_figures(store: Store) -> None:
    enqueue(store)
    first = claim_one(store)
    assert store.requeue(first, 0.0, "boom", FIRST)
    assert store.refund(claim_one(store))
    assert figures(store, first.id) == FIRST


def test_complete_many_gives_each_row_its_own_figures(store: Store) -> None:
    for _ in range(3):
        enqueue(store)
    claims = store.claim("A", ["t"], 10, LONG_LEASE_S)
    enqueue(store)
    claims.append(claim_one(store, "B"))  # several owners in one batch
    usages = [FIRST, SECOND, None, Usage(cpu_s=7.0, wall_s=9.0)]
    assert store.complete_many(claims, usages) == {c.id for c in claims}
    for claim, usage in zip(claims, usages, strict=True):
        assert figures(store, claim.id) == (usage or Usage())


def test_complete_many_without_usages_stores_no_figures(store: Store) -> None:
    enqueue(store)
    first = claim_one(store)
    assert store.requeue(first, 0.0, "boom", FIRST)
    assert store.complete_many([claim_one(store)]) == {first.id}
    assert figures(store, first.id) == Usage()


def test_complete_many_writes_no_figures_into_a_row_it_lost(store: Store) -> None:
    """A stale attempt's figures never reach the row its new owner holds."""
    takeover = take_over(store, "B")
    enqueue(store)
    held = claim_one(store)
    won = store.complete_many([held, takeover.stale], [SECOND, FIRST])
    assert won == {held.id}
    assert figures(store, held.id) == SECOND
    assert figures(store, takeover.current.id) == Usage()


def test_complete_and_claim_stores_the_completions_figures(store: Store) -> None:
    for _ in range(3):
        enqueue(store)
    claims = store.claim("A", ["t"], 2, LONG_LEASE_S)
    won, more = store.complete_and_claim(
        claims, "A", ["t"], 1, LONG_LEASE_S, usages=[FIRST, SECOND]
    )
    assert won == {c.id for c in claims} and len(more) == 1
    assert [figures(store, c.id) for c in claims] == [FIRST, SECOND]


def test_the_largest_figures_fit(store: Store) -> None:
    """The largest peak a child may report (see supervisor.usage.valid_bytes) is stored as is."""
    enqueue(store)
    claim = claim_one(store)
    huge = Usage(cpu_s=1e12, peak_rss_bytes=MAX_RSS_BYTES, wall_s=1e9)
    assert store.fail(claim, Failure.ERROR, "boom", huge)
    found = figures(store, claim.id)
    assert found.peak_rss_bytes == MAX_RSS_BYTES
    assert found.cpu_s == pytest.approx(1e12) and found.wall_s == pytest.approx(1e9)
