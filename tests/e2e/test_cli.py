"""The operator's and producer's command line, run as the real ``python -m supervisor``.

Each test starts the command in a subprocess, in a fresh working directory, and
checks what a user sees (exit status, stdout, stderr) and what the database
holds afterwards. Tests that touch a database run on SQLite and on MariaDB.

The error contract checked throughout: a failure is exactly one line on
stderr, never a traceback; exit status 2 means bad input and nothing was
written, exit status 1 means a runtime failure (unknown task, refused
transition, unreachable database).
"""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pymysql
import pytest

from supervisor.dsn import MysqlDsn, SqliteDsn, parse_dsn
from supervisor.lifecycle import Failure, Status
from supervisor.store import NewTask, Store, open_store

REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
SECRET = "s3cret"
RUN_FLAGS = (
    "--workers", "--dsn", "--handlers", "--backoff", "--drain-timeout", "--lease",
    "--poll-interval", "--max-tasks-per-child", "--metrics-port", "--log-format", "--log-level",
)  # fmt: skip


@attrs.frozen
class Result:
    """What one run of the command showed the user."""

    rc: int
    out: str
    err: str

    def assert_one_line_error(self, rc: int) -> str:
        """The error contract: exit ``rc``, nothing on stdout, one line on stderr, no traceback."""
        assert self.rc == rc, f"exit status {self.rc}, expected {rc}; stderr: {self.err!r}"
        assert "Traceback" not in self.err, self.err
        assert self.err.endswith("\n") and self.err.count("\n") == 1, repr(self.err)
        assert self.out == "", f"a failure printed on stdout: {self.out!r}"
        return self.err.strip()

    def assert_ok(self) -> str:
        assert self.rc == 0, f"exit status {self.rc}; stderr: {self.err!r}"
        assert self.err == "", self.err
        return self.out


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any SUPERVISOR_* setting, importing this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_cli(
    cwd: Path,
    *args: str | bytes,
    dsn: str | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes = b"",
    python_args: Sequence[str] = ("-m", "supervisor"),
) -> Result:
    """Run ``python -m supervisor ARGS`` in ``cwd``; ``dsn`` goes in SUPERVISOR_DSN, not argv."""
    environment = clean_env(**(env or {}))
    if dsn is not None:
        environment["SUPERVISOR_DSN"] = dsn
    done = subprocess.run(
        [sys.executable, *python_args, *args],
        cwd=cwd,
        env=environment,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return Result(
        rc=done.returncode,
        out=done.stdout.decode("utf-8", "replace"),
        err=done.stderr.decode("utf-8", "replace"),
    )


def row_count(store: Store) -> int:
    return sum(line.count for line in store.counts())


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def backdate(dsn: str, task_id: int, column: str, seconds: int) -> None:
    """Move a timestamp of one row into the past, by the database's own clock."""
    if isinstance(parse_dsn(dsn), SqliteDsn):
        execute_sql(
            dsn,
            f"UPDATE tasks SET {column} = strftime('%Y-%m-%d %H:%M:%f', 'now', ?) WHERE id = ?",
            (f"-{seconds} seconds", task_id),
        )
    else:
        execute_sql(
            dsn,
            f"UPDATE tasks SET {column} = NOW(6) - INTERVAL ? SECOND WHERE id = ?",
            (seconds, task_id),
        )


def finished(store: Store, type_: str, outcome: str) -> int:
    """A task of ``type_`` taken through a claim to ``completed`` or ``failed``."""
    task_id = store.enqueue(NewTask(type=type_, options="{}"))
    (claim,) = store.claim("e2e-owner", [type_], 1, 60)
    if outcome == "completed":
        assert store.complete(claim)
    else:
        assert store.fail(claim, Failure.ERROR, "boom")
    return task_id


# --- enqueue ---------------------------------------------------------------------------------


def test_enqueue_prints_the_new_id_and_stores_the_options_verbatim(
    dsn: str, store: Store, tmp_path: Path
) -> None:
    """`enqueue TYPE OPTIONS` prints only the new id; the row holds the options untouched.

    Defaults: queued, 3 attempts, priority 0, runnable now, budget 3600 s.
    """
    options = '{"path": "a.png", "size": [1, 2]}'
    first = run_cli(tmp_path, "enqueue", "resize", options, dsn=dsn).assert_ok()
    second = run_cli(tmp_path, "enqueue", "resize", "plain text", dsn=dsn).assert_ok()

    assert first.endswith("\n") and first.strip().isdigit(), repr(first)
    first_id, second_id = int(first), int(second)
    assert second_id > first_id
    row = store.get(first_id)
    assert row is not None
    assert (row.type, row.options, row.status) == ("resize", options, Status.QUEUED)
    assert (row.max_attempts, row.priority, row.attempts) == (3, 0, 0)
    assert row.run_at == row.created_at
    assert row.deadline_at - row.run_at == timedelta(seconds=3600)
    assert store.get(second_id).options == "plain text"  # type: ignore[union-attr]


def test_enqueue_flags_land_in_the_row(dsn: str, tmp_path: Path) -> None:
    """--delay sets run_at, --budget counts from run_at to deadline_at, and --max-attempts and
    --priority are stored as given (checked through `show ID --json`, which omits the options).
    """
    out = run_cli(
        tmp_path, "enqueue", "report", "{}",
        "--delay", "30", "--budget", "120.5", "--max-attempts", "7", "--priority", "-5",
        dsn=dsn,
    ).assert_ok()  # fmt: skip
    shown = json.loads(run_cli(tmp_path, "show", out.strip(), "--json", dsn=dsn).assert_ok())

    assert shown["id"] == int(out)
    assert "task_options" not in shown
    created, run_at = parse_time(shown["created_at"]), parse_time(shown["run_at"])
    assert run_at - created == timedelta(seconds=30)
    assert parse_time(shown["deadline_at"]) - run_at == timedelta(seconds=120.5)
    assert (shown["max_attempts"], shown["priority"], shown["status"]) == (7, -5, "queued")


def test_enqueue_concurrency_key_lands_in_the_row(dsn: str, tmp_path: Path) -> None:
    out = run_cli(
        tmp_path, "enqueue", "report", "--concurrency-key", "customer 42", dsn=dsn
    ).assert_ok()
    shown = json.loads(run_cli(tmp_path, "show", out.strip(), "--json", dsn=dsn).assert_ok())
    assert shown["concurrency_key"] == "customer 42"


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_enqueue_refuses_a_concurrency_key_the_column_cannot_hold(
    sqlite_dsn: str, tmp_path: Path, key: str
) -> None:
    result = run_cli(tmp_path, "enqueue", "report", "--concurrency-key", key, dsn=sqlite_dsn)
    line = result.assert_one_line_error(2)
    assert "concurrency key must be 1 to 255 characters of text" in line


def test_enqueue_dash_reads_the_options_from_stdin_byte_for_byte(dsn: str, tmp_path: Path) -> None:
    """OPTIONS `-` stores standard input exactly: non-ASCII, CR LF, tabs, trailing blanks."""
    text = '{"name": "café ☕ 🙂",\t"q": "\\"x\\""}\r\n\n  '
    out = run_cli(tmp_path, "enqueue", "mail", "-", dsn=dsn, stdin=text.encode()).assert_ok()
    shown = run_cli(tmp_path, "show", out.strip(), "--json", "--options", dsn=dsn).assert_ok()

    assert json.loads(shown)["task_options"] == text


def test_options_of_exactly_one_mib_are_accepted(dsn: str, store: Store, tmp_path: Path) -> None:
    """The 1 MiB limit is inclusive: 1,048,576 bytes on stdin are stored whole."""
    text = "é" * (MIB // 2)
    out = run_cli(tmp_path, "enqueue", "big", "-", dsn=dsn, stdin=text.encode()).assert_ok()

    assert store.get(int(out)).options == text  # type: ignore[union-attr]


# --- show -------------------------------------------------------------------------------------


def test_show_prints_one_field_per_line_and_options_only_on_request(
    dsn: str, store: Store, tmp_path: Path
) -> None:
    """`show ID` lists the row's fields; task_options appear only with --options."""
    task_id = store.enqueue(NewTask(type="resize", options="opt-value-42", priority=3))

    plain = run_cli(tmp_path, "show", str(task_id), dsn=dsn).assert_ok()
    full = run_cli(tmp_path, "show", str(task_id), "--options", dsn=dsn).assert_ok()

    fields = {line.split()[0]: line.split()[1:] for line in plain.splitlines()}
    assert fields["id"] == [str(task_id)]
    assert fields["type"] == ["resize"]
    assert fields["status"] == ["queued"]
    assert fields["priority"] == ["3"]
    assert "task_options" not in fields and "opt-value-42" not in plain
    assert any(line.split() == ["task_options", "opt-value-42"] for line in full.splitlines())


def test_show_of_an_unknown_id_exits_1_with_one_line(
    dsn: str, store: Store, tmp_path: Path
) -> None:
    """An id that names no task is a runtime failure (1), said in one line."""
    message = run_cli(tmp_path, "show", "424242", dsn=dsn).assert_one_line_error(1)

    assert "424242" in message


# --- status -----------------------------------------------------------------------------------


def test_status_counts_by_type_and_status_and_ages_the_oldest_queued_task(
    dsn: str, store: Store, tmp_path: Path
) -> None:
    """`status` counts tasks per type and status; the age is that of the oldest *queued* task,
    counted from its run_at (a delayed task that is not due yet has not waited at all).

    A type with no handler file in --handlers is flagged in the table and in the JSON.
    """
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "resize.py").write_text("def handle(task, progress):\n    pass\n")
    old_queued = store.enqueue(NewTask(type="resize"))
    store.enqueue(NewTask(type="resize"))
    old_cancelled = store.enqueue(NewTask(type="resize"))
    assert store.cancel(old_cancelled).applied
    store.enqueue(NewTask(type="orphan"))
    finished(store, "mail", "completed")
    delayed = store.enqueue(NewTask(type="later", delay_s=3600))
    backdate(dsn, old_queued, "created_at", 900)
    backdate(dsn, old_queued, "run_at", 600)  # due for 10 minutes: it has waited that long
    backdate(dsn, old_cancelled, "created_at", 1200)
    backdate(dsn, delayed, "created_at", 1200)  # created long ago, but not due yet: no wait

    report = json.loads(
        run_cli(tmp_path, "status", "--json", "--handlers", "handlers", dsn=dsn).assert_ok()
    )
    table = run_cli(tmp_path, "status", "--handlers", "handlers", dsn=dsn).assert_ok()

    types = report["types"]
    assert set(types) == {"resize", "orphan", "mail", "later"}
    zero = {"queued": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    assert types["resize"]["counts"] == {**zero, "queued": 2, "cancelled": 1}
    assert types["orphan"]["counts"] == {**zero, "queued": 1}
    assert types["mail"]["counts"] == {**zero, "completed": 1}
    assert 600 <= types["resize"]["oldest_queued_age_s"] < 660
    assert 0 <= types["orphan"]["oldest_queued_age_s"] < 60
    assert types["mail"]["oldest_queued_age_s"] is None
    assert types["later"]["oldest_queued_age_s"] == 0
    assert types["resize"]["handler_here"] is True
    assert types["orphan"]["handler_here"] is False

    header, *lines = table.split("\n\n")[0].splitlines()
    assert header.split()[:6] == ["TYPE", "queued", "running", "completed", "failed", "cancelled"]
    rows = {line.split()[0]: line for line in lines}
    assert set(rows) == {"resize", "orphan", "mail", "later"}
    assert rows["resize"].split()[1:7] == ["2", "0", "0", "0", "1", "10.0m"]
    assert rows["mail"].split()[1:7] == ["0", "0", "1", "0", "0", "-"]
    assert rows["later"].split()[1:7] == ["1", "0", "0", "0", "0", "0.0s"]
    assert "no handler" in rows["orphan"]
    assert "no handler" not in rows["resize"]


def test_status_of_an_empty_queue(dsn: str, store: Store, tmp_path: Path) -> None:
    """With no tasks and no supervisors, the table says so and the JSON lists nothing."""
    assert run_cli(tmp_path, "status", dsn=dsn).assert_ok() == "no tasks\n\nsupervisors: 0 alive\n"
    report = json.loads(run_cli(tmp_path, "status", "--json", dsn=dsn).assert_ok())
    assert report == {"types": {}, "supervisors": [], "paused": [], "schedules": []}


# --- operator transitions ---------------------------------------------------------------------


def test_cancel_and_retry_move_a_task_and_say_so(dsn: str, store: Store, tmp_path: Path) -> None:
    """`cancel` ends a queued task; `retry` puts a cancelled or failed one back, attempts reset."""
    queued = store.enqueue(NewTask(type="resize"))
    failed = finished(store, "flaky", "failed")

    cancel_out = run_cli(tmp_path, "cancel", str(queued), dsn=dsn).assert_ok()
    assert store.get(queued).status is Status.CANCELLED  # type: ignore[union-attr]
    retry_cancelled = run_cli(tmp_path, "retry", str(queued), dsn=dsn).assert_ok()
    retry_failed = run_cli(tmp_path, "retry", str(failed), dsn=dsn).assert_ok()

    assert cancel_out == f"task {queued}: queued -> cancelled\n"
    assert retry_cancelled == f"task {queued}: cancelled -> queued\n"
    assert retry_failed == f"task {failed}: failed -> queued\n"
    for task_id in (queued, failed):
        row = store.get(task_id)
        assert row is not None
        assert (row.status, row.attempts, row.failure) == (Status.QUEUED, 0, None)


def test_cancelling_a_completed_task_is_refused(dsn: str, store: Store, tmp_path: Path) -> None:
    """Only queued or running tasks can be cancelled: a completed one is exit 1, one line
    naming its status, and the row is left as it was.
    """
    task_id = finished(store, "resize", "completed")
    before = store.get(task_id)

    message = run_cli(tmp_path, "cancel", str(task_id), dsn=dsn).assert_one_line_error(1)

    assert f"task {task_id} is completed" in message
    assert store.get(task_id) == before


def test_retrying_a_queued_task_is_refused(dsn: str, store: Store, tmp_path: Path) -> None:
    """Only failed or cancelled tasks can be retried: a queued one is exit 1, one line naming
    its status, and the row is left as it was.
    """
    task_id = store.enqueue(NewTask(type="resize"))
    before = store.get(task_id)

    message = run_cli(tmp_path, "retry", str(task_id), dsn=dsn).assert_one_line_error(1)

    assert f"task {task_id} is queued" in message
    assert store.get(task_id) == before


def test_cancelling_an_unknown_id_exits_1(dsn: str, store: Store, tmp_path: Path) -> None:
    """There is nothing to cancel: exit 1, one line naming the id."""
    message = run_cli(tmp_path, "cancel", "777", dsn=dsn).assert_one_line_error(1)

    assert "777" in message


# --- migrate and prune ------------------------------------------------------------------------


def test_migrate_is_idempotent_and_keeps_existing_tasks(
    dsn: str, store: Store, tmp_path: Path
) -> None:
    """`migrate` creates the schema; running it again changes nothing and loses no task."""
    first = run_cli(tmp_path, "migrate", dsn=dsn).assert_ok()
    task_id = store.enqueue(NewTask(type="resize", options="keep me"))
    second = run_cli(tmp_path, "migrate", dsn=dsn).assert_ok()

    assert first == second and first.startswith("schema ready at ")
    assert store.get(task_id).options == "keep me"  # type: ignore[union-attr]
    assert row_count(store) == 1


def test_prune_deletes_only_tasks_that_finished_longer_ago_than_asked(
    dsn: str, store: Store, tmp_path: Path
) -> None:
    """`prune --older-than S` deletes finished tasks whose completed_at is more than S seconds
    old; recently finished tasks and live tasks (however old) stay.
    """
    old_done = finished(store, "resize", "completed")
    old_failed = finished(store, "mail", "failed")
    recent_done = finished(store, "resize", "completed")
    old_queued = store.enqueue(NewTask(type="resize"))
    for task_id in (old_done, old_failed):
        backdate(dsn, task_id, "completed_at", 600)
    backdate(dsn, old_queued, "created_at", 600)

    out = run_cli(tmp_path, "prune", "--older-than", "300", dsn=dsn).assert_ok()

    assert out == "pruned 2 finished tasks\n"
    assert store.get(old_done) is None and store.get(old_failed) is None
    assert store.get(recent_done) is not None and store.get(old_queued) is not None


# --- bad input: one line, exit 2, nothing written ---------------------------------------------

BAD_INPUTS = {
    "type-with-space": ["enqueue", "a b", "{}"],
    "type-of-65-chars": ["enqueue", "x" * 65, "{}"],
    "empty-type": ["enqueue", "", "{}"],
    "unicode-type": ["enqueue", "tâche", "{}"],
    "options-not-utf8": ["enqueue", "t", b"\xff\xfe"],
    "max-attempts-0": ["enqueue", "t", "{}", "--max-attempts", "0"],
    "max-attempts-101": ["enqueue", "t", "{}", "--max-attempts", "101"],
    "max-attempts-x": ["enqueue", "t", "{}", "--max-attempts", "x"],
    "budget-0": ["enqueue", "t", "{}", "--budget", "0"],
    "budget-negative": ["enqueue", "t", "{}", "--budget", "-5"],
    "budget-abc": ["enqueue", "t", "{}", "--budget", "abc"],
    "budget-inf": ["enqueue", "t", "{}", "--budget", "inf"],
    "budget-nan": ["enqueue", "t", "{}", "--budget", "nan"],
    "delay-negative": ["enqueue", "t", "{}", "--delay", "-1"],
    "priority-not-integer": ["enqueue", "t", "{}", "--priority", "1.5"],
    "prune-nan": ["prune", "--older-than", "nan"],
    "prune-negative": ["prune", "--older-than", "-1"],
    "show-id-zero": ["show", "0"],
}


@pytest.mark.parametrize("args", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    sqlite_dsn: str, tmp_path: Path, args: list[str | bytes]
) -> None:
    """Input the rules refuse is reported in one line with exit status 2 before any write.

    These are checked before the database is opened, so SQLite stands for both backends.
    """
    store = open_store(parse_dsn(sqlite_dsn))
    store.migrate()
    store.enqueue(NewTask(type="existing"))

    run_cli(tmp_path, *args, dsn=sqlite_dsn).assert_one_line_error(2)

    assert row_count(store) == 1
    store.close()


BAD_FOR_THE_DATABASE = {
    "options-over-1mib-on-stdin": (["enqueue", "t", "-"], b"x" * (MIB + 1)),
    "multibyte-options-over-1mib-on-stdin": (["enqueue", "t", "-"], "é".encode() * (MIB // 2 + 1)),
    "options-on-stdin-not-utf8": (["enqueue", "t", "-"], b"{\xff}"),
    "priority-beyond-an-int-column": (["enqueue", "t", "{}", "--priority", str(2**31)], b""),
    "task-id-beyond-64-bits": (["cancel", str(2**64)], b""),
}


@pytest.mark.parametrize(
    ("args", "stdin"), list(BAD_FOR_THE_DATABASE.values()), ids=list(BAD_FOR_THE_DATABASE)
)
def test_input_a_database_cannot_hold_is_refused_as_bad_input(
    dsn: str, store: Store, tmp_path: Path, args: list[str], stdin: bytes
) -> None:
    """Oversized or non-UTF-8 options and out-of-range numbers are bad input (exit 2, one line),
    on every backend, not a database error or a crash; the options are never echoed back.
    """
    store.enqueue(NewTask(type="existing"))

    message = run_cli(tmp_path, *args, dsn=dsn, stdin=stdin).assert_one_line_error(2)

    assert "xxxx" not in message and "éé" not in message
    assert row_count(store) == 1


def test_options_over_1_mib_as_an_argument_are_refused(sqlite_dsn: str, tmp_path: Path) -> None:
    """The 1 MiB limit counts UTF-8 bytes of the argument too.

    Linux caps one execve argument at 128 KiB, so this one goes through the same
    ``main`` in a child interpreter rather than through a real argv.
    """
    code = (
        "import sys; from supervisor.cli import main; "
        f"sys.exit(main(['enqueue', 't', 'é' * ({MIB // 2} + 1)]))"
    )
    result = run_cli(tmp_path, dsn=sqlite_dsn, python_args=("-c", code))

    message = result.assert_one_line_error(2)
    assert "1 MiB" in message and "é" not in message
    assert not (tmp_path / "tasks.db").exists()


@pytest.mark.parametrize(
    "bad_dsn",
    [
        "nonsense",
        "postgres://x",
        f"mysql://root:{SECRET}@host-without-db",
        f"mysql://user:{SECRET}@host:notaport/db",
        "sqlite://",
    ],
)
def test_a_malformed_dsn_is_one_line_exit_2_without_the_password(
    tmp_path: Path, bad_dsn: str
) -> None:
    """A DSN that cannot be parsed is bad input: one line, exit 2, no password, no file made."""
    message = run_cli(tmp_path, "enqueue", "t", "{}", dsn=bad_dsn).assert_one_line_error(2)

    assert "DSN" in message
    assert SECRET not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["status", "--watch", "--count", "1"],
        ["show", "1"],
        ["retry", "1"],
        ["cancel", "1"],
        ["prune", "--older-than", "0"],
    ],
    ids="-".join,
)
def test_an_operator_command_on_a_missing_sqlite_file_refuses_and_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    """A typo in the DSN of a command that only reads or changes tasks names the missing file.

    Before, it created an empty database and answered "no tasks" from it: the
    operator looked at the wrong queue, and a stray file was left behind.
    """
    (tmp_path / "handlers").mkdir()
    dsn = f"sqlite:///{tmp_path / 'tasks-typo.db'}"

    message = run_cli(tmp_path, *args, dsn=dsn).assert_one_line_error(2)

    assert str(tmp_path / "tasks-typo.db") in message
    assert [p.name for p in tmp_path.iterdir()] == ["handlers"]


@pytest.mark.parametrize("args", [["migrate"], ["enqueue", "t"]], ids="-".join)
def test_migrate_and_enqueue_create_a_missing_sqlite_file(tmp_path: Path, args: list[str]) -> None:
    """The commands that start a queue may create its file (so may `run`)."""
    run_cli(tmp_path, *args, dsn=f"sqlite:///{tmp_path / 'new.db'}").assert_ok()

    assert (tmp_path / "new.db").is_file()


@pytest.mark.parametrize(
    ("bad_dsn", "env"),
    [
        (f"mysql://root:{SECRET}@127.0.0.1:1/x", {}),
        ("mysql://root@127.0.0.1:1/x", {"SUPERVISOR_DB_PASSWORD": SECRET}),
    ],
    ids=["password-in-dsn", "password-in-env"],
)
def test_an_unreachable_database_is_exit_1_and_the_password_stays_secret(
    tmp_path: Path, bad_dsn: str, env: dict[str, str]
) -> None:
    """Nothing listens on port 1: a runtime failure (1), one line naming the server, no secret."""
    message = run_cli(tmp_path, "enqueue", "t", "{}", dsn=bad_dsn, env=env).assert_one_line_error(1)

    assert "127.0.0.1" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "args", [["enqueue"], ["show"], ["prune"]], ids=["enqueue-type", "show-id", "prune-older-than"]
)
def test_a_missing_argument_is_one_line_exit_2(
    sqlite_dsn: str, tmp_path: Path, args: list[str]
) -> None:
    """A required argument left out is bad input, reported in one line pointing to --help."""
    message = run_cli(tmp_path, *args, dsn=sqlite_dsn).assert_one_line_error(2)

    assert "required" in message and "--help" in message
    assert not (tmp_path / "tasks.db").exists()


# --- the password from the environment ----------------------------------------------------------


@pytest.fixture
def password_user_dsn(mysql_dsn: str) -> Iterator[tuple[str, str]]:
    """A MySQL user that needs a password, allowed into the test's database.

    Yields (DSN without the password, the password).
    """
    admin_dsn = parse_dsn(mysql_dsn)
    assert isinstance(admin_dsn, MysqlDsn)
    user, password = f"sv_e2e_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = pymysql.connect(
        host=admin_dsn.host, port=admin_dsn.port, user=admin_dsn.user,
        password=admin_dsn.password, autocommit=True,
    )  # fmt: skip
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
            cursor.execute(f"GRANT ALL ON `{admin_dsn.database}`.* TO '{user}'@'%'")
        yield (f"mysql://{user}@{admin_dsn.host}:{admin_dsn.port}/{admin_dsn.database}", password)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()


@pytest.mark.mysql
def test_the_password_can_come_from_supervisor_db_password(
    password_user_dsn: tuple[str, str], mysql_dsn: str, tmp_path: Path
) -> None:
    """With SUPERVISOR_DB_PASSWORD the DSN (and so the command line) needs no password; a wrong
    one is refused by the server, exit 1, and is not echoed.
    """
    dsn, password = password_user_dsn

    refused = run_cli(
        tmp_path, "enqueue", "t", "{}", dsn=dsn, env={"SUPERVISOR_DB_PASSWORD": "wrong-pw-123"}
    )
    accepted = run_cli(
        tmp_path, "enqueue", "t", "{}", dsn=dsn, env={"SUPERVISOR_DB_PASSWORD": password}
    )

    assert "wrong-pw-123" not in refused.assert_one_line_error(1)
    task_id = int(accepted.assert_ok())
    check = open_store(parse_dsn(mysql_dsn))
    try:
        assert row_count(check) == 1
        assert check.get(task_id) is not None
    finally:
        check.close()


# --- run flags (parsing only: the supervisor itself is not started here) -------------------------


def test_help_documents_every_run_flag_and_its_environment_variable(tmp_path: Path) -> None:
    """`python -m supervisor --help` exits 0 and lists each run flag with its SUPERVISOR_* name."""
    out = run_cli(tmp_path, "--help").assert_ok()

    for flag in RUN_FLAGS:
        assert flag in out, flag
        env = "SUPERVISOR_" + flag.lstrip("-").replace("-", "_").upper()
        assert env in out, env


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--workers", "0"], {}, "--workers"),
        ([], {"SUPERVISOR_WORKERS": "x"}, "SUPERVISOR_WORKERS"),
        (["--drain-timeout", "-1"], {}, "--drain-timeout"),
        (["--backoff", "1,x"], {}, "--backoff"),
        (["--metrics-port", "70000"], {}, "--metrics-port"),
        ([], {"SUPERVISOR_LOG_LEVEL": "LOUD"}, "SUPERVISOR_LOG_LEVEL"),
    ],
    ids=["workers-0", "env-workers-x", "drain-timeout-negative", "backoff-x", "port-70000",
         "env-log-level"],
)  # fmt: skip
def test_a_bad_run_setting_is_one_line_exit_2_naming_the_flag_or_variable(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    """A run setting is checked before anything starts; the message names where it came from."""
    dsn = f"sqlite:///{tmp_path / 'never.db'}"
    message = run_cli(tmp_path, *args, dsn=dsn, env=env).assert_one_line_error(2)

    assert named in message
    assert list(tmp_path.iterdir()) == []


def test_status_watch_redraws_the_live_queue_with_last_minute_outcomes(
    sqlite_dsn: str, tmp_path: Path
) -> None:
    """--watch prints a snapshot each refresh; --count bounds it for scripts.

    Into a pipe (as here) the snapshots follow one another as plain text: no
    clear-screen codes, which would be garbage in a file or a pager.
    """
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "resize.py").write_text("def handle(task, progress):\n    pass\n")
    run_cli(tmp_path, "enqueue", "resize", dsn=sqlite_dsn).assert_ok()
    run_cli(tmp_path, "enqueue", "orphan", dsn=sqlite_dsn).assert_ok()

    out = run_cli(tmp_path, "status", "--watch", "--count", "2", dsn=sqlite_dsn).assert_ok()

    assert "\x1b" not in out, repr(out)
    frames = [frame for frame in out.split("\n\n\n") if frame.strip()]
    assert len(frames) == 2, repr(out)
    assert all(frame.startswith("supervisor status") for frame in frames)
    header, *rows = frames[-1].strip().splitlines()[2:]
    assert header.split() == [
        "TYPE", "queued", "running", "oldest", "+done", "+failed", "+cancel", "done/s",
    ]  # fmt: skip
    by_type = {row.split()[0]: row for row in rows}
    assert by_type["resize"].split()[1:3] == ["1", "0"]
    assert "no handler here" in by_type["orphan"]


def test_status_watch_of_an_empty_queue_says_so(sqlite_dsn: str, tmp_path: Path) -> None:
    run_cli(tmp_path, "migrate", dsn=sqlite_dsn).assert_ok()
    out = run_cli(tmp_path, "status", "--watch", "--count", "1", dsn=sqlite_dsn).assert_ok()
    assert "no tasks" in out


def test_status_watch_on_a_terminal_clears_the_screen_before_each_refresh(
    sqlite_dsn: str, tmp_path: Path
) -> None:
    """On a terminal --watch redraws in place: each refresh starts with the clear-screen code."""
    run_cli(tmp_path, "enqueue", "resize", dsn=sqlite_dsn).assert_ok()
    primary, secondary = pty.openpty()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "status", "--watch", "--count", "2"],
            cwd=tmp_path,
            env=clean_env(SUPERVISOR_DSN=sqlite_dsn),
            stdin=subprocess.DEVNULL,
            stdout=secondary,
            stderr=subprocess.PIPE,
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = child.communicate(timeout=60)
    finally:
        os.close(primary)
    out = b"".join(chunks).decode()
    assert child.returncode == 0, err
    assert out.count("\x1b[H\x1b[2J") == 2, repr(out)


# --- pipes into pagers and head ---------------------------------------------------------------


def run_into_closed_pipe(cwd: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout a pipe whose reader has already gone (``| head`` that is done)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", *args],
            cwd=cwd,
            env=clean_env(SUPERVISOR_DSN=dsn),
            stdin=subprocess.DEVNULL,
            stdout=writer,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)


@pytest.mark.parametrize(
    "args",
    [
        ["show", "1"],
        ["show", "1", "--json"],
        ["status"],
        ["status", "--json"],
        ["status", "--watch", "--count", "2"],
        ["enqueue", "t"],
    ],
    ids="-".join,
)
def test_output_into_a_closed_pipe_ends_quietly(
    dsn: str, store: Store, tmp_path: Path, args: list[str]
) -> None:
    """A reader that stops early (`| head -1`, a pager quit) is normal: no traceback, no noise.

    The exit status is 141 (128 + SIGPIPE), what a shell reports for other tools
    ended by a closed pipe, so `set -o pipefail` scripts still see it.
    """
    store.enqueue(NewTask(type="resize"))

    done = run_into_closed_pipe(tmp_path, dsn, *args)

    assert done.stderr == b"", done.stderr.decode()
    assert done.returncode == 141


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"]], ids="-".join)
def test_help_into_a_closed_pipe_ends_quietly(
    sqlite_dsn: str, tmp_path: Path, args: list[str]
) -> None:
    """argparse swallows the failed write of its help; the final flush must not fail either."""
    done = run_into_closed_pipe(tmp_path, sqlite_dsn, *args)

    assert done.stderr == b"", done.stderr.decode()
    assert done.returncode in (0, 141)


def test_status_piped_into_head_prints_one_line_and_no_traceback(
    dsn: str, store: Store, tmp_path: Path
) -> None:
    """`status | head -1` with a table longer than the pipe buffer: the first line, no error."""
    store.enqueue_many([NewTask(type=f"type-{n:04d}-{'x' * 40}") for n in range(2000)])
    env = clean_env(SUPERVISOR_DSN=dsn)
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m supervisor status 2>err.txt | head -1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0
    assert done.stdout.decode().startswith("TYPE")
    assert (tmp_path / "err.txt").read_text() == ""


# --- odd rows: plain SQL is a supported producer, so rows may hold anything ------------------

ESCAPE = "\x1b"
ODD_TYPE = "paint\x1b[31m"
ODD_ERROR = "boom\x1b[2J\x07\rgone"
ZERO_DATE = "0000-00-00 00:00:00"


def execute_sql(dsn: str, statement: str, params: Sequence[object] = ()) -> None:
    """Run one statement as another producer would; on MariaDB without strict mode.

    Without strict mode MariaDB stores what it cannot refuse: an invalid ENUM
    value as the empty status, an impossible date as the zero date.
    ``statement`` uses ``?`` placeholders (turned into ``%s`` for pymysql).
    """
    parsed = parse_dsn(dsn)
    if isinstance(parsed, SqliteDsn):
        with sqlite3.connect(parsed.path) as conn:
            conn.execute(statement, tuple(params))
        conn.close()
        return
    assert isinstance(parsed, MysqlDsn)
    conn = pymysql.connect(
        host=parsed.host, port=parsed.port, user=parsed.user, password=parsed.password,
        database=parsed.database, autocommit=True,
    )  # fmt: skip
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = ''")
            cursor.execute(statement.replace("?", "%s"), tuple(params))
    finally:
        conn.close()


def test_status_and_show_read_rows_with_zero_dates_and_an_empty_status(
    dsn: str, store: Store, tmp_path: Path
) -> None:
    """Rows no lifecycle rule made are still shown as they are, never a traceback.

    On MariaDB a permissive INSERT leaves an empty status and zero dates; SQLite's
    text columns take the zero date as it is (its CHECK refuses an odd status).
    """
    good = store.enqueue(NewTask(type="odd"))
    backdate(dsn, good, "run_at", 60)
    odd_status = "'bogus'" if dsn.startswith("mysql") else "'queued'"
    execute_sql(
        dsn,
        "INSERT INTO tasks (type, status, created_at, run_at, deadline_at, updated_at, started_at)"
        f" VALUES ('odd', {odd_status}, ?, ?, ?, ?, ?)",
        [ZERO_DATE] * 5,
    )
    odd = good + 1

    table = run_cli(tmp_path, "status", dsn=dsn).assert_ok()
    report = json.loads(run_cli(tmp_path, "status", "--json", dsn=dsn).assert_ok())
    watched = run_cli(tmp_path, "status", "--watch", "--count", "1", dsn=dsn).assert_ok()
    shown = run_cli(tmp_path, "show", str(odd), dsn=dsn).assert_ok()
    as_json = json.loads(run_cli(tmp_path, "show", str(odd), "--json", dsn=dsn).assert_ok())

    assert "odd" in table and "odd" in watched
    # The zero date neither hides the real head of the queue nor makes it 2,000 years old.
    assert 60 <= report["types"]["odd"]["oldest_queued_age_s"] < 120
    assert sum(report["types"]["odd"]["counts"].values()) == 2
    fields = {
        key: value.strip() for key, _, value in (x.partition(" ") for x in shown.splitlines())
    }
    assert fields["id"] == str(odd)
    assert ZERO_DATE in fields["created_at"]
    assert ZERO_DATE in as_json["created_at"]
    if dsn.startswith("mysql"):
        assert as_json["status"] == ""
        assert report["types"]["odd"]["counts"]["other"] == 1
        for command in ("cancel", "retry"):  # neither applies to such a row: one line, exit 1
            message = run_cli(tmp_path, command, str(odd), dsn=dsn).assert_one_line_error(1)
            assert "status ''" in message


def test_control_characters_in_types_and_errors_are_printed_escaped(
    dsn: str, store: Store, tmp_path: Path
) -> None:
    """A type or last_error holding ANSI escapes is shown as visible text, never interpreted.

    Otherwise a row could clear the operator's screen, recolour it or rewrite
    lines already printed (a carriage return). JSON escapes them by itself.
    """
    execute_sql(
        dsn,
        "INSERT INTO tasks (type, status, failure, last_error) VALUES (?, 'failed', 'error', ?)",
        [ODD_TYPE, ODD_ERROR],
    )
    (line,) = store.counts()
    task_id = "1"  # the first row of a fresh table

    outputs = {
        "status": run_cli(tmp_path, "status", dsn=dsn).assert_ok(),
        "watch": run_cli(tmp_path, "status", "--watch", "--count", "1", dsn=dsn).assert_ok(),
        "show": run_cli(tmp_path, "show", task_id, dsn=dsn).assert_ok(),
        "show --json": run_cli(tmp_path, "show", task_id, "--json", dsn=dsn).assert_ok(),
        "status --json": run_cli(tmp_path, "status", "--json", dsn=dsn).assert_ok(),
    }

    assert line.type == ODD_TYPE
    for name, out in outputs.items():
        assert ESCAPE not in out and "\x07" not in out and "\r" not in out, (name, out)
    for name in ("status", "watch", "show"):
        assert "paint\\x1b[31m" in outputs[name], outputs[name]
    assert "boom\\x1b[2J\\x07\\rgone" in outputs["show"]
    assert json.loads(outputs["show --json"])["last_error"] == ODD_ERROR


def test_enqueue_with_a_unique_key_prints_the_live_tasks_id_and_says_it_already_exists(
    tmp_path: Path, dsn: str
) -> None:
    """Both runs exit 0 and print the one task's id: the task the caller asked for exists."""
    first = run_cli(tmp_path, "enqueue", "report", "{}", "--unique-key", "2026-11-30", dsn=dsn)
    again = run_cli(tmp_path, "enqueue", "report", "{}", "--unique-key", "2026-11-30", dsn=dsn)
    assert (first.rc, again.rc) == (0, 0)
    assert first.out == again.out and int(first.out) > 0
    assert first.err == ""
    assert f"task {int(first.out)} of type report already exists" in again.err
    assert run_cli(tmp_path, "cancel", first.out.strip(), dsn=dsn).rc == 0
    fresh = run_cli(tmp_path, "enqueue", "report", "{}", "--unique-key", "2026-11-30", dsn=dsn)
    assert fresh.rc == 0 and fresh.out != first.out, "a key is free once its task ended"
    blocked = run_cli(tmp_path, "retry", first.out.strip(), dsn=dsn)
    assert f"task {int(fresh.out)} of the same type is live" in blocked.assert_one_line_error(1)
