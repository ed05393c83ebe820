"""The first five minutes of ``run``: what a new user's mistakes look like.

A busy metrics port, a missing handlers folder, a wrong MySQL database or
password, an unknown host: each is one line and an exit status at start,
never a supervisor that idles or retries forever. A database that is only
unreachable is retried for ``--startup-timeout`` seconds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.dsn import MysqlDsn, parse_dsn
from supervisor.store.migrator import latest
from tests.conftest import migrated_store
from tests.e2e.harness import Launcher
from tests.e2e.test_cli import run_cli


@pytest.fixture
def launch(tmp_path: Path, sqlite_dsn: str) -> Iterator[Launcher]:
    with Launcher(tmp_path, sqlite_dsn) as launcher:
        yield launcher


def run_args(tmp_path: Path, *extra: str) -> tuple[str, ...]:
    (tmp_path / "handlers").mkdir(exist_ok=True)
    return ("run", "--workers", "1", "--metrics-port", "0", "--log-format", "json", *extra)


def test_a_busy_metrics_port_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = run_args(tmp_path, "--metrics-port", port)
        result = run_cli(tmp_path, *args, dsn=f"sqlite:///{tmp_path / 'q.db'}")
    message = result.assert_one_line_error(1)
    assert "--metrics-port" in message and port in message


def test_a_missing_handlers_folder_is_exit_2_with_one_line(tmp_path: Path) -> None:
    args = run_args(tmp_path, "--handlers", "nowhere")
    result = run_cli(tmp_path, *args, dsn=f"sqlite:///{tmp_path / 'q.db'}")
    message = result.assert_one_line_error(2)
    assert str(tmp_path / "nowhere") in message and "--handlers" in message
    assert not (tmp_path / "q.db").exists()


def test_the_start_up_line_names_the_absolute_database_handlers_and_types(
    launch: Launcher,
) -> None:
    launch.handler("echo", "def handle(task, progress):\n    pass\n")
    supervisor = launch.start_ready()
    line = supervisor.wait_log(message="supervisor starting")
    assert line["database"] == str(Path(launch.dsn.removeprefix("sqlite:///")).resolve())
    assert line["handlers"] == str(launch.handlers.resolve())
    assert line["types"] == ["echo"]


def mysql_variant(mysql_dsn: str, **changes: str) -> str:
    dsn = parse_dsn(mysql_dsn)
    assert isinstance(dsn, MysqlDsn)
    user = changes.get("user", dsn.user)
    password = changes.get("password", dsn.password)
    auth = f"{user}:{password}" if password else user
    host = changes.get("host", dsn.host)
    port = changes.get("port", str(dsn.port))
    database = changes.get("database", dsn.database)
    return f"mysql://{auth}@{host}:{port}/{database}"


@pytest.mark.mysql
@pytest.mark.parametrize(
    "changes",
    [
        {"database": "sv_no_such_database"},
        {"user": "sv_no_such_user", "password": "wrong"},
        {"host": "no-such-host.invalid"},
    ],
    ids=["unknown-database", "access-denied", "unknown-host"],
)
def test_a_mysql_configuration_error_is_exit_1_at_start(
    tmp_path: Path, mysql_dsn: str, changes: dict[str, str]
) -> None:
    dsn = mysql_variant(mysql_dsn, **changes)
    started = time.monotonic()
    result = run_cli(tmp_path, *run_args(tmp_path), dsn=dsn)
    assert time.monotonic() - started < 20
    message = result.assert_one_line_error(1)
    assert "MySQL" in message and "wrong" not in message


@pytest.mark.mysql
def test_an_unreachable_mysql_is_retried_for_the_start_up_timeout_then_exit_1(
    tmp_path: Path, mysql_dsn: str
) -> None:
    dsn = mysql_variant(mysql_dsn, port="1")  # nothing listens: connection refused (2003)
    started = time.monotonic()
    result = run_cli(tmp_path, *run_args(tmp_path, "--startup-timeout", "2"), dsn=dsn)
    took = time.monotonic() - started
    assert result.rc == 1, result.err
    assert 2 <= took < 15
    assert "Traceback" not in result.err
    assert "2 s" in result.err.strip().splitlines()[-1]


def test_a_schema_newer_than_the_supervisor_is_refused_by_run_and_commands_in_one_line(
    tmp_path: Path, dsn: str
) -> None:
    """A newer release migrated this database: this one cannot know what its columns mean."""
    assert run_cli(tmp_path, "migrate", dsn=dsn).rc == 0
    with migrated_store(dsn) as store:
        newer = latest("mysql" if dsn.startswith("mysql") else "sqlite") + 1
        store._run("record_migration", {"version": newer, "name": "future"})  # type: ignore[attr-defined]
    for args in (run_args(tmp_path), ("status",), ("enqueue", "echo")):
        message = run_cli(tmp_path, *args, dsn=dsn).assert_one_line_error(1)
        assert f"schema is version {newer}" in message and "upgrade the supervisor" in message
