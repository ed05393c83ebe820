"""Bulk retry and cancel: which tasks a filter selects, and that they change in bounded batches."""

from __future__ import annotations

import argparse
import io
import shlex
from datetime import datetime, timedelta

import pytest

from supervisor import bulk
from supervisor.cli import OneLineParser, build_subcommand_parser
from supervisor.errors import UsageError
from supervisor.lifecycle import Failure, Status
from supervisor.store import MemoryStore, NewTask, TaskFilter
from supervisor.store.memory import ManualClock

pytestmark = pytest.mark.timeout(30)
NOW = datetime(2026, 1, 31, 15, 0, 0)


def failed_tasks(store: MemoryStore, count: int, task_type: str = "resize") -> list[int]:
    made = [int(store.enqueue(NewTask(type=task_type, max_attempts=1))) for _ in range(count)]
    for claim in store.claim("me", [task_type], count, 60.0):
        store.fail(claim, Failure.TIMEOUT, "took too long")
    return made


def parse(argv: list[str]) -> argparse.Namespace:
    parser: OneLineParser = build_subcommand_parser({})
    return parser.parse_args(argv)


def test_a_retry_of_many_tasks_runs_in_batches_of_the_given_size() -> None:
    store = MemoryStore(clock=ManualClock())
    made = failed_tasks(store, 25)
    out = io.StringIO()
    bulk.run_bulk(store, "retry", TaskFilter(type="resize"), dry_run=False, batch=10, out=out)
    assert out.getvalue() == "retried 25 tasks\n"
    assert store.calls["retry_many"] == 3  # 10 + 10 + 5: never one giant transaction
    assert all(store.get(i).status is Status.QUEUED for i in made)  # type: ignore[union-attr]


def test_a_dry_run_prints_the_count_and_first_ids_and_changes_nothing() -> None:
    store = MemoryStore(clock=ManualClock())
    made = failed_tasks(store, 12)
    out = io.StringIO()
    bulk.run_bulk(store, "retry", TaskFilter(), dry_run=True, batch=10, out=out)
    newest = ", ".join(str(i) for i in sorted(made, reverse=True)[:10])
    assert out.getvalue() == f"would retry 12 tasks (dry run): {newest}, ...\n"
    assert store.calls["retry_many"] == 0
    assert store.count_tasks(TaskFilter(statuses=frozenset({Status.FAILED}))) == 12


def test_a_dry_run_that_matches_nothing_says_so() -> None:
    out = io.StringIO()
    bulk.run_bulk(MemoryStore(), "cancel", TaskFilter(), dry_run=True, batch=10, out=out)
    assert out.getvalue() == "would cancel 0 tasks (dry run)\n"


def test_a_cancel_touches_only_live_tasks_whatever_the_filter_says() -> None:
    store = MemoryStore(clock=ManualClock())
    done = failed_tasks(store, 2)
    live = int(store.enqueue(NewTask(type="resize")))
    out = io.StringIO()
    bulk.run_bulk(store, "cancel", TaskFilter(type="resize"), dry_run=False, batch=5, out=out)
    assert out.getvalue() == "cancelled 1 tasks\n"
    assert store.get(live).status is Status.CANCELLED  # type: ignore[union-attr]
    assert {store.get(i).status for i in done} == {Status.FAILED}  # type: ignore[union-attr]


def test_a_task_whose_unique_key_is_held_is_counted_not_retried() -> None:
    store = MemoryStore(clock=ManualClock())
    first = int(store.enqueue(NewTask(type="sync", unique_key="k", max_attempts=1)))
    [claim] = store.claim("me", ["sync"], 1, 60.0)
    store.fail(claim, Failure.ERROR, "boom")
    holder = int(store.enqueue(NewTask(type="sync", unique_key="k")))
    other = int(store.enqueue(NewTask(type="sync", unique_key="j", max_attempts=1)))
    [claim] = store.claim("me", ["sync"], 1, 60.0)
    assert claim.id == holder  # the holder runs; "other" stays queued below
    store.cancel(other)
    out = io.StringIO()
    bulk.run_bulk(store, "retry", TaskFilter(type="sync"), dry_run=False, batch=5, out=out)
    assert out.getvalue() == (
        "retried 1 tasks; 1 not retried: another live task holds their unique key\n"
    )
    assert store.get(first).status is Status.FAILED  # type: ignore[union-attr]
    assert store.get(other).status is Status.QUEUED  # type: ignore[union-attr]


@pytest.mark.parametrize("batch", [0, bulk.MAX_BATCH + 1])
def test_a_batch_out_of_range_is_bad_input(batch: int) -> None:
    with pytest.raises(UsageError, match="--batch"):
        bulk.run_bulk(
            MemoryStore(), "retry", TaskFilter(), dry_run=True, batch=batch, out=io.StringIO()
        )


def test_flags_become_a_filter_with_relative_and_absolute_times() -> None:
    args = parse(
        [
            "retry",
            "--type",
            "resize",
            "--failure",
            "timeout",
            "--since",
            "2h",
            "--until",
            "2026-01-31T14:30:00Z",
            "--error-match",
            "took",
        ]
    )
    where = bulk.filter_from_args(args, "retry", NOW)
    assert where == TaskFilter(
        type="resize",
        statuses=frozenset({Status.FAILED}),
        failure=Failure.TIMEOUT,
        since=NOW - timedelta(hours=2),
        until=datetime(2026, 1, 31, 14, 30),
        error_match="took",
    )


def test_a_status_the_command_cannot_change_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        parse(["cancel", "--status", "failed"])
    with pytest.raises(UsageError, match="cannot be cancelled"):
        bulk.filter_from_args(parse(["cancel", "--failure", "panic"]), "cancel", NOW)


@pytest.mark.parametrize("text", ["yesterday", "5 minutes", "-3h"])
def test_a_time_that_is_neither_iso_nor_a_span_is_bad_input(text: str) -> None:
    with pytest.raises(UsageError, match="--since must be"):
        bulk.moment(text, "--since", NOW)


@pytest.mark.parametrize(
    ("command", "where"),
    [
        ("retry", TaskFilter()),
        ("retry", TaskFilter(type="it's <b>", failure=Failure.PANIC, error_match="a b; rm -rf")),
        ("cancel", TaskFilter(statuses=frozenset({Status.RUNNING}), since=NOW, until=NOW)),
        ("retry", TaskFilter(statuses=frozenset({Status.CANCELLED}))),
    ],
)
def test_the_command_line_the_page_shows_parses_back_to_its_filter(
    command: str, where: TaskFilter
) -> None:
    words = shlex.split(bulk.command_line(command, where))
    assert words[:4] == ["python", "-m", "supervisor", command]
    assert words[-1] == "--dry-run"
    parsed = bulk.filter_from_args(parse(words[3:]), command, NOW)
    expected = where.statuses or bulk.ALLOWED[command]
    if where.failure is not None:
        expected = frozenset({Status.FAILED})
    assert parsed == TaskFilter(
        type=where.type,
        statuses=expected,
        failure=where.failure,
        since=where.since,
        until=where.until,
        error_match=where.error_match,
    )


def test_only_commands_that_can_act_on_a_filter_are_offered() -> None:
    assert bulk.applicable("retry", TaskFilter(failure=Failure.ERROR))
    assert not bulk.applicable("cancel", TaskFilter(failure=Failure.ERROR))
    assert not bulk.applicable("retry", TaskFilter(statuses=frozenset({Status.RUNNING})))
    assert bulk.applicable("cancel", TaskFilter())
