"""Parsing the storage DSN: every accepted form, and a password that never leaks."""

from __future__ import annotations

import pytest

from supervisor.dsn import DEFAULT_DSN, PASSWORD_ENV, MysqlDsn, SqliteDsn, parse_dsn
from supervisor.errors import UsageError

SECRET = "s3cr3t-Pw"
NO_ENV: dict[str, str] = {}


def mysql(text: str, environ: dict[str, str] | None = None) -> MysqlDsn:
    dsn = parse_dsn(text, NO_ENV if environ is None else environ)
    assert isinstance(dsn, MysqlDsn)
    return dsn


# --- SQLite --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("sqlite:///supervisor.db", "supervisor.db"),
        ("sqlite:///data/tasks.db", "data/tasks.db"),
        ("sqlite:////var/lib/supervisor/tasks.db", "/var/lib/supervisor/tasks.db"),
        ("SQLite:///tasks.db", "tasks.db"),
    ],
)
def test_sqlite_dsn_relative_with_three_slashes_absolute_with_four(text: str, path: str) -> None:
    assert parse_dsn(text, NO_ENV) == SqliteDsn(path=path)


def test_default_dsn_is_an_embedded_sqlite_file() -> None:
    assert parse_dsn(DEFAULT_DSN, NO_ENV) == SqliteDsn(path="supervisor.db")


def test_sqlite_redacted_names_the_file() -> None:
    assert parse_dsn("sqlite:////tmp/x.db", NO_ENV).redacted() == "sqlite:////tmp/x.db"


# --- MySQL ---------------------------------------------------------------------------------


def test_mysql_dsn_with_every_part() -> None:
    dsn = mysql(f"mysql://app:{SECRET}@db.example.com:3307/queue")
    assert dsn == MysqlDsn(
        host="db.example.com", port=3307, user="app", password=SECRET, database="queue"
    )
    assert dsn.unix_socket is None
    assert dsn.connect_timeout == 5.0


@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql", "mariadb", "MySQL", "MARIADB"])
def test_mysql_schemes(scheme: str) -> None:
    assert mysql(f"{scheme}://app@db/queue").database == "queue"


def test_mysql_port_defaults_to_3306() -> None:
    assert mysql("mysql://app@db/queue").port == 3306


def test_mysql_without_a_password_anywhere_has_an_empty_one() -> None:
    assert mysql("mysql://root@127.0.0.1/test").password == ""


def test_mysql_password_comes_from_the_environment_when_not_in_the_dsn() -> None:
    dsn = mysql("mysql://app@db:3306/queue", {PASSWORD_ENV: SECRET})
    assert dsn.password == SECRET


def test_mysql_password_is_read_from_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    dsn = parse_dsn("mysql://app@db/queue")
    assert isinstance(dsn, MysqlDsn) and dsn.password == SECRET


def test_mysql_password_in_the_dsn_wins_over_the_environment() -> None:
    assert mysql(f"mysql://app:{SECRET}@db/queue", {PASSWORD_ENV: "other"}).password == SECRET


def test_mysql_parts_are_percent_decoded() -> None:
    dsn = mysql("mysql://us%40er:p%40ss%3Aw%2Fd@db/my%20db")
    assert (dsn.user, dsn.password, dsn.database) == ("us@er", "p@ss:w/d", "my db")


def test_mysql_password_may_contain_an_unencoded_at_sign() -> None:
    """The host starts after the last '@'."""
    dsn = mysql("mysql://app:p@ss@db/queue")
    assert (dsn.password, dsn.host) == ("p@ss", "db")


def test_mysql_ipv6_host() -> None:
    dsn = mysql("mysql://app@[::1]:3307/queue")
    assert (dsn.host, dsn.port) == ("::1", 3307)


def test_mysql_unix_socket_and_connect_timeout_parameters() -> None:
    dsn = mysql(
        "mysql://app@localhost/queue?unix_socket=/run/mysqld/mysqld.sock&connect_timeout=2.5"
    )
    assert dsn.unix_socket == "/run/mysqld/mysqld.sock"
    assert dsn.connect_timeout == 2.5


def test_with_database_keeps_everything_else() -> None:
    dsn = mysql(f"mysql://app:{SECRET}@db:3307/queue?connect_timeout=2")
    other = dsn.with_database("other")
    assert other.database == "other"
    assert (other.host, other.port, other.user, other.password, other.connect_timeout) == (
        "db",
        3307,
        "app",
        SECRET,
        2.0,
    )


# --- the password never shows ---------------------------------------------------------------


def test_redacted_names_the_server_but_hides_the_password() -> None:
    dsn = mysql(f"mysql://app:{SECRET}@db.example.com:3307/queue")
    assert dsn.redacted() == "mysql://app:***@db.example.com:3307/queue"
    assert SECRET not in dsn.redacted()


def test_redacted_hides_a_password_from_the_environment() -> None:
    dsn = mysql("mysql://app@db/queue", {PASSWORD_ENV: SECRET})
    assert SECRET not in dsn.redacted()
    assert "***" in dsn.redacted()


def test_redacted_without_a_password_shows_no_placeholder() -> None:
    assert mysql("mysql://root@db/queue").redacted() == "mysql://root@db:3306/queue"


def test_repr_and_str_never_show_the_password() -> None:
    dsn = mysql(f"mysql://app:{SECRET}@db/queue")
    assert SECRET not in repr(dsn)
    assert SECRET not in str(dsn)


# --- malformations --------------------------------------------------------------------------

MALFORMED = {
    "no scheme": f"app:{SECRET}@db/queue",
    "empty": "",
    "unknown scheme": f"postgres://app:{SECRET}@db/queue",
    "scheme made of the credentials": f"app:{SECRET}@db://queue",
    "sqlite without a path": "sqlite:///",
    "sqlite with two slashes": "sqlite://tasks.db",
    "mysql without host": f"mysql://app:{SECRET}@/queue",
    "mysql without database": f"mysql://app:{SECRET}@db",
    "mysql with an empty database": f"mysql://app:{SECRET}@db/",
    "mysql with a nested database": f"mysql://app:{SECRET}@db/queue/extra",
    "mysql without user": f"mysql://:{SECRET}@db/queue",
    "mysql with a non-numeric port": f"mysql://app:{SECRET}@db:port/queue",
    "mysql with a port out of range": f"mysql://app:{SECRET}@db:70000/queue",
    "mysql with port zero": f"mysql://app:{SECRET}@db:0/queue",
    "mysql with a broken IPv6 host": f"mysql://app:{SECRET}@[::1/queue",
    "mysql with an unknown parameter": f"mysql://app:{SECRET}@db/queue?ssl=1",
    "mysql with the password as a parameter": f"mysql://app@db/queue?password={SECRET}",
    "mysql with a non-numeric timeout": f"mysql://app:{SECRET}@db/queue?connect_timeout={SECRET}",
    "mysql with an empty timeout": f"mysql://app:{SECRET}@db/queue?connect_timeout=",
    "mysql with a zero timeout": f"mysql://app:{SECRET}@db/queue?connect_timeout=0",
    "mysql with a negative timeout": f"mysql://app:{SECRET}@db/queue?connect_timeout=-1",
    "mysql with a NaN timeout": f"mysql://app:{SECRET}@db/queue?connect_timeout=nan",
    "mysql with an infinite timeout": f"mysql://app:{SECRET}@db/queue?connect_timeout=inf",
    "mysql with a timeout over a year": f"mysql://app:{SECRET}@db/queue?connect_timeout=1e9",
}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_dsn_is_a_usage_error_that_never_shows_the_password(text: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_dsn(text, {PASSWORD_ENV: SECRET})
    message = str(raised.value)
    assert message
    assert SECRET not in message
    assert SECRET.lower() not in message.lower()


def test_unknown_scheme_is_named_in_the_error() -> None:
    with pytest.raises(UsageError, match="'postgres'"):
        parse_dsn("postgres://app@db/queue", NO_ENV)


def test_unknown_parameter_is_named_in_the_error() -> None:
    with pytest.raises(UsageError, match="ssl"):
        parse_dsn("mysql://app@db/queue?ssl=1", NO_ENV)
