"""Records that cross the line between the database link and the rest of the parent.

They live apart from :mod:`supervisor.store` so that the parent's rooms can
hold a claim without importing the store: only the database link does.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from supervisor.policy import HandlerPolicy


@attrs.frozen(kw_only=True)
class Claim:
    """One attempt this supervisor owns: the fence (id, owner, attempt) plus what the child needs.

    ``remaining_s`` is the budget left as measured by the database clock when
    the claim was made, so hosts with skewed clocks agree on deadlines.

    ``max_attempts`` and ``timeout_s`` are the effective values (the row's
    own, else the handler's policy, else 3 attempts and no per-attempt limit),
    as the claim wrote them into the row.

    ``defect`` says why the row cannot run at all (options over the limit or
    unreadable, a type no handler can have, attempts used up, a broken
    deadline): the parent fails such a claim at once, alone, with this text
    as ``last_error``, and never hands it to a child.
    """

    id: int
    type: str
    options: str | None = attrs.field(repr=False)
    attempt: int
    max_attempts: int
    owner: str
    remaining_s: float
    timeout_s: float | None = None
    defect: str | None = None


@attrs.frozen(kw_only=True)
class SupervisorInfo:
    """A supervisor's entry in the registry, so ``claimed_by`` can be traced to a process."""

    id: str
    host: str
    pid: int
    workers: int
    version: str
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    alive: bool = True


@attrs.frozen(kw_only=True)
class Overwritten:
    """A declaration replaced another live supervisor's different policy for the same type.

    Two supervisors with different handler files for one type make the
    fleet-wide limits depend on who declared last: worth a warning.
    """

    type: str
    declared_by: str
    before: HandlerPolicy
