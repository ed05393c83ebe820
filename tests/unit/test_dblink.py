"""The database link turned by hand on a MemoryStore: leases, late results, re-claims."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pytest

from supervisor import dblink
from supervisor.dblink import DatabaseLink
from supervisor.dsn import parse_dsn
from supervisor.errors import StartupError, StoreError, StoreMisconfigured, StoreUnavailable
from supervisor.lifecycle import Status
from supervisor.link_events import Claimed, LeasesLost, LinkEvent, Recorded
from supervisor.policy import DEFAULT_POLICY
from supervisor.records import Claim, SupervisorInfo
from supervisor.results import completion
from supervisor.store import ManualClock, MemoryStore, NewTask

START = datetime(2030, 6, 1, 12, 0, 0)
LEASE_S = 3.0


class Clocks:
    """The link's monotonic clock and the database clock, moved together."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.db = ManualClock(START)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.db.advance(seconds)


def make_link(store: MemoryStore, clocks: Clocks, owner: str = "A") -> DatabaseLink:
    link = DatabaseLink(
        store,
        owner=owner,
        info=lambda: SupervisorInfo(id=owner, host="h", pid=1, workers=1, version="t"),
        lease_s=LEASE_S,
        poll_interval_s=0.1,
        clock=clocks,
    )
    link.set_types({"t": DEFAULT_POLICY})
    return link


def claimed(events: list[LinkEvent]) -> list[Claim]:
    return [c for e in events if isinstance(e, Claimed) for c in e.claims]


def test_a_late_result_of_a_lost_attempt_does_not_drop_the_lease_of_its_reclaim() -> None:
    """Stopped past the lease, the task is rescued and re-claimed here as attempt 2.

    The child that ran attempt 1 reports only afterwards; its completion loses
    its fence, and must not take attempt 2's lease with it: attempt 2 is still
    running here and must be renewed, or it is rescued and runs twice.
    """
    clocks = Clocks()
    store = MemoryStore(clock=clocks.db)
    task_id = store.enqueue(NewTask(type="t"))
    link = make_link(store, clocks)
    link.want(1, seen=0)
    link.turn()
    events = link.take_events()
    [first] = claimed(events)
    assert first.attempt == 1

    clocks.advance(LEASE_S + 1)  # SIGSTOP past the lease: rescued elsewhere, queued again
    assert store.rescue_expired(10).requeued == 1
    link.want(1, seen=1)
    link.turn()
    events = link.take_events()
    assert LeasesLost(ids=frozenset({task_id})) in events
    [second] = claimed(events)
    assert (second.id, second.attempt) == (task_id, 2)

    link.submit(completion(first, 0.1))  # attempt 1's child reported late
    link.want(0, seen=2)
    link.turn()
    assert [e.won for e in link.take_events() if isinstance(e, Recorded)] == [False]

    for _ in range(6):  # two leases' worth of heartbeats
        clocks.advance(LEASE_S / 3)
        link.turn()
        assert not any(isinstance(e, LeasesLost) for e in link.take_events())
    row = store.get(task_id)
    assert row is not None and row.status is Status.RUNNING and row.attempts == 2
    assert store.rescue_expired(10).requeued == 0
    assert store.complete(second)


def test_claiming_a_task_whose_older_attempt_is_still_held_reports_that_attempt_lost() -> None:
    """A re-claim is proof the older claim is gone, even before a heartbeat said so."""
    clocks = Clocks()
    store = MemoryStore(clock=clocks.db)
    task_id = store.enqueue(NewTask(type="t"))
    link = make_link(store, clocks)
    link.want(1, seen=0)
    link.turn()
    claimed(link.take_events())

    # The link stalls in mid-turn past its lease (after its heartbeat, before its claim).
    clocks.advance(LEASE_S + 1)
    assert store.rescue_expired(10).requeued == 1
    link._next_heartbeat = clocks.now + 1  # the heartbeat of this turn was already done
    link.want(1, seen=1)
    link.turn()
    events = link.take_events()
    lost = [i for i, e in enumerate(events) if isinstance(e, LeasesLost) and task_id in e.ids]
    got = [i for i, e in enumerate(events) if isinstance(e, Claimed)]
    assert lost and got and lost[0] < got[0], events


def test_a_claim_the_loop_never_saw_is_refunded_when_the_link_closes() -> None:
    """A claim in flight when the drain ended reaches the loop only after its last turn.

    The loop can no longer hand the link a refund for it, so the link puts it
    back itself: otherwise the task would wait out its lease as ``running``
    and lose an attempt it never used.
    """
    clocks = Clocks()
    store = MemoryStore(clock=clocks.db)
    task_id = store.enqueue(NewTask(type="t"))
    done_id = store.enqueue(NewTask(type="t"))
    link = make_link(store, clocks)
    link.want(1, seen=0)
    link.turn()
    [ran] = claimed(link.take_events())
    assert ran.id == task_id
    link.want(1, seen=1)
    link.turn()  # the claim in flight when TERM came; its event is never applied
    link.submit(completion(ran, 0.1))
    assert link.close(timeout_s=1.0)
    done = store.get(task_id)
    assert done is not None and done.status is Status.COMPLETED
    back = store.get(done_id)
    assert back is not None and (back.status, back.attempts) == (Status.QUEUED, 0)


class CancelReadFails(MemoryStore):
    """A store whose only broken query is the one naming cancelled claims."""

    def cancelled_claims(self, owner: str, claims: Sequence[Claim]) -> set[int]:
        raise StoreError("connection lost while reading cancelled claims")


def test_a_failed_read_of_cancelled_claims_never_keeps_a_claim_or_result_unreported() -> None:
    """Whether a lost claim was cancelled only names its outcome: failing to know says lost."""
    clocks = Clocks()
    store = CancelReadFails(clock=clocks.db)
    first_id = store.enqueue(NewTask(type="t"))
    link = make_link(store, clocks)
    link.want(1, seen=0)
    link.turn()
    [first] = claimed(link.take_events())
    assert store.cancel(first_id).applied
    second_id = store.enqueue(NewTask(type="t"))

    link.submit(completion(first, 0.1))  # loses its fence to the cancel, written with a claim
    link.want(1, seen=1)
    link.turn()
    events = link.take_events()

    assert [(e.won, e.cancelled) for e in events if isinstance(e, Recorded)] == [(False, False)]
    assert [c.id for c in claimed(events)] == [second_id]


def test_the_start_up_check_retries_an_unreachable_database_then_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connection refused is retried for the start-up timeout; then one clear StartupError."""
    now = [0.0]
    pings: list[float] = []

    class Refusing:
        def migrate(self) -> None:
            pings.append(now[0])
            raise StoreUnavailable("MySQL at mysql://x is unavailable: (2003) refused")

        def close(self) -> None:
            pass

    monkeypatch.setattr(dblink, "open_store", lambda dsn: Refusing())

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(StartupError, match="start-up timeout of 10 s"):
        dblink.check_database(parse_dsn("sqlite:///x.db"), 10.0, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 10.0 and len(pings) > 3


def test_the_start_up_check_fails_at_once_on_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Denying:
        def migrate(self) -> None:
            raise StoreMisconfigured("MySQL at mysql://x refused us: (1045) Access denied")

        def close(self) -> None:
            pass

    monkeypatch.setattr(dblink, "open_store", lambda dsn: Denying())
    with pytest.raises(StartupError, match="1045"):
        dblink.check_database(parse_dsn("sqlite:///x.db"), 60.0, sleep=pytest.fail)
