"""Recurring schedules: a handler's ``SCHEDULE`` (5-field cron, UTC) fired with no leader.

Every supervisor that has the handler takes part. A slot fires in one short
transaction that locks the type's ``task_types`` row and moves its
``schedule_last_slot`` forward (a compare-and-set), then enqueues the task
with the unique key ``schedule:<slot time>``. Whoever moves the mark fires the
slot; everyone else finds it moved. So exactly one task exists per slot
across the fleet, with no leader, no extra process, and nothing to elect.

Missed slots (every supervisor was down) do not pile up: the mark jumps to
the most recent slot, which alone is enqueued. A schedule seen for the first
time records its most recent slot without firing it, so a new daily job does
not run the moment it is deployed. Cron is read with ``croniter``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from croniter import croniter

CRON_FIELDS = 5
KEY_PREFIX = "schedule:"


class ScheduleError(ValueError):
    """A ``SCHEDULE`` that is not standard 5-field cron."""


@attrs.frozen(kw_only=True)
class Schedule:
    """One handler's schedule: its type, the cron expression, and each firing's options."""

    type: str
    cron: str
    options: str | None = None


def validate_cron(expression: object) -> str:
    """Standard 5-field cron (minute hour day month weekday), or :class:`ScheduleError`.

    croniter also takes a sixth (seconds) field; it is refused here, so the
    documented contract (5 fields, minute resolution) is what runs.
    """
    if not isinstance(expression, str):
        raise ScheduleError(f"SCHEDULE must be a cron string like '*/5 * * * *': {expression!r}")
    if len(expression.split()) != CRON_FIELDS or not _croniter().is_valid(expression):
        raise ScheduleError(
            f"SCHEDULE must be standard 5-field cron (minute hour day month weekday), "
            f"got {expression!r}"
        )
    return expression


def latest_slot(cron: str, now: datetime) -> datetime:
    """The most recent slot at or before ``now`` (naive UTC)."""
    moment = now + timedelta(microseconds=1)  # get_prev is strictly before its start
    return _croniter()(cron, moment).get_prev(datetime)


def next_slot(cron: str, now: datetime) -> datetime:
    """The first slot after ``now`` (naive UTC)."""
    return _croniter()(cron, now).get_next(datetime)


def _croniter() -> type[croniter]:
    """croniter, imported when a schedule is read: it pulls in dateutil, which pulls in
    ``subprocess`` and ``signal``, and the store (a producer's library) must stay free of them."""
    from croniter import croniter

    return croniter


def slot_key(slot: datetime) -> str:
    """``schedule:2026-11-30T14:35:00Z``: the unique key of the task that fires ``slot``."""
    return KEY_PREFIX + slot.strftime("%Y-%m-%dT%H:%M:%SZ")
