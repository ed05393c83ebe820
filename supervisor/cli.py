"""``python -m supervisor``: run the supervisor (no subcommand), or an operator's subcommand.

Every failure is one line on stderr and an exit status: 2 for bad input
(nothing was written), 1 for a runtime failure such as an unreachable
database. No traceback reaches the user. Output into a pipe whose reader has
gone (``| head -1``) ends quietly with status 141, as for other Unix tools.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import attrs

from supervisor import bulk, web
from supervisor.config import Settings, add_run_flags, env_name, settings_from
from supervisor.dsn import DEFAULT_DSN, Dsn, SqliteDsn, parse_dsn
from supervisor.errors import StartupError, StoreError, UnreadableRow, UsageError
from supervisor.lifecycle import (
    MAX_OPTIONS_BYTES,
    PRIORITY_MAX,
    PRIORITY_MIN,
    Failure,
    Status,
)
from supervisor.pausing import pause_or_resume
from supervisor.policy import effective_values
from supervisor.producer import new_task
from supervisor.stack_cli import ask_for_stack
from supervisor.status_view import print_status, printable, watch
from supervisor.store import Store, TaskRow, open_store
from supervisor.usage import describe as describe_usage

EXIT_RUNTIME, EXIT_USAGE = 1, 2
EXIT_READER_GONE = 128 + signal.SIGPIPE  # what a shell shows for a tool that SIGPIPE ended
T = TypeVar("T")
# Ids are positive and fit SQLite's INTEGER (signed 64-bit); anything else cannot name a task,
# and would otherwise reach the driver (sqlite3 raises OverflowError, not a database error).
MAX_TASK_ID = 2**63 - 1
SUBCOMMANDS = (
    "run",
    "enqueue",
    "status",
    "show",
    "retry",
    "cancel",
    "stack",
    "pause",
    "resume",
    "migrate",
    "prune",
    "web",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    try:
        if args_list and args_list[0] in SUBCOMMANDS and args_list[0] != "run":
            return until_reader_gone(run_subcommand, args_list, env)
        if args_list and args_list[0] == "run":
            args_list = args_list[1:]
        settings = until_reader_gone(run_settings, args_list, env)
        from supervisor.service import run

        return run(settings)
    except UsageError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, StartupError) as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130


def until_reader_gone(
    step: Callable[[list[str], Mapping[str, str]], T], argv: list[str], env: Mapping[str, str]
) -> T:
    """Run ``step``, whose output may go to a reader that stops early (``| head -1``, a pager).

    A closed pipe is how such a reader says it has enough, not an error: the
    command ends quietly with the status a shell shows for a tool that SIGPIPE
    ended (141), as ``cat`` or ``ls`` would. SIGPIPE itself stays ignored
    (Python's default), so a database socket that breaks is still a
    :class:`StoreError`, not a silent death. Output is flushed here, inside the
    guard: otherwise the last buffered write fails at interpreter exit, where
    nothing can catch it. Only these printing steps are guarded, never the
    supervisor's own loop, whose broken pipes are bugs to see.
    """
    try:
        try:
            return step(argv, env)
        finally:
            sys.stdout.flush()  # also when argparse exits after printing --help
    except BrokenPipeError:
        # Whatever is still buffered goes nowhere, so the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise SystemExit(EXIT_READER_GONE) from None


def run_settings(argv: list[str], environ: Mapping[str, str]) -> Settings:
    parser = OneLineParser(
        prog="python -m supervisor",
        description=(
            "Run the supervisor: claim tasks from the tasks table and run each in an isolated "
            "child process. Subcommands: " + ", ".join(SUBCOMMANDS[1:]) + " (each has --help)."
        ),
        epilog="Signals: TERM/INT drain and exit 0; a second TERM/INT or QUIT drains at once; "
        "HUP reloads handlers; TTIN/TTOU add/remove a worker.",
    )
    add_run_flags(parser, environ)
    parser.add_argument(
        "--burst",
        action="store_true",
        help="run every task runnable now, then exit: 0 if all completed, 1 if any did not "
        "(delayed tasks and retries still backing off are not waited for)",
    )
    args = parser.parse_args(argv)
    return attrs.evolve(settings_from(args, environ), burst=args.burst)


def build_subcommand_parser(environ: Mapping[str, str]) -> OneLineParser:
    parser = OneLineParser(prog="python -m supervisor")
    dsn_default = environ.get(env_name("--dsn"), DEFAULT_DSN)
    common = OneLineParser(add_help=False)
    common.add_argument(
        "--dsn", default=dsn_default, help="database (env SUPERVISOR_DSN; default %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    enqueue = sub.add_parser("enqueue", parents=[common], help="add a task; prints its id")
    enqueue.add_argument("type", help="task type: the handler file's name without .py")
    enqueue.add_argument("options", nargs="?", help="the task's options string; - reads stdin")
    enqueue.add_argument("--delay", default="0", help="seconds before it may run")
    enqueue.add_argument("--budget", default="3600", help="seconds of wall-clock budget")
    enqueue.add_argument(
        "--max-attempts", help="1..100; beats the handler's MAX_ATTEMPTS (default: it, else 3)"
    )
    enqueue.add_argument(
        "--timeout",
        help="seconds per attempt, then a kill and a retry; beats the handler's TIMEOUT"
        " (default: it, else none)",
    )
    enqueue.add_argument("--priority", default="0", help="smaller runs first (default 0)")
    enqueue.add_argument(
        "--unique-key",
        default=None,
        help="at most one live (queued or running) task of this type per key: a duplicate "
        "creates nothing and prints the live task's id",
    )
    enqueue.add_argument(
        "--concurrency-key",
        help="tasks sharing this key (1-255 characters) count together against the"
        " handler's CONCURRENCY_PER_KEY",
    )

    status = sub.add_parser("status", parents=[common], help="counts by type and status")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--handlers",
        default=environ.get(env_name("--handlers"), "handlers"),
        help="handlers folder, to flag types that no handler here serves",
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="refresh a compact view every second (Ctrl-C ends); redrawn in place on a "
        "terminal, plain snapshots into a pipe or file",
    )
    status.add_argument(
        "--count", type=int, default=None, help="with --watch: stop after this many refreshes"
    )

    show = sub.add_parser("show", parents=[common], help="one task's row")
    show.add_argument("id", type=task_id)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--options", action="store_true", help="include task_options")
    show.add_argument(
        "--stack", action="store_true", help="print the last stack taken of its child in full"
    )
    stack = sub.add_parser(
        "stack",
        parents=[common],
        help="print every thread's stack of a running task's child, wherever it runs "
        "(the task carries on)",
    )
    stack.add_argument("id", type=task_id)
    stack.add_argument(
        "--wait", default="10", help="seconds to wait for its supervisor to answer (default 10)"
    )

    for name, text in (
        ("retry", "put failed or cancelled tasks back: by id, or every one a filter selects"),
        ("cancel", "cancel queued or running tasks: by id, or every one a filter selects"),
    ):
        command = sub.add_parser(name, parents=[common], help=text)
        command.add_argument("id", type=task_id, nargs="*", help="task ids")
        bulk.add_filter_flags(command, name)

    for name, text in (
        ("pause", "stop claims of a type across the fleet; running tasks finish"),
        ("resume", "let a paused type be claimed again"),
    ):
        command = sub.add_parser(name, parents=[common], help=text)
        command.add_argument("type", help="task type (it need not have a handler yet)")

    sub.add_parser(
        "migrate", parents=[common], help="apply the pending schema migrations (idempotent)"
    )
    prune = sub.add_parser("prune", parents=[common], help="delete old finished tasks")
    prune.add_argument("--older-than", required=True, help="seconds since they finished")
    web_parser = sub.add_parser(
        "web", parents=[common], help="serve the operator's read-only page alone (no workers)"
    )
    web.add_flags(web_parser, environ)
    return parser


def run_subcommand(argv: list[str], environ: Mapping[str, str]) -> int:
    args = build_subcommand_parser(environ).parse_args(argv)
    dsn = parse_dsn(args.dsn, dict(environ))
    if args.command == "enqueue":
        task = new_task(
            args.type,
            read_options(args.options),
            delay=number(args.delay, "--delay"),
            budget=number(args.budget, "--budget"),
            max_attempts=None
            if args.max_attempts is None
            else int(number(args.max_attempts, "--max-attempts", integer=True)),
            timeout=None if args.timeout is None else number(args.timeout, "--timeout"),
            priority=priority(args.priority),
            unique_key=args.unique_key,
            concurrency_key=args.concurrency_key,
        )
        enqueued = ready_store(dsn, create=True).enqueue(task)
        print(int(enqueued))
        if enqueued.existed:  # exit 0 all the same: the task the caller asked for exists
            print(
                f"supervisor: task {int(enqueued)} of type {printable(task.type)} already exists "
                f"with this unique key and is live; nothing was enqueued",
                file=sys.stderr,
            )
        return 0
    if args.command == "prune":
        older_than = number(args.older_than, "--older-than")
        if not 0 <= older_than < math.inf:  # also refuses nan, which compares false
            raise UsageError(f"--older-than must be zero or more seconds, got {args.older_than!r}")
        store = ready_store(dsn)
        print(f"pruned {store.prune(older_than)} finished tasks")
        return 0
    if args.command == "web":
        token = web.token_from(args, environ)
        web.check_exposure(args.host, token, "--host")
        page_store = ready_store(dsn)
        return web.run_alone(page_store, args.host, args.port, token, refresh_s=args.refresh)
    store = ready_store(dsn, create=args.command == "migrate")
    if args.command == "migrate":
        print(f"schema ready at {dsn.redacted()}")
        return 0
    if args.command == "status":
        if args.watch:
            return watch(store, Path(args.handlers), count=args.count)
        return print_status(store, Path(args.handlers), as_json=args.json)
    if args.command == "show":
        return print_show(
            store, args.id, as_json=args.json, with_options=args.options, with_stack=args.stack
        )
    if args.command == "stack":
        wait = number(args.wait, "--wait")
        if not 0 <= wait < math.inf:
            raise UsageError(f"--wait must be zero or more seconds, got {args.wait!r}")
        return ask_for_stack(store, args.id, wait, out=sys.stdout, err=sys.stderr)
    if args.command in ("pause", "resume"):
        return pause_or_resume(store, args.command, args.type)
    if bulk.wants_bulk(args):
        if args.id:
            raise UsageError("give task ids or filters, not both")
        where = bulk.filter_from_args(args, args.command, store.utc_now())
        return bulk.run_bulk(
            store, args.command, where, dry_run=args.dry_run, batch=args.batch, out=sys.stdout
        )
    if not args.id:
        raise UsageError(f"{args.command} needs task ids or a filter such as --type (see --help)")
    return max(operator_transition(store, args.command, one) for one in args.id)


def ready_store(dsn: Dsn, *, create: bool = False) -> Store:
    """Every subcommand works on a migrated schema (migrating is idempotent).

    Only the commands that start a queue (``migrate``, ``enqueue``; ``run`` opens
    its own) may create a missing SQLite file. For the others a missing file is a
    typo in the DSN: creating it would answer from an empty queue that is not the
    operator's, and leave a stray file behind. It is bad input, refused before
    anything is written.
    """
    if not create and isinstance(dsn, SqliteDsn) and not os.path.exists(dsn.path):
        raise UsageError(
            f"no SQLite database at {os.path.abspath(dsn.path)} (check --dsn or SUPERVISOR_DSN; "
            "only run, migrate and enqueue create the file)"
        )
    store = open_store(dsn)
    store.migrate()
    return store


def number(text: str, flag: str, *, integer: bool = False) -> float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds"
        raise UsageError(f"{flag} must be {kind}, got {text!r}") from None


def task_id(text: str) -> int:
    """argparse type of an id: a positive whole number that a store can look up."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a task id is a positive whole number, not {text!r}"
        ) from None
    if not 1 <= value <= MAX_TASK_ID:
        raise argparse.ArgumentTypeError(f"a task id is between 1 and {MAX_TASK_ID}, not {text}")
    return value


def priority(text: str) -> int:
    """``--priority`` within the column's range, so an overflow is bad input, not a DB error."""
    value = int(number(text, "--priority", integer=True))
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise UsageError(
            f"--priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {text}"
        )
    return value


def read_options(options: str | None) -> str | None:
    """``-`` reads standard input, refusing more than 1 MiB without reading it all.

    An argument that is not UTF-8 reaches Python as lone surrogates (PEP 383), which
    no database can store; it is refused here like non-UTF-8 standard input.
    """
    if options != "-":
        if options is not None:
            try:
                options.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError("task options argument is not UTF-8 text") from None
        return options
    data = sys.stdin.buffer.read(MAX_OPTIONS_BYTES + 1)
    if len(data) > MAX_OPTIONS_BYTES:
        raise UsageError(f"task options are larger than {MAX_OPTIONS_BYTES} bytes (1 MiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("task options on standard input are not UTF-8 text") from None


# Values that may hold several lines, printed with their newlines; every other is one line.
MULTI_LINE_FIELDS = ("last_error", "task_options", "stack")


def print_show(
    store: Store, task_id: int, *, as_json: bool, with_options: bool, with_stack: bool = False
) -> int:
    """Print one row; a row holding odd values (empty status, zero dates) is shown as it is.

    Text fields are printed with control characters escaped (JSON escapes them by
    itself): any producer may have written them, and a terminal must not act on them.
    """
    try:
        row = store.get(task_id)
    except UnreadableRow as exc:
        record = raw_to_dict(exc.fields, with_options=with_options)
    else:
        if row is None:
            print(f"supervisor: no task with id {task_id}", file=sys.stderr)
            return EXIT_RUNTIME
        record = row_to_dict(row, with_options=with_options)
        record["effective"] = effective_record(store, row)
        if not as_json:  # JSON keeps the three figures as numbers; text reads them as one line
            usage = describe_usage(row.cpu_s, row.peak_rss_bytes, row.wall_s)
            record = {
                ("usage" if key == "cpu_s" else key): (usage if key == "cpu_s" else value)
                for key, value in record.items()
                if key not in ("peak_rss_bytes", "wall_s")
            }
    if as_json:
        print(json.dumps(record, indent=2))
    else:
        if not with_stack and record.get("stack") is not None:
            # Dozens of lines per thread: said to exist, printed only when asked for.
            record["stack"] = (
                f"taken at {record.get('stack_at')} (show {task_id} --stack prints it)"
            )
        print_fields(record)
    return 0


def print_fields(record: dict[str, Any]) -> None:
    """One line per field; the effective values as ``effective.max_attempts  5 (handler)``."""
    lines = {key: value for key, value in record.items() if key != "effective"}
    for name, found in record.get("effective", {}).items():
        value = "none" if found["value"] is None else f"{found['value']:g}"
        lines[f"effective.{name}"] = f"{value} ({found['source']})"
    width = max(len(key) for key in lines)
    for key, value in lines.items():
        text = "" if value is None else str(value)
        print(f"{key:<{width}}  {printable(text, keep_lines=key in MULTI_LINE_FIELDS)}")


def effective_record(store: Store, row: TaskRow) -> dict[str, dict[str, Any]]:
    """The values the task runs under and their sources (see ``policy.effective_values``).

    A row never claimed reads its type's declared policy: that is what the
    next claim (by a supervisor with the handler) writes into it.
    """
    declared = None if row.was_claimed else store.declared_policy(row.type)
    found = effective_values(
        max_attempts=row.max_attempts,
        timeout_s=row.timeout_s,
        claimed=row.was_claimed,
        declared=declared,
    )
    return {name: {"value": e.value, "source": e.source} for name, e in found.items()}


def row_to_dict(row: TaskRow, *, with_options: bool) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for field in attrs.fields(TaskRow):
        if field.name == "options" and not with_options:
            continue
        name = "task_options" if field.name == "options" else field.name
        record[name] = plain_value(getattr(row, field.name))
    return record


def raw_to_dict(fields: Mapping[str, object], *, with_options: bool) -> dict[str, Any]:
    """The columns as the database returned them, for a row that is no valid ``TaskRow``."""
    return {
        name: plain_value(value)
        for name, value in fields.items()
        if name != "task_options" or with_options
    }


def plain_value(value: object) -> object:
    """A value JSON and the text view can print: dates as text, enums as their value."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, Status | Failure):
        return value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def operator_transition(store: Store, command: str, task_id: int) -> int:
    result = store.cancel(task_id) if command == "cancel" else store.retry(task_id)
    if result.before is None:
        print(f"supervisor: no task with id {task_id}", file=sys.stderr)
        return EXIT_RUNTIME
    if result.blocked_by is not None:
        print(
            f"supervisor: task {task_id} cannot be retried: task {result.blocked_by} of the same "
            "type is live with its unique key",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    if not result.applied:
        allowed = "queued or running" if command == "cancel" else "failed or cancelled"
        print(
            f"supervisor: task {task_id} is {result.before.value}; only {allowed} tasks can be "
            f"{'cancelled' if command == 'cancel' else 'retried'}",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    print(
        f"task {task_id}: {result.before.value} -> "
        f"{'cancelled' if command == 'cancel' else 'queued'}"
    )
    return 0
