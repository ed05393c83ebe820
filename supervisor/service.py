"""The supervisor process around the loop: logging, the metrics directory and server, the loop.

Order matters here: the parent hides the database credentials before any
child can look (:mod:`supervisor.hardening`); ``PROMETHEUS_MULTIPROC_DIR`` must be set before
prometheus_client is first imported and before any child inherits the
environment, and the parent's metric files are named before any metric exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from loguru import logger

from supervisor import hardening, logs, metrics, web
from supervisor.config import Settings
from supervisor.dblink import check_database
from supervisor.dsn import Dsn, SqliteDsn
from supervisor.errors import StartupError, StoreError, UsageError
from supervisor.parent import Supervisor
from supervisor.privileges import ChildUser, permits


def run(settings: Settings) -> int:
    """Run a supervisor until it has drained; the process's exit status.

    What a new user can get wrong is checked before anything starts, each as
    one line and an exit status (raised for the command line to report): a
    missing handlers folder (2; it used to idle forever on an empty queue), a
    database that refuses us or never answers within ``--startup-timeout``
    (1; it used to retry forever), a metrics port in use (1, naming the flag), the
    page served beyond this host without a token (2).
    """
    handlers = settings.handlers_dir.resolve()
    if not handlers.is_dir():
        raise UsageError(
            f"the handlers folder {handlers} does not exist (--handlers, SUPERVISOR_HANDLERS)"
        )
    if settings.child_user is not None and os.geteuid() != 0:
        raise UsageError(
            "--child-user (SUPERVISOR_CHILD_USER) needs the supervisor to be started as root;"
            f" it runs as uid {os.geteuid()}"
        )
    if settings.metrics_port:  # the page at / would show the queue to anyone who can connect
        web.check_exposure(settings.metrics_host, settings.web_token, "--metrics-host")
    logs.configure(settings.log_format, settings.log_level)
    # Settings hold the parsed DSN now; before any child exists, nothing in this process's
    # environment, /proc files or command line may still show it (see supervisor.hardening).
    hardening.harden_parent()
    check_database(settings.dsn, settings.startup_timeout_s, on_retry=_database_not_yet)
    if settings.child_user is not None:
        _warn_if_reachable(settings.dsn, settings.child_user)
    directory = None
    if settings.metrics_port:
        # Before prometheus_client is first imported, and before children inherit the environment.
        directory = metrics.prepare_directory(os.environ)
        metrics.bind_process_files(metrics.PARENT_ID)
    supervisor = Supervisor(settings, metrics_dir=directory.path if directory else None)
    server = None
    try:
        if directory is not None:
            from supervisor import http

            try:
                children = supervisor.child_metrics_dir
                server = http.serve(
                    settings.metrics_host,
                    settings.metrics_port,
                    str(directory.path),
                    supervisor.health,
                    str(children) if children and children != directory.path else None,
                    page=web.WebPage.for_dsn(settings.dsn, settings.web_token),
                )
            except OSError as exc:
                raise StartupError(
                    f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}"
                    f" ({exc.strerror or exc}); choose another port with --metrics-port"
                    " (SUPERVISOR_METRICS_PORT), or 0 to serve none"
                ) from None
        return supervisor.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        supervisor.cleanup()
        if directory is not None:
            directory.cleanup()


def _warn_if_reachable(dsn: Dsn, user: ChildUser) -> None:
    """Handlers run as ``user``: say so at start if they could read or write the SQLite file.

    Read access (a file created under umask 022 is readable by every user) gives
    them every task's options; write access, every row's state.
    """
    if not isinstance(dsn, SqliteDsn):
        return
    for path in (dsn.path, dsn.path + "-wal", dsn.path + "-shm"):
        can = [w for w, bit in (("read", os.R_OK), ("write", os.W_OK)) if permits(user, path, bit)]
        if can:
            logger.warning(
                "the --child-user can reach the SQLite database; keep it in a folder only the"
                " supervisor's user can enter",
                child_user=user.name,
                path=str(Path(path).resolve()),
                access=" and ".join(can),
            )


def _database_not_yet(error: StoreError, delay_s: float) -> None:
    logger.warning(
        "database not reachable yet; retrying until --startup-timeout",
        error=str(error),
        retry_in_s=round(delay_s, 2),
    )
