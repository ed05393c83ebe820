"""The metrics server: ``/metrics`` (every process's metrics, merged) and ``/healthz``.

It runs in one daemon thread of the parent, the only thread besides the loop.
It reads the multiprocess files and two timestamps the loop publishes; it
never touches the loop's state or the database.
"""

from __future__ import annotations

import glob
import os
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from supervisor.health import Health

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not news."""


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


COLLECT_ATTEMPTS = 5


class ChurnTolerantCollector(MultiProcessCollector):
    """Reads the directory while children come and go without failing the scrape.

    A child that starts creates its value files empty and sizes them a moment
    later, and ``mark_process_dead`` removes a dead child's live-gauge files:
    prometheus_client's collector then fails the whole scrape (``struct.error``
    on an empty file, ``FileNotFoundError`` on a removed one). An empty file
    holds no values yet, so it is skipped; a file removed under the reader
    makes it list the directory again.
    """

    def collect(self) -> Any:
        for attempt in range(COLLECT_ATTEMPTS):
            files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _non_empty(f)]
            try:
                return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            except (FileNotFoundError, struct.error):
                if attempt == COLLECT_ATTEMPTS - 1:
                    raise
                time.sleep(0.005)
        return []


def _non_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def make_app(directory: str, health: Health) -> Callable[..., Iterable[bytes]]:
    registry = CollectorRegistry()
    ChurnTolerantCollector(registry, path=directory)  # type: ignore[no-untyped-call]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            problems = health.problems(time.monotonic())
            status = "503 Service Unavailable" if problems else "200 OK"
            body = ("; ".join(problems) if problems else "ok").encode() + b"\n"
            start_response(status, [("Content-Type", "text/plain")])
            return [body]
        if path in ("/metrics", "/"):
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(registry)]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


def serve(host: str, port: int, directory: str, health: Health) -> WSGIServer:
    """Start serving in a daemon thread; the caller shuts the server down on exit."""
    server = make_server(
        host,
        port,
        make_app(directory, health),
        server_class=ThreadingServer,
        handler_class=QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
