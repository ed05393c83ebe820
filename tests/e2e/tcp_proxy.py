"""A small threaded TCP forwarder that a test can cut, blackhole and restore.

``TcpProxy`` listens on 127.0.0.1 at a free port and forwards every
connection to an upstream address (MariaDB at 127.0.0.1:3306 in the tests).
The real server is never touched; two ways to make it look gone:

* ``cut()`` closes every open connection and, until ``restore()``, accepts and
  immediately closes new ones: a client sees "lost connection" at once
  (a database that refuses).
* ``blackhole()`` keeps every open connection open and keeps accepting new
  ones, but forwards nothing in either direction: a client's statement is
  never answered and a new connection never gets the server's greeting (a
  database that hangs). Only the client's own timeouts end its wait. When
  ``blackhole()`` returns, no byte is forwarded any more. ``restore()`` resumes
  forwarding where it stopped (bytes a client sent meanwhile reach the server
  then, as after a network partition heals) and connects the connections
  accepted meanwhile to the server; any whose client gave up are dropped.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator

BUFFER = 65536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        # Guards the blackhole flag and counts pumps that are between recv and sendall,
        # so that blackhole() can wait until nothing is mid-forward.
        self._flow = threading.Condition(self._lock)
        self._forwarding = 0
        self._sockets: set[socket.socket] = set()
        self._held: list[socket.socket] = []  # accepted while blackholed, not yet connected
        self._cut = False
        self._blackholed = False
        self._closed = threading.Event()
        self.accepted = 0
        self.dropped = 0
        self.held = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ control

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def is_blackholed(self) -> bool:
        return self._blackholed

    def cut(self) -> None:
        """Close every forwarded connection; drop new ones until :meth:`restore`."""
        with self._lock:
            self._cut = True
            self._blackholed = False
            sockets, self._sockets = self._sockets, set()
            held, self._held = self._held, []
            self._flow.notify_all()
        for sock in [*sockets, *held]:
            _close(sock)

    def blackhole(self) -> None:
        """Forward nothing and answer nothing, closing nothing, until :meth:`restore`."""
        with self._flow:
            self._blackholed = True
            self._flow.wait_for(lambda: self._forwarding == 0)

    def restore(self) -> None:
        """End a cut or a blackhole: forward again, and connect the connections held meanwhile."""
        with self._flow:
            self._cut = False
            self._blackholed = False
            held, self._held = self._held, []
            self._flow.notify_all()
        for client in held:
            self._connect(client)

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
            with self._lock:
                if self._blackholed:
                    self._held.append(client)
                    self.held += 1
                    continue
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _close(client)
            return
        client.settimeout(None)
        upstream.settimeout(None)
        if not self._admit(client, upstream):
            return
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
                if not self._begin_forwarding():
                    continue  # blackholed: read nothing, so nothing moves and nothing closes
                try:
                    try:
                        events = selector.select(0.2)
                    except (ValueError, OSError):
                        break
                    if a.fileno() < 0 or b.fileno() < 0:
                        break
                    for key, _ in events:
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        data = sock.recv(BUFFER)
                        if not data:
                            return self._drop(a, b)
                        peer[sock].sendall(data)
                except OSError:
                    break
                finally:
                    self._end_forwarding()
        return self._drop(a, b)

    def _begin_forwarding(self) -> bool:
        """Count this pump as forwarding, or wait a little while blackholed (then False)."""
        with self._flow:
            if self._blackholed:
                self._flow.wait(0.2)
                return False
            self._forwarding += 1
            return True

    def _end_forwarding(self) -> None:
        with self._flow:
            self._forwarding -= 1
            self._flow.notify_all()

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


@contextlib.contextmanager
def in_front_of(mysql_dsn: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the server ``mysql_dsn`` names, and the DSN that reaches the same
    database through it."""
    from supervisor.dsn import MysqlDsn, parse_dsn

    real = parse_dsn(mysql_dsn)
    assert isinstance(real, MysqlDsn)
    with TcpProxy(real.host or "127.0.0.1", real.port) as proxy:
        proxied = mysql_dsn.replace(f"@{real.host}:{real.port}/", f"@127.0.0.1:{proxy.port}/")
        assert proxied != mysql_dsn
        yield proxy, proxied
