"""The supervisor process around the loop: logging, the metrics directory and server, the loop.

Order matters here: the parent hides the database credentials before any
child can look (:mod:`supervisor.hardening`); ``PROMETHEUS_MULTIPROC_DIR`` must be set before
prometheus_client is first imported and before any child inherits the
environment, and the parent's metric files are named before any metric exists.
"""

from __future__ import annotations

import os

from loguru import logger

from supervisor import hardening, logs, metrics
from supervisor.config import Settings
from supervisor.parent import Supervisor


def run(settings: Settings) -> int:
    """Run a supervisor until it has drained; the process's exit status."""
    logs.configure(settings.log_format, settings.log_level)
    # Settings hold the parsed DSN now; before any child exists, nothing in this process's
    # environment, /proc files or command line may still show it (see supervisor.hardening).
    hardening.harden_parent()
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
                server = http.serve(
                    settings.metrics_host,
                    settings.metrics_port,
                    str(directory.path),
                    supervisor.health,
                )
            except OSError as exc:
                logger.error("cannot serve metrics", port=settings.metrics_port, error=str(exc))
                return 1
        return supervisor.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        supervisor.cleanup()
        if directory is not None:
            directory.cleanup()
