"""Bulk ``retry`` and ``cancel``: the tasks a filter selects, in bounded batches.

A filter (``--type``, ``--failure``, ``--status``, ``--since``/``--until``,
``--error-match``) selects tasks as :class:`~supervisor.store.TaskFilter`
states. The command walks them newest first, one page of ``--batch`` ids at a
time, and changes each page in one short transaction: a million-row retry is a
thousand small transactions, never one that holds a million row locks (and
stalls every claim) for minutes. A task whose status changed between the read
and the write is simply not matched by the write. Tasks with a unique key are
retried one by one, so a refusal (another live task holds the key) is counted
rather than failing the batch.

``--dry-run`` writes nothing: it prints how many tasks match and the first ids.
The operator's web page shows, for the filter being viewed, the command line
that :func:`command_line` builds; :func:`filter_from_args` parses it back to the
same filter.
"""

from __future__ import annotations

import argparse
import re
import shlex
from datetime import UTC, datetime, timedelta
from typing import TextIO

import attrs

from supervisor.errors import UsageError
from supervisor.lifecycle import Failure, Status
from supervisor.store import Store, TaskFilter

# The statuses each command can change; a filter's --status must be among them.
ALLOWED = {
    "retry": frozenset({Status.FAILED, Status.CANCELLED}),
    "cancel": frozenset({Status.QUEUED, Status.RUNNING}),
}
DEFAULT_BATCH = 1000
MAX_BATCH = 10_000  # a batch is one transaction; more than this holds its locks too long
DRY_RUN_IDS = 10
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def add_filter_flags(command: argparse.ArgumentParser, name: str) -> None:
    """The filter flags of ``retry``/``cancel`` (ids stay positional: both forms in one)."""
    allowed = ", ".join(sorted(s.value for s in ALLOWED[name]))
    group = command.add_argument_group("bulk filters (instead of ids)")
    group.add_argument("--type", help="task type, exactly")
    group.add_argument(
        "--failure", choices=[f.value for f in Failure], help="failure kind (retry only)"
    )
    group.add_argument(
        "--status",
        action="append",
        choices=sorted(s.value for s in ALLOWED[name]),
        help=f"status (repeatable; default: {allowed})",
    )
    group.add_argument(
        "--since",
        help="finished (a live task: created) at or after this UTC time "
        "(2026-01-31T14:00:00) or this long ago (90s, 30m, 2h, 7d)",
    )
    group.add_argument("--until", help="finished (or created) before this; same forms")
    group.add_argument("--error-match", help="last_error contains this text (case-sensitive)")
    group.add_argument(
        "--dry-run", action="store_true", help="change nothing: print the count and first ids"
    )
    group.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"tasks per transaction, 1..{MAX_BATCH} (default %(default)s)",
    )


def wants_bulk(args: argparse.Namespace) -> bool:
    return any(
        getattr(args, flag) is not None
        for flag in ("type", "failure", "status", "since", "until", "error_match")
    )


def filter_from_args(args: argparse.Namespace, command: str, now: datetime) -> TaskFilter:
    """The filter the flags describe; relative times count back from ``now`` (database UTC)."""
    if args.failure is not None and command == "cancel":
        raise UsageError("--failure selects failed tasks, which cannot be cancelled")
    statuses = frozenset(Status(s) for s in args.status or ()) or ALLOWED[command]
    if args.failure is not None:
        statuses = frozenset({Status.FAILED})
    return TaskFilter(
        type=args.type,
        statuses=statuses,
        failure=Failure(args.failure) if args.failure else None,
        since=moment(args.since, "--since", now),
        until=moment(args.until, "--until", now),
        error_match=args.error_match or None,
    )


def moment(text: str | None, flag: str, now: datetime) -> datetime | None:
    """A UTC time (naive, as the database clock) from ISO text or a span back from ``now``."""
    if text is None:
        return None
    relative = _RELATIVE.match(text.strip())
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * _UNIT_S[relative.group(2)])
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{flag} must be a UTC time like 2026-01-31T14:00:00 or a span like 30m, got {text!r}"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def command_line(command: str, where: TaskFilter) -> str:
    """The shell command that selects ``where``: what the web page shows for its filter.

    Every value is shell-quoted (a type name is whatever a producer wrote).
    Statuses the command would select anyway are left out.
    """
    words = ["python", "-m", "supervisor", command]
    if where.type is not None:
        words += ["--type", where.type]
    if where.failure is not None:
        words += ["--failure", where.failure.value]
    elif where.statuses and where.statuses != ALLOWED[command]:
        for status in sorted(s.value for s in where.statuses):
            words += ["--status", status]
    if where.since is not None:
        words += ["--since", where.since.strftime(TIME_FORMAT)]
    if where.until is not None:
        words += ["--until", where.until.strftime(TIME_FORMAT)]
    if where.error_match is not None:
        words += ["--error-match", where.error_match]
    return " ".join(shlex.quote(word) for word in [*words, "--dry-run"])


def applicable(command: str, where: TaskFilter) -> bool:
    """Whether ``command`` can act on anything ``where`` selects (the page offers only those)."""
    statuses = where.statuses or ALLOWED[command]
    if command == "cancel" and where.failure is not None:
        return False
    return bool(statuses & ALLOWED[command])


def run_bulk(
    store: Store, command: str, where: TaskFilter, *, dry_run: bool, batch: int, out: TextIO
) -> int:
    """Apply ``command`` to every task ``where`` selects, ``batch`` at a time; exit status 0."""
    if not 1 <= batch <= MAX_BATCH:
        raise UsageError(f"--batch must be between 1 and {MAX_BATCH}, got {batch}")
    where = attrs.evolve(where, statuses=(where.statuses or ALLOWED[command]) & ALLOWED[command])
    if dry_run:
        count = store.count_tasks(where)
        first = [t.id for t in store.find_tasks(where, limit=DRY_RUN_IDS)]
        more = ", ..." if count > len(first) else ""
        shown = ", ".join(str(i) for i in first)
        print(
            f"would {command} {count} tasks (dry run){': ' + shown + more if first else ''}",
            file=out,
        )
        return 0
    changed, blocked = 0, 0
    before: int | None = None
    while True:
        page = store.find_tasks(where, before_id=before, limit=batch)
        if not page:
            break
        plain = [t.id for t in page if t.unique_key is None]
        with_key = [t.id for t in page if t.unique_key is not None]
        changed_now, blocked_now = _apply(store, command, plain, with_key)
        changed, blocked = changed + changed_now, blocked + blocked_now
        before = page[-1].id
        if len(page) < batch:
            break
    verb = "cancelled" if command == "cancel" else "retried"
    note = f"; {blocked} not retried: another live task holds their unique key" if blocked else ""
    print(f"{verb} {changed} tasks{note}", file=out)
    return 0


def _apply(store: Store, command: str, plain: list[int], with_key: list[int]) -> tuple[int, int]:
    """One page: a batch statement, and one retry per task with a unique key (a cancel
    never conflicts with a key, so it takes them all in its batch)."""
    if command == "cancel":
        return store.cancel_many(plain + with_key), 0
    changed, blocked = store.retry_many(plain), 0
    for task_id in with_key:
        result = store.retry(task_id)
        changed += result.applied
        blocked += result.blocked_by is not None
    return changed, blocked
