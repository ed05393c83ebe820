"""The page and the bulk commands through the real ``python -m supervisor``.

``web`` serves the page alone; ``run`` serves it at ``/`` of its metrics
server. Both refuse, in one line and before touching anything, to show it
beyond this host without a token; with one, the page answers 401 to a request
without it while ``/metrics`` and ``/healthz`` stay open. The bulk commands
run on SQLite and MariaDB.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.lifecycle import Status
from supervisor.store import NewTask
from tests.conftest import migrated_store
from tests.e2e.harness import Launcher, clean_env, wait_until
from tests.e2e.test_cli import run_cli
from tests.e2e.test_metrics import free_port

pytestmark = pytest.mark.timeout(90)
TOKEN = "e2e-token"


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


class WebProcess:
    """``python -m supervisor web`` in a subprocess; ``url`` is read from its one line."""

    def __init__(self, cwd: Path, dsn: str, *args: str, env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "web", "--dsn", dsn, "--port", "0", *args],
            cwd=cwd,
            env=clean_env(**(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"at (http://\S+/)$", line.strip())
        assert found, f"no address in {line!r}; stderr: {self.process.stderr.read()}"  # type: ignore[union-attr]
        self.url = found.group(1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        finally:
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def web_process(tmp_path: Path, sqlite_dsn: str) -> Iterator[WebProcess]:
    with migrated_store(sqlite_dsn) as store:
        store.enqueue(NewTask(type="resize"))
    served = WebProcess(
        tmp_path, sqlite_dsn, "--host", "0.0.0.0", env={"SUPERVISOR_WEB_TOKEN": TOKEN}
    )
    try:
        yield served
    finally:
        served.stop()


def test_web_refuses_to_serve_beyond_this_host_without_a_token(
    tmp_path: Path, sqlite_dsn: str
) -> None:
    result = run_cli(tmp_path, "web", "--host", "0.0.0.0", dsn=sqlite_dsn)
    error = result.assert_one_line_error(2)
    assert "needs a token: set --web-token or SUPERVISOR_WEB_TOKEN" in error


def test_run_refuses_a_public_metrics_host_without_a_token(tmp_path: Path, sqlite_dsn: str) -> None:
    (tmp_path / "handlers").mkdir()
    port = str(free_port())  # 0 would serve nothing, and need no token
    result = run_cli(tmp_path, "--metrics-host", "0.0.0.0", "--metrics-port", port, dsn=sqlite_dsn)
    error = result.assert_one_line_error(2)
    assert "--metrics-host" in error and "SUPERVISOR_WEB_TOKEN" in error


def test_web_serves_the_page_with_its_token_and_healthz_without(web_process: WebProcess) -> None:
    assert get(web_process.url)[0] == 401
    assert get(web_process.url + "tasks/1")[0] == 401
    assert get(web_process.url + "healthz") == (200, "ok\n")
    status, body = get(web_process.url, TOKEN)
    assert status == 200 and "resize" in body
    assert web_process.stop() == 0  # TERM ends it cleanly


def test_web_says_in_one_line_when_its_port_is_taken(tmp_path: Path, sqlite_dsn: str) -> None:
    with migrated_store(sqlite_dsn):
        pass
    first = WebProcess(tmp_path, sqlite_dsn)
    try:
        port = first.url.rsplit(":", 1)[1].strip("/")
        result = run_cli(tmp_path, "web", "--port", port, dsn=sqlite_dsn)
        assert "cannot serve the page on 127.0.0.1:" in result.assert_one_line_error(1)
    finally:
        first.stop()


TOKEN_SEEN = """
    import os

    def handle(task, progress):
        raise RuntimeError("token seen: " + repr(os.environ.get("SUPERVISOR_WEB_TOKEN")))
"""


def test_the_supervisor_serves_the_page_at_root_beside_open_metrics(
    tmp_path: Path, sqlite_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with Launcher(tmp_path, sqlite_dsn) as launcher:
        launcher.handler("peek", TOKEN_SEEN)
        port = free_port()
        launcher.start_ready("--metrics-port", str(port), env={"SUPERVISOR_WEB_TOKEN": TOKEN})
        task_id = launcher.enqueue("peek", max_attempts=1)
        row = launcher.wait_terminal(task_id)
        assert row.last_error is not None and "token seen: None" in row.last_error  # hidden
        base = f"http://127.0.0.1:{port}/"
        assert get(base + "metrics")[0] == 200
        assert get(base)[0] == 401
        status, body = wait_until(lambda: (r := get(base, TOKEN))[0] == 200 and r, what="page")
        assert "peek" in body and "Overview" in body
        status, body = get(f"{base}tasks/{task_id}", TOKEN)
        assert status == 200 and "token seen: None" in body


def test_bulk_retry_and_cancel_select_by_filter_in_batches(tmp_path: Path, dsn: str) -> None:
    with migrated_store(dsn) as store:
        ids = [int(store.enqueue(NewTask(type="resize"))) for _ in range(5)]
        other = int(store.enqueue(NewTask(type="email")))
    dry = run_cli(tmp_path, "cancel", "--type", "resize", "--dry-run", dsn=dsn).assert_ok()
    newest_first = ", ".join(str(i) for i in reversed(ids))
    assert dry == f"would cancel 5 tasks (dry run): {newest_first}\n"
    out = run_cli(tmp_path, "cancel", "--type", "resize", "--batch", "2", dsn=dsn).assert_ok()
    assert out == "cancelled 5 tasks\n"
    out = run_cli(
        tmp_path, "retry", "--since", "1h", "--error-match", "operator", dsn=dsn
    ).assert_ok()
    assert out == "retried 5 tasks\n"
    with migrated_store(dsn) as store:
        assert {store.get(i).status for i in ids} == {Status.QUEUED}  # type: ignore[union-attr]
        assert store.get(other).status is Status.QUEUED  # type: ignore[union-attr]
    both = run_cli(tmp_path, "retry", "1", "--type", "resize", dsn=dsn)
    assert "ids or filters, not both" in both.assert_one_line_error(2)
    bad = run_cli(tmp_path, "retry", "--since", "last tuesday", dsn=dsn)
    assert "--since must be" in bad.assert_one_line_error(2)
