"""The metrics server under abuse: idle connections, a corrupt metrics file.

Each connection used to get a thread and an fd with no timeout, so idle
connections exhausted the parent's fds; and one unreadable file in the
metrics folder failed every scrape.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from struct import pack

import pytest

from supervisor import http
from supervisor.health import Health


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Path]]:
    monkeypatch.setattr(http.QuietHandler, "timeout", 0.5)
    directory = tmp_path / "metrics"
    directory.mkdir()
    health = Health(stale_after_s=30.0, db_ok_at=time.monotonic())
    served = http.serve("127.0.0.1", 0, str(directory), health)
    try:
        yield served.server_address[1], directory
    finally:
        served.shutdown()
        served.server_close()


def get(port: int, path: str = "/metrics") -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return int(response.status)


def test_idle_connections_are_bounded_and_timed_out(server: tuple[int, Path]) -> None:
    port, _ = server
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
    try:
        time.sleep(0.2)
        assert threading.active_count() - threads_before <= http.MAX_CONNECTIONS + 1
        deadline = time.monotonic() + 5
        while True:  # the idle ones time out, and a scrape gets through
            try:
                assert get(port) == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        for sock in idle:
            sock.close()


def test_a_corrupt_file_in_the_metrics_folder_does_not_fail_the_scrape(
    server: tuple[int, Path],
) -> None:
    port, directory = server
    # An entry longer than the file says it holds; a key that is not UTF-8; not JSON at all.
    (directory / "counter_long.db").write_bytes(pack("<ii", 64, 0) + pack("<i", 9999) + bytes(52))
    bad_key = pack("<i", 4) + b"\xff\xfe\xfd\xfc" + bytes(4) + pack("<dd", 1.0, 0.0)
    (directory / "counter_key.db").write_bytes(pack("<ii", 8 + len(bad_key), 0) + bad_key)
    not_json = pack("<i", 4) + b"{{{{" + bytes(4) + pack("<dd", 1.0, 0.0)
    (directory / "gauge_all_json.db").write_bytes(pack("<ii", 8 + len(not_json), 0) + not_json)
    assert get(port) == 200
    assert get(port, "/healthz") == 200


def test_healthz_is_503_until_the_database_has_answered_once() -> None:
    health = Health(stale_after_s=30.0)
    now = time.monotonic()
    assert health.problems(now) == ["database has not answered yet"]
    health.db_ok_at = now
    assert health.problems(now) == []
