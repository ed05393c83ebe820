"""A small threaded TCP forwarder that a test can cut and restore, to make a database vanish.

``TcpProxy`` listens on 127.0.0.1 at a free port and forwards every
connection to an upstream address (MariaDB at 127.0.0.1:3306 in the tests).
``cut()`` closes every open connection and, until ``restore()``, accepts and
immediately closes new ones: a client sees "lost connection" at once instead of
hanging. The real server is never touched.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

BUFFER = 65536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._cut = False
        self._closed = threading.Event()
        self.accepted = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ control

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Close every forwarded connection; drop new ones until :meth:`restore`."""
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(5)
        _close(self._listener)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ forwarding

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut:
                self.dropped += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            if not self._admit(client, upstream):
                continue
            threading.Thread(
                target=self._pump, args=(client, upstream), name="tcp-proxy-pump", daemon=True
            ).start()

    def _admit(self, client: socket.socket, upstream: socket.socket) -> bool:
        """Track a new pair, unless a cut came while it was being connected."""
        with self._lock:
            if self._cut:
                self.dropped += 1
                _close(client)
                _close(upstream)
                return False
            self._sockets.update((client, upstream))
            self.accepted += 1
            return True

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Copy both directions until either side closes (or :meth:`cut` closes both)."""
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as selector:
            try:
                selector.register(a, selectors.EVENT_READ)
                selector.register(b, selectors.EVENT_READ)
            except (ValueError, OSError):
                return self._drop(a, b)
            while not self._closed.is_set():
                try:
                    events = selector.select(0.2)
                except (ValueError, OSError):
                    break
                if a.fileno() < 0 or b.fileno() < 0:
                    break
                try:
                    for key, _ in events:
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        data = sock.recv(BUFFER)
                        if not data:
                            return self._drop(a, b)
                        peer[sock].sendall(data)
                except OSError:
                    break
        return self._drop(a, b)

    def _drop(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(a)
            self._sockets.discard(b)
        _close(a)
        _close(b)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
