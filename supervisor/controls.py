"""What operators changed on the rows a supervisor runs, read once per poll interval.

The heartbeat renews leases every third of a lease (10 s at the default 30 s
lease), and until now that was when a cancel reached the supervisor running
the task. An operator who cancels a runaway task, or asks for its stack, should
not wait that long. So while a supervisor runs anything, its database link
reads the control state of its running rows by primary key (one indexed read,
``Store.task_controls``) at most once per poll interval, and nothing when idle:
the poll interval is already the promise made for pauses and new work.

This module holds the decisions on what was read, apart from the link's thread:

* :func:`judge`: which claims are no longer ours (cancelled by an operator, or
  rescued elsewhere) and which have a pending stack request;
* :class:`StackAsks`: which of those requests to pass to the loop now. A request
  stays in the row until the answer is written, so every read sees it again; it
  is passed on once, and again only if it is still pending a while later (the
  claim was still waiting for a child, the answer's write failed, or the
  attempt ended before the stack was read).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

import attrs

from supervisor.lifecycle import Status
from supervisor.records import Claim
from supervisor.store import TaskControl

STACK_REASK_S = 1.0  # a request still pending this long after it was passed on goes again


@attrs.frozen(kw_only=True)
class Verdict:
    """What one read of the controls says about this supervisor's claims."""

    lost: frozenset[int] = frozenset()  # not ours any more: rescued, or gone
    cancelled: frozenset[int] = frozenset()  # not ours any more: an operator cancelled it
    stacks: Mapping[int, datetime] = attrs.field(factory=dict)  # id -> stack_requested_at


def judge(owner: str, claims: Iterable[Claim], controls: Iterable[TaskControl]) -> Verdict:
    """Compare each claim with its row as read.

    A row is still ours while it is ``running`` under our name and the claim's
    attempt. A cancel keeps ``claimed_by`` and ``attempts``, which is how a
    cancel of *our* attempt is told from a rescue (a missing row counts as lost:
    only finished rows are pruned).
    """
    found = {c.id: c for c in controls}
    lost: set[int] = set()
    cancelled: set[int] = set()
    stacks: dict[int, datetime] = {}
    for claim in claims:
        row = found.get(claim.id)
        mine = row is not None and row.claimed_by == owner and row.attempts == claim.attempt
        if row is not None and mine and row.status == Status.RUNNING:
            if row.stack_requested_at is not None:
                stacks[claim.id] = row.stack_requested_at
        elif row is not None and mine and row.status == Status.CANCELLED:
            cancelled.add(claim.id)
        else:
            lost.add(claim.id)
    return Verdict(lost=frozenset(lost), cancelled=frozenset(cancelled), stacks=stacks)


class StackAsks:
    """Which pending stack requests to pass to the loop: new ones, and ones left unanswered."""

    def __init__(self) -> None:
        self._asked: dict[int, tuple[datetime, float]] = {}

    def due(self, pending: Mapping[int, datetime], now: float) -> frozenset[int]:
        """The ids to ask the loop for now, among ``pending`` (id -> request time)."""
        due = set()
        for task_id, requested_at in pending.items():
            asked = self._asked.get(task_id)
            if asked is None or asked[0] != requested_at or now >= asked[1] + STACK_REASK_S:
                self._asked[task_id] = (requested_at, now)
                due.add(task_id)
        for task_id in set(self._asked) - set(pending):
            del self._asked[task_id]  # answered, or no longer ours
        return frozenset(due)
