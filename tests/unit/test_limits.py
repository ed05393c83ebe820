"""The admission rule of concurrency limits (supervisor.store.limits), without a database."""

from __future__ import annotations

import pytest

from supervisor.policy import HandlerPolicy
from supervisor.store.limits import (
    Candidate,
    Running,
    admit,
    decode_key,
    fetch_limit,
    full_keys,
    limited_types,
    policy_of,
    room,
)

CAP_2 = HandlerPolicy(concurrency=2)
ONE_PER_KEY = HandlerPolicy(concurrency_per_key=1)


def candidates(*keys: str | None) -> list[Candidate]:
    return [Candidate(id=n, priority=0, key=key) for n, key in enumerate(keys, start=1)]


def ids(admitted: list[Candidate]) -> list[int]:
    return [c.id for c in admitted]


def test_running_counts_add_up_and_keep_only_real_keys() -> None:
    running = Running.from_counts([("a", 2), (None, 3), ("b", 1), ("a", 1)])
    assert running.total == 7
    assert running.by_key == {"a": 3, "b": 1}


def test_only_types_with_a_limit_are_limited_and_they_come_sorted() -> None:
    policies = {"z": CAP_2, "a": ONE_PER_KEY, "m": HandlerPolicy(max_attempts=2)}
    assert limited_types(["z", "m", "a", "x", "z"], policies) == ["a", "z"]
    assert limited_types(["z"], None) == []
    assert policy_of(None, "z") == HandlerPolicy()


@pytest.mark.parametrize(
    ("policy", "running", "want", "expected"),
    [
        (HandlerPolicy(), 5, 4, 4),  # no CONCURRENCY: only the batch limits
        (CAP_2, 0, 4, 2),
        (CAP_2, 1, 4, 1),
        (CAP_2, 2, 4, 0),
        (CAP_2, 3, 4, 0),  # over the limit (a supervisor without it claimed): no room, not less
        (CAP_2, 0, 1, 1),
    ],
)
def test_room_is_the_limit_less_what_runs_at_most_the_batch(
    policy: HandlerPolicy, running: int, want: int, expected: int
) -> None:
    assert room(policy, Running(total=running), want) == expected


def test_a_key_is_full_at_its_limit_and_keyless_tasks_never_are() -> None:
    running = Running.from_counts([("a", 1), ("b", 0), (None, 9)])
    assert full_keys(ONE_PER_KEY, running) == ["a"]
    assert full_keys(CAP_2, running) == []


def test_admit_takes_candidates_in_order_up_to_the_room() -> None:
    assert ids(admit(candidates("a", "b", "c"), CAP_2, Running(total=1), 10)) == [1]


def test_admit_passes_over_full_keys_and_counts_what_it_takes() -> None:
    running = Running.from_counts([("a", 1)])
    admitted = admit(candidates("a", "b", "b", None, "c", None), ONE_PER_KEY, running, 10)
    assert ids(admitted) == [2, 4, 5, 6]


def test_admit_keeps_both_limits_at_once() -> None:
    both = HandlerPolicy(concurrency=2, concurrency_per_key=1)
    assert ids(admit(candidates("a", "a", "b", "c"), both, Running(), 10)) == [1, 3]


def test_keys_read_back_as_bytes_become_exact_text() -> None:
    assert decode_key(None) is None
    assert decode_key("a") == "a"
    assert decode_key("é".encode()) == "é"
    odd = decode_key(b"\xff")
    assert odd is not None and odd.encode("utf-8", "surrogateescape") == b"\xff"


def test_fetch_limit_reads_more_than_the_room_only_when_keys_may_turn_some_away() -> None:
    assert fetch_limit(CAP_2, Running(), 8) == 2
    assert fetch_limit(CAP_2, Running(total=2), 8) == 0
    assert fetch_limit(HandlerPolicy(concurrency=2, concurrency_per_key=1), Running(), 8) == 8
    assert fetch_limit(ONE_PER_KEY, Running(), 8) == 8
