"""Parse the storage DSN into a typed record; the password never appears in its text form.

Accepted forms::

    sqlite:///relative/file.db      sqlite:////absolute/file.db
    mysql://user[:password]@host[:port]/database[?unix_socket=/path&connect_timeout=5]

The MySQL password may instead come from ``SUPERVISOR_DB_PASSWORD`` so that it
never has to be on a command line.
"""

from __future__ import annotations

import math
import os
import re
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from supervisor.errors import UsageError

DEFAULT_DSN = "sqlite:///supervisor.db"
PASSWORD_ENV = "SUPERVISOR_DB_PASSWORD"
MYSQL_SCHEMES = ("mysql", "mysql+pymysql", "mariadb")
MYSQL_PARAMS = ("unix_socket", "connect_timeout")
# pymysql refuses a longer or non-positive timeout, but only when it connects: check it here.
MAX_CONNECT_TIMEOUT_S = 365 * 24 * 3600
# What a URL scheme may look like (RFC 3986). Anything else before "://" is not quoted
# back in an error: it may be credentials typed without a scheme.
SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")


@attrs.frozen(kw_only=True)
class SqliteDsn:
    path: str

    def redacted(self) -> str:
        return f"sqlite:///{self.path}"


@attrs.frozen(kw_only=True)
class MysqlDsn:
    host: str
    port: int
    user: str
    password: str = attrs.field(repr=False)
    database: str
    unix_socket: str | None = None
    connect_timeout: float = 5.0

    def redacted(self) -> str:
        secret = ":***" if self.password else ""
        return f"mysql://{self.user}{secret}@{self.host}:{self.port}/{self.database}"

    def with_database(self, database: str) -> MysqlDsn:
        return attrs.evolve(self, database=database)


Dsn = SqliteDsn | MysqlDsn


def parse_dsn(text: str, environ: dict[str, str] | None = None) -> Dsn:
    """Parse ``text``; any malformation is a :class:`UsageError` naming the part that is wrong.

    The error message quotes the DSN only in redacted form.
    """
    env = os.environ if environ is None else environ
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise UsageError("DSN must look like sqlite:///file.db or mysql://user@host:3306/db")
    scheme = scheme.lower()
    if scheme == "sqlite":
        return _parse_sqlite(rest)
    if scheme in MYSQL_SCHEMES:
        return _parse_mysql(text, env)
    shown = f" {scheme!r}" if SCHEME.fullmatch(scheme) else ""
    raise UsageError(f"DSN scheme{shown} is not supported: use sqlite:// or mysql://")


def _parse_sqlite(rest: str) -> SqliteDsn:
    if not rest.startswith("/") or rest == "/":
        raise UsageError("SQLite DSN must be sqlite:///relative.db or sqlite:////absolute.db")
    return SqliteDsn(path=rest[1:])


def _parse_mysql(text: str, env: os._Environ[str] | dict[str, str]) -> MysqlDsn:
    try:
        parts = urlsplit(text)
        port = 3306 if parts.port is None else parts.port
    except ValueError:
        raise UsageError("MySQL DSN has a malformed host or port") from None
    if port == 0:  # no server listens there: an explicit ":0" is a typo, not the default port
        raise UsageError("MySQL DSN port must be between 1 and 65535")
    database = unquote(parts.path.lstrip("/"))
    if not parts.hostname:
        raise UsageError("MySQL DSN needs a host: mysql://user@host:3306/database")
    if not database or "/" in database:
        raise UsageError("MySQL DSN needs one database name: mysql://user@host:3306/database")
    if not parts.username:
        raise UsageError("MySQL DSN needs a user: mysql://user@host:3306/database")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(MYSQL_PARAMS))
    if unknown:
        raise UsageError(f"MySQL DSN has unknown parameters: {', '.join(unknown)}")
    timeout_text = query.get("connect_timeout", ["5"])[-1]
    try:
        connect_timeout = float(timeout_text)
    except ValueError:
        connect_timeout = math.nan
    if not 0 < connect_timeout <= MAX_CONNECT_TIMEOUT_S:
        raise UsageError("MySQL DSN connect_timeout must be seconds above 0, at most a year")
    password = unquote(parts.password) if parts.password is not None else env.get(PASSWORD_ENV, "")
    return MysqlDsn(
        host=parts.hostname,
        port=port,
        user=unquote(parts.username),
        password=password,
        database=database,
        unix_socket=query.get("unix_socket", [None])[-1],
        connect_timeout=connect_timeout,
    )
