"""The metrics server: ``/metrics`` (every process's metrics, merged), ``/healthz``, and the
operator's page (:mod:`supervisor.web`) at ``/``.

It runs in daemon threads of the parent, beside the loop. ``/metrics`` and
``/healthz`` read the multiprocess files and two timestamps the loop
publishes; the page reads the database on a connection of its own. None of
it touches the loop's state.
"""

from __future__ import annotations

import glob
import os
import socketserver
import stat
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


# Each connection costs the parent a thread and an fd: idle ones once exhausted its fds.
MAX_CONNECTIONS = 8  # served at once; more are closed unanswered (a scraper retries)
IDLE_TIMEOUT_S = 5.0  # a connection that sends nothing for this long is closed


class QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT_S  # socket timeout on every read and write of the connection

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not news."""


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, at most :data:`MAX_CONNECTIONS` of them."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    request_queue_size = 64  # the listen backlog: a burst of scrapers is not refused by the kernel

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A timed-out or reset connection is the client's business: no traceback on stderr."""

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: never an fd or a thread more
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


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

    def __init__(
        self, registry: CollectorRegistry, path: str, children_path: str | None = None
    ) -> None:
        """``children_path``: the ``--child-user``'s own folder of value files, read as well."""
        self._folders = [path, *([children_path] if children_path else [])]
        super().__init__(registry, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Any:
        for attempt in range(COLLECT_ATTEMPTS):
            files = [
                f
                for folder in self._folders
                for f in glob.glob(os.path.join(folder, "*.db"))
                if _non_empty(f)
            ]
            try:
                return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            except (FileNotFoundError, struct.error):
                if attempt == COLLECT_ATTEMPTS - 1:
                    return self._merge_readable(files)
                time.sleep(0.005)
            except Exception:  # noqa: BLE001 - a corrupt file: serve the rest
                return self._merge_readable(files)
        return []

    def _merge_readable(self, files: list[str]) -> Any:
        """Merge only the files that can be read alone.

        A handler can write anything into the metrics folder (it is in its
        environment); one corrupt file must not fail every scrape. Only taken
        when the whole merge failed, so a healthy scrape reads each file once.
        """
        readable = []
        for path in files:
            try:
                self.merge([path], accumulate=True)  # type: ignore[no-untyped-call]
            except Exception:  # noqa: BLE001 - skipped, whatever is wrong with it
                continue
            readable.append(path)
        return self.merge(readable, accumulate=True)  # type: ignore[no-untyped-call]


def _non_empty(path: str) -> bool:
    """A non-empty regular file: a symlink or FIFO a handler planted is never opened."""
    try:
        status = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(status.st_mode) and status.st_size > 0


App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def make_app(
    directory: str,
    health: Health,
    children_directory: str | None = None,
    *,
    page: App | None = None,
) -> App:
    """``/metrics`` and ``/healthz`` (always open, for scrapers), and the operator's ``page``
    (:mod:`supervisor.web`) at every other path, which checks its own token.

    ``children_directory``: where the children write their value files, when not in
    ``directory`` (``--child-user``).
    """
    registry = CollectorRegistry()
    ChurnTolerantCollector(registry, directory, children_directory)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            problems = health.problems(time.monotonic())
            status = "503 Service Unavailable" if problems else "200 OK"
            body = ("; ".join(problems) if problems else "ok").encode() + b"\n"
            start_response(status, [("Content-Type", "text/plain")])
            return [body]
        if path == "/metrics" or (path == "/" and page is None):
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(registry)]
        if page is not None:
            return page(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


def serve(
    host: str,
    port: int,
    directory: str,
    health: Health,
    children_directory: str | None = None,
    *,
    page: App | None = None,
) -> WSGIServer:
    """Start serving in a daemon thread; the caller shuts the server down on exit."""
    server = make_page_server(
        host, port, make_app(directory, health, children_directory, page=page)
    )
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def make_page_server(host: str, port: int, app: App) -> WSGIServer:
    """A bound server with this module's limits (connections, idle timeout, quiet log)."""
    return make_server(host, port, app, server_class=ThreadingServer, handler_class=QuietHandler)
