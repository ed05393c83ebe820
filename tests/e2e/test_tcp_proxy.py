"""The test proxy itself: forwarding, a cut (refuses) and a blackhole (hangs), against an echo
server on a local socket, so the fault tests can trust what the proxy does."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.e2e.tcp_proxy import TcpProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A server that greets each connection with ``hi\\n`` and echoes what it receives."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.sendall(b"hi\n")
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[:2]
    listener.close()


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=2)


def recv(sock: socket.socket, size: int, timeout: float = 2) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_forwards_both_ways(echo: tuple[str, int]) -> None:
    with TcpProxy(*echo) as proxy, connect(proxy) as sock:
        assert recv(sock, 3) == b"hi\n"
        sock.sendall(b"ping")
        assert recv(sock, 4) == b"ping"


def test_a_cut_closes_open_connections_and_refuses_new_ones(echo: tuple[str, int]) -> None:
    with TcpProxy(*echo) as proxy, connect(proxy) as sock:
        assert recv(sock, 3) == b"hi\n"
        proxy.cut()
        assert recv(sock, 1) == b""  # closed, at once
        with connect(proxy) as late:
            assert recv(late, 1) == b""
        proxy.restore()
        with connect(proxy) as fresh:
            assert recv(fresh, 3) == b"hi\n"


def test_a_blackhole_answers_nothing_closes_nothing_and_restore_resumes(
    echo: tuple[str, int],
) -> None:
    with TcpProxy(*echo) as proxy, connect(proxy) as sock:
        assert recv(sock, 3) == b"hi\n"
        proxy.blackhole()
        sock.sendall(b"ping")
        with pytest.raises(TimeoutError):
            recv(sock, 1, timeout=0.5)  # no answer, and no close either
        late = connect(proxy)  # still accepted...
        with pytest.raises(TimeoutError):
            recv(late, 1, timeout=0.5)  # ...but the server never greets it
        proxy.restore()
        assert recv(sock, 4) == b"ping"  # what was sent meanwhile arrives now
        assert recv(late, 3) == b"hi\n"
        late.close()
        assert proxy.held == 1
