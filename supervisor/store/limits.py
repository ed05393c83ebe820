"""Which queued tasks of a concurrency-limited type a claim may take: one rule, every backend.

A handler may declare ``CONCURRENCY`` (most tasks of its type running at once)
and ``CONCURRENCY_PER_KEY`` (the same, per ``concurrency_key``). Both count
``running`` rows in the table, so they hold across the whole fleet, whoever
claimed the rows. Each backend serialises the count-then-claim of one limited
type (MySQL locks the type's ``task_types`` row; SQLite's ``BEGIN IMMEDIATE``
already serialises every writer; MemoryStore holds its lock), reads the running
counts, then asks :func:`admit` which candidates fit.

Tasks with a NULL key are not limited per key (they have no key to share);
``CONCURRENCY``, when set, still counts them. Keys compare exactly (as bytes on
MySQL, whose PAD SPACE collation would otherwise make ``'a '`` equal ``'a'``).
A task that does not fit simply stays ``queued``: it is never failed, and the
first claim after a slot frees takes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from supervisor.policy import HandlerPolicy, policy_of


@attrs.frozen(kw_only=True)
class Candidate:
    """A runnable queued row as the limited claim sees it, in claim order."""

    id: int
    priority: int
    key: str | None


@attrs.frozen(kw_only=True)
class Running:
    """The running rows of one type: in total, and by non-NULL key."""

    total: int = 0
    by_key: Mapping[str, int] = attrs.field(factory=dict)

    @classmethod
    def from_counts(cls, counts: Iterable[tuple[str | None, int]]) -> Running:
        """From ``(key, count)`` pairs, as a ``GROUP BY concurrency_key`` returns them."""
        by_key: dict[str, int] = {}
        total = 0
        for key, count in counts:
            total += count
            if key is not None:
                by_key[key] = by_key.get(key, 0) + count
        return cls(total=total, by_key=by_key)


def limited_types(types: Iterable[str], policies: Mapping[str, HandlerPolicy] | None) -> list[str]:
    """The types among ``types`` whose claims must count running tasks first, sorted.

    Sorted, because MySQL locks their ``task_types`` rows in this order: two
    claimers always take the locks in the same order, so they cannot deadlock.
    """
    return sorted(t for t in set(types) if policy_of(policies, t).limited)


def room(policy: HandlerPolicy, running: Running, want: int) -> int:
    """How many more tasks of the type may start now, at most ``want``."""
    if policy.concurrency is None:
        return max(0, want)
    return max(0, min(want, policy.concurrency - running.total))


def full_keys(policy: HandlerPolicy, running: Running) -> list[str]:
    """The keys that have no slot left: a claim need not even look at their tasks."""
    if policy.concurrency_per_key is None:
        return []
    limit = policy.concurrency_per_key
    return sorted(key for key, count in running.by_key.items() if count >= limit)


def admit(
    candidates: Sequence[Candidate], policy: HandlerPolicy, running: Running, want: int
) -> list[Candidate]:
    """The candidates a claim takes, in their order, keeping both limits.

    A candidate whose key is full is passed over, and the ones behind it may
    still fit: one busy key does not hold up the rest of the type.
    """
    left = room(policy, running, want)
    per_key = policy.concurrency_per_key
    taken_by_key = dict(running.by_key)
    admitted: list[Candidate] = []
    for candidate in candidates:
        if len(admitted) >= left:
            break
        if per_key is not None and candidate.key is not None:
            if taken_by_key.get(candidate.key, 0) >= per_key:
                continue
            taken_by_key[candidate.key] = taken_by_key.get(candidate.key, 0) + 1
        admitted.append(candidate)
    return admitted


def decode_key(value: object) -> str | None:
    """A key as read back (bytes, so one odd key cannot fail a claim) as exact text.

    ``surrogateescape`` keeps bytes that are not UTF-8 distinct and reversible.
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def fetch_limit(policy: HandlerPolicy, running: Running, want: int) -> int:
    """How many candidates to read: the room, unless keys may turn some of them away."""
    fits = room(policy, running, want)
    if fits == 0 or policy.concurrency_per_key is None:
        return fits
    return max(fits, want)
