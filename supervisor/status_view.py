"""What ``status`` prints: counts by type and status, and the ``--watch`` view for operators.

``--watch`` needs no metrics stack: it re-reads the counts every second and
shows, next to the live queue, how many tasks finished in the last minute
(the difference between now and the oldest snapshot kept).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from supervisor.handlers import discover
from supervisor.lifecycle import Status
from supervisor.pausing import paused_entries
from supervisor.schedules import next_slot
from supervisor.store import StatusCount, Store, TypeInfo

WINDOW_S = 60.0
UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CLEAR = "\x1b[H\x1b[2J"
# Rows whose status is outside the lifecycle (the empty status a permissive MariaDB stores).
OTHER = "other"
# Characters a terminal acts on rather than shows: C0 and C1 controls, DEL, line and paragraph
# separators and bidirectional overrides (which reorder what follows them on the line).
CONTROLS = r"\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
UNSAFE = re.compile(rf"[\x00-\x1f{CONTROLS}]")
UNSAFE_KEEPING_LINES = re.compile(rf"[\x00-\x08\x0b-\x1f{CONTROLS}]")  # keeps \t and \n


def printable(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), not acted on.

    Type names, errors and supervisor ids come from rows any producer may write;
    printed raw, an ANSI escape in one could clear the operator's screen, recolour
    it or (with a carriage return) overwrite what was printed before it.
    ``keep_lines`` keeps newlines and tabs, for multi-line values like tracebacks.
    """
    pattern = UNSAFE_KEEPING_LINES if keep_lines else UNSAFE
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def summarize(counts: list[StatusCount], handled: set[str]) -> dict[str, dict[str, Any]]:
    """Counts per type; rows with a status outside the lifecycle are counted as ``other``."""
    by_type: dict[str, dict[str, Any]] = {}
    for line in counts:
        entry = by_type.setdefault(
            line.type,
            {
                "counts": {s.value: 0 for s in Status},
                "oldest_queued_age_s": None,
                "handler_here": line.type in handled,
            },
        )
        if not isinstance(line.status, Status):
            entry["counts"][OTHER] = entry["counts"].get(OTHER, 0) + line.count
            continue
        entry["counts"][line.status.value] = line.count
        if line.status is Status.QUEUED and line.oldest_age_s is not None:
            entry["oldest_queued_age_s"] = round(line.oldest_age_s, 3)
    return by_type


def handled_types(handlers_dir: Path) -> set[str]:
    return set(discover(handlers_dir))


def fleet(store: Store) -> list[dict[str, Any]]:
    """The registry as plain data: which supervisor (``claimed_by``) is which host and pid."""
    return [
        {
            "id": info.id,
            "host": info.host,
            "pid": info.pid,
            "workers": info.workers,
            "version": info.version,
            "started_at": info.started_at.isoformat(sep=" ") if info.started_at else None,
            "heartbeat_at": info.heartbeat_at.isoformat(sep=" ") if info.heartbeat_at else None,
            "alive": info.alive,
        }
        for info in store.supervisors()
    ]


def print_fleet(entries: list[dict[str, Any]], out: TextIO) -> None:
    live = [e for e in entries if e["alive"]]
    print(f"\nsupervisors: {len(live)} alive", file=out)
    for entry in entries:
        state = "alive" if entry["alive"] else "gone (no heartbeat)"
        print(
            f"  {printable(entry['id'])}  workers={entry['workers']}  "
            f"version={printable(entry['version'])}  "
            f"started {entry['started_at']}  last heartbeat {entry['heartbeat_at']}  {state}",
            file=out,
        )


def print_status(
    store: Store, handlers_dir: Path, *, as_json: bool, out: TextIO = sys.stdout
) -> int:
    handled = handled_types(handlers_dir)
    by_type = summarize(store.counts(), handled)
    supervisors = fleet(store)
    infos = store.type_infos()
    paused = paused_entries(infos, handled)
    schedules = schedule_entries(infos, store.utc_now()) if any(i.schedule for i in infos) else []
    if as_json:
        document = {
            "types": by_type,
            "supervisors": supervisors,
            "paused": paused,
            "schedules": schedules,
        }
        print(json.dumps(document, indent=2, sort_keys=True), file=out)
        return 0
    if not by_type:
        print("no tasks", file=out)
        print_schedules(schedules, out)
        print_paused(paused, out)
        print_fleet(supervisors, out)
        return 0
    columns = [s.value for s in Status]
    if any(OTHER in entry["counts"] for entry in by_type.values()):
        columns.append(OTHER)
    names = {name: printable(name) for name in by_type}
    width = max(4, *(len(t) for t in names.values()))
    print(
        f"{'TYPE':<{width}}  " + "  ".join(f"{c:>9}" for c in columns) + "  OLDEST QUEUED", file=out
    )
    for name, entry in sorted(by_type.items()):
        age = entry["oldest_queued_age_s"]
        note = "" if entry["handler_here"] or not handled else "  (no handler in this folder)"
        cells = "  ".join(f"{entry['counts'].get(c, 0):>9}" for c in columns)
        print(f"{names[name]:<{width}}  {cells}  {format_age(age):>13}{note}", file=out)
    print_schedules(schedules, out)
    print_paused(paused, out)
    print_fleet(supervisors, out)
    return 0


def schedule_entries(infos: list[TypeInfo], utc_now: datetime) -> list[dict[str, Any]]:
    """Each recorded schedule with its next firing after ``utc_now`` (the database's clock).

    A schedule that is no longer valid cron (an older release wrote it) is
    listed with no next firing rather than failing the whole ``status``.
    """
    entries = []
    for info in infos:
        if not info.schedule:
            continue
        try:
            upcoming: str | None = next_slot(info.schedule, utc_now).strftime(UTC_FORMAT)
        except (ValueError, KeyError):
            upcoming = None
        last = info.schedule_last_slot
        entries.append(
            {
                "type": info.type,
                "schedule": info.schedule,
                "next_slot": upcoming,
                "last_slot": last.strftime(UTC_FORMAT) if last else None,
            }
        )
    return entries


def print_schedules(entries: list[dict[str, Any]], out: TextIO) -> None:
    if not entries:
        return
    print(f"\nschedules: {len(entries)} (cron in UTC)", file=out)
    for entry in entries:
        print(
            f"  {printable(entry['type'])}  {printable(entry['schedule'])}  "
            f"next {entry['next_slot'] or '?'}  last fired {entry['last_slot'] or 'never'}",
            file=out,
        )


def print_paused(entries: list[dict[str, Any]], out: TextIO) -> None:
    if not entries:
        return
    print(f"\npaused: {len(entries)} (not claimed anywhere until resumed)", file=out)
    for entry in entries:
        note = "" if entry["handler"] else "  (no handler exists for it)"
        print(f"  {printable(entry['type'])}  since {entry['paused_at']}{note}", file=out)


def format_age(age: float | None) -> str:
    if age is None:
        return "-"
    if age < 120:
        return f"{age:.1f}s"
    if age < 7200:
        return f"{age / 60:.1f}m"
    return f"{age / 3600:.1f}h"


def watch(
    store: Store,
    handlers_dir: Path,
    *,
    interval_s: float = 1.0,
    count: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Redraw until interrupted (or ``count`` refreshes): live queue and last-minute outcomes.

    Only a terminal is redrawn in place. Into a pipe or a file the clear-screen
    codes would be garbage, so each refresh is then a plain snapshot, set off
    from the previous one by two blank lines.
    """
    history: deque[tuple[float, dict[tuple[str, str], int]]] = deque()
    handled = handled_types(handlers_dir)
    on_terminal = out.isatty()
    shown = 0
    try:
        while count is None or shown < count:
            counts = store.counts()
            now = time.monotonic()
            snapshot = {(c.type, str(c.status)): c.count for c in counts}
            history.append((now, snapshot))
            while now - history[0][0] > WINDOW_S:
                history.popleft()
            lead = CLEAR if on_terminal else "\n\n" if shown else ""
            out.write(lead + render_watch(counts, history[0], (now, snapshot), handled))
            out.flush()
            shown += 1
            if count is None or shown < count:
                time.sleep(interval_s)
    except KeyboardInterrupt:
        out.write("\n")
    return 0


def render_watch(
    counts: list[StatusCount],
    oldest: tuple[float, dict[tuple[str, str], int]],
    newest: tuple[float, dict[tuple[str, str], int]],
    handled: set[str],
) -> str:
    span = max(newest[0] - oldest[0], 0.0)
    by_type = summarize(counts, handled)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"supervisor status  {stamp}  (finished: last {span:.0f} s)", ""]
    if not by_type:
        return "\n".join([*lines, "no tasks", ""])
    names = {name: printable(name) for name in by_type}
    width = max(4, *(len(t) for t in names.values()))
    lines.append(
        f"{'TYPE':<{width}}  {'queued':>8}  {'running':>8}  {'oldest':>8}  "
        f"{'+done':>7}  {'+failed':>7}  {'+cancel':>7}  {'done/s':>7}"
    )
    for name, entry in sorted(by_type.items()):

        def delta(status: Status, task_type: str = name) -> int:
            key = (task_type, status.value)
            return newest[1].get(key, 0) - oldest[1].get(key, 0)

        done = delta(Status.COMPLETED)
        rate = done / span if span > 0 else 0.0
        flag = "" if entry["handler_here"] or not handled else "  (no handler here)"
        lines.append(
            f"{names[name]:<{width}}  {entry['counts']['queued']:>8}  "
            f"{entry['counts']['running']:>8}  "
            f"{format_age(entry['oldest_queued_age_s']):>8}  {done:>7}  "
            f"{delta(Status.FAILED):>7}  {delta(Status.CANCELLED):>7}  {rate:>7.1f}{flag}"
        )
    return "\n".join([*lines, ""])
