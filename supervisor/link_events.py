"""What the database link tells the loop: frozen records, read by the loop from its selector.

They are the link's whole vocabulary toward the rest of the parent, kept
apart from the link so that the rooms that act on them (attempts,
telemetry) need not import the thread that makes them.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from supervisor.records import Claim, Overwritten
from supervisor.results import PendingResult


@attrs.frozen(kw_only=True)
class Claimed:
    """New claims. ``claimed_at`` (loop clock) was read before the round trip, which eats budget."""

    claims: tuple[Claim, ...]
    claimed_at: float
    seconds: float
    generation: int


@attrs.frozen(kw_only=True)
class Declared:
    """The handlers' policies were written to ``task_types``; ``overwritten`` names the
    different declarations of other live supervisors they replaced (worth a warning)."""

    overwritten: tuple[Overwritten, ...]


@attrs.frozen(kw_only=True)
class Recorded:
    """A result was written; ``won`` is False when its fence lost (the claim was not ours).

    ``cancelled``: the fence lost to an operator's cancel, not to a rescue.
    """

    result: PendingResult
    won: bool
    cancelled: bool = False


@attrs.frozen(kw_only=True)
class LeasesLost:
    """Claims the heartbeat could not renew: rescued elsewhere, or ``cancelled`` by an operator."""

    ids: frozenset[int]
    cancelled: frozenset[int] = frozenset()


@attrs.frozen(kw_only=True)
class StacksWanted:
    """Operators asked for the stacks of these running tasks (``supervisor stack ID``)."""

    ids: frozenset[int]


@attrs.frozen(kw_only=True)
class Swept:
    """What housekeeping did: expired queued tasks and lost leases by type, requeued rescues."""

    expired: dict[str, int]
    lost: dict[str, int]
    requeued: int


@attrs.frozen(kw_only=True)
class DepthSampled:
    """Live tasks by ``(type, status, count)``."""

    counts: tuple[tuple[str, str, int], ...]


@attrs.frozen(kw_only=True)
class PausedChanged:
    """The types operators have paused now, fleet-wide (ours or not): claims skip ours."""

    paused: frozenset[str]


@attrs.frozen(kw_only=True)
class ScheduleFired:
    """This supervisor fired a schedule's slot (UTC): task ``task_id`` was enqueued for it."""

    type: str
    slot: datetime
    task_id: int


@attrs.frozen(kw_only=True)
class DbFailed:
    error: str
    retry_in_s: float
    held: int


@attrs.frozen(kw_only=True)
class DbBack:
    after_failures: int


@attrs.frozen(kw_only=True)
class NotRecorded:
    """At exit, a result the database did not take; its task will be rescued by lease."""

    result: PendingResult


@attrs.frozen(kw_only=True)
class RanDry:
    """A claim found nothing runnable, after the first ``submitted`` results were written.

    Posted only when asked for (burst mode): an idle supervisor must not wake
    its loop at every poll.
    """

    submitted: int


LinkEvent = (
    Claimed
    | Declared
    | Recorded
    | LeasesLost
    | StacksWanted
    | Swept
    | DepthSampled
    | PausedChanged
    | ScheduleFired
    | DbFailed
    | DbBack
    | NotRecorded
    | RanDry
)
