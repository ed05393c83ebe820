"""Settings of a running supervisor, from flags with ``SUPERVISOR_<NAME>`` environment defaults.

Every flag can be given in the environment (``--drain-timeout`` is
``SUPERVISOR_DRAIN_TIMEOUT``) so that a unit file or container spec needs no
command line, and the DSN with its password never has to be on one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from supervisor.dsn import DEFAULT_DSN, Dsn, parse_dsn
from supervisor.errors import UsageError
from supervisor.lifecycle import Backoff
from supervisor.privileges import ChildUser

LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


@attrs.frozen(kw_only=True)
class Settings:
    dsn: Dsn
    workers: int = 4
    handlers_dir: Path = Path("handlers")
    backoff: Backoff = attrs.field(factory=Backoff)
    drain_timeout_s: float = 60.0
    lease_s: float = 60.0
    poll_interval_s: float = 0.15
    max_tasks_per_child: int = 0
    max_child_rss_mib: float = 0.0  # --max-child-rss: recycle a child over it after a task
    metrics_port: int = 9191
    startup_timeout_s: float = 60.0
    metrics_host: str = "127.0.0.1"
    log_format: str = "auto"
    log_level: str = "INFO"
    child_user: ChildUser | None = None  # children drop to this user (the parent is root)
    burst: bool = False  # --burst: run what is runnable now, then exit (supervisor.burst)
    # The operator's page at / needs it when set, and must have it beyond 127.0.0.1.
    web_token: str | None = attrs.field(default=None, repr=False)

    @property
    def heartbeat_s(self) -> float:
        """Leases are renewed three times per lease, so two missed beats are survivable.

        After a database error the parent retries within half a heartbeat and
        renews at the first answer, which keeps that margin during outages.
        """
        return self.lease_s / 3

    @property
    def max_child_rss_bytes(self) -> int:
        return int(self.max_child_rss_mib * 1024 * 1024)


def env_name(flag: str) -> str:
    return "SUPERVISOR_" + flag.lstrip("-").replace("-", "_").upper()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError
    return value


def _token(text: str) -> str | None:
    return text or None


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError
    return value


def _child_user(text: str) -> ChildUser | None:
    """Resolved here, once: a user added or renamed later does not change a running supervisor."""
    return ChildUser.resolve(text) if text else None


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        for choice in choices:
            if text.lower() == choice.lower():
                return choice
        raise ValueError

    return convert


# flag, converter, default, what the value must be (for errors), help
RUN_FLAGS: list[tuple[str, Callable[[str], Any], str, str, str]] = [
    (
        "--workers",
        _positive_int,
        str(os.cpu_count() or 2),
        "a whole number >= 1",
        "child processes that run tasks at once (default: number of CPUs)",
    ),
    (
        "--dsn",
        str,
        DEFAULT_DSN,
        "a DSN",
        "database: sqlite:///file.db or mysql://user@host:3306/db (password may come from "
        "SUPERVISOR_DB_PASSWORD)",
    ),
    (
        "--handlers",
        str,
        "handlers",
        "a folder",
        "folder of handler files: <task_type>.py defining handle(task, progress)",
    ),
    (
        "--backoff",
        Backoff.parse,
        "0,30,300",
        "seconds like 0,30,300",
        "delay before attempt 1, 2, 3, ... (the first is the initial run); the last repeats",
    ),
    (
        "--drain-timeout",
        _positive_float,
        "60",
        "seconds > 0",
        "on TERM/INT, how long in-flight tasks may finish before they are put back",
    ),
    (
        "--lease",
        _positive_float,
        "60",
        "seconds > 0",
        "claim lease; renewed every lease/3, and a task whose lease runs out is rescued",
    ),
    (
        "--poll-interval",
        _positive_float,
        "0.15",
        "seconds > 0",
        "how often an idle supervisor looks for work (a full batch polls again at once)",
    ),
    (
        "--max-tasks-per-child",
        _non_negative_int,
        "0",
        "a whole number >= 0",
        "recycle a child after this many tasks (0 = never, 1 = fresh process per task)",
    ),
    (
        "--max-child-rss",
        _non_negative_float,
        "0",
        "MiB >= 0",
        "recycle a child whose RSS is over this many MiB after a task (0 = never)",
    ),
    (
        "--metrics-port",
        _port,
        "9191",
        "a port 0-65535",
        "serve Prometheus /metrics and /healthz on this port (0 = off)",
    ),
    (
        "--startup-timeout",
        _positive_float,
        "60",
        "seconds > 0",
        "how long run retries a database that cannot be reached at start before exiting 1",
    ),
    ("--metrics-host", str, "127.0.0.1", "a host", "address the metrics server binds to"),
    (
        "--log-format",
        _choice(LOG_FORMATS),
        "auto",
        "auto, json or text",
        "auto = text on a terminal, JSON lines otherwise",
    ),
    ("--log-level", _choice(LOG_LEVELS), "INFO", "a loguru level", "minimum level logged"),
    (
        "--child-user",
        _child_user,
        "",
        "an existing user other than root (a name or a uid)",
        "run children (handlers) as this user; the supervisor must be started as root",
    ),
    (
        "--web-token",
        _token,
        "",
        "a token",
        "the operator's page at / requires it (needed when --metrics-host is not 127.0.0.1; "
        "prefer the env variable: a flag shows in ps)",
    ),
]
# Flags whose value is never shown in --help or an error.
SECRET_FLAGS = ("--dsn", "--web-token")


def add_run_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Declare the run flags; each default comes from its environment variable when set."""
    for flag, _convert, default, _what, help_text in RUN_FLAGS:
        env = env_name(flag)
        shown = "(set)" if flag in SECRET_FLAGS and env in environ else environ.get(env, default)
        shown = shown or "(none)"
        parser.add_argument(
            flag,
            default=None,
            metavar=flag.lstrip("-").split("-")[-1].upper(),
            help=f"{help_text} [env {env}; now {shown}]",
        )


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Convert flags (or their environment variables, or defaults) into :class:`Settings`."""
    values: dict[str, Any] = {}
    for flag, convert, default, what, _help in RUN_FLAGS:
        attr = flag.lstrip("-").replace("-", "_")
        raw = getattr(args, attr)
        source = flag
        if raw is None:
            raw, source = environ.get(env_name(flag)), env_name(flag)
        if raw is None:
            raw, source = default, f"default of {flag}"
        try:
            values[attr] = convert(raw)
        except (ValueError, UsageError):
            shown = "(hidden)" if flag in SECRET_FLAGS else repr(raw)
            raise UsageError(f"{source} must be {what}, got {shown}") from None
    return Settings(
        dsn=parse_dsn(values["dsn"], dict(environ)),
        workers=values["workers"],
        handlers_dir=Path(values["handlers"]),
        backoff=values["backoff"],
        drain_timeout_s=values["drain_timeout"],
        lease_s=values["lease"],
        poll_interval_s=values["poll_interval"],
        max_tasks_per_child=values["max_tasks_per_child"],
        max_child_rss_mib=values["max_child_rss"],
        metrics_port=values["metrics_port"],
        startup_timeout_s=values["startup_timeout"],
        metrics_host=values["metrics_host"],
        log_format=values["log_format"],
        log_level=values["log_level"],
        child_user=values["child_user"],
        web_token=values["web_token"],
    )
