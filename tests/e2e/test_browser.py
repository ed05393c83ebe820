"""The operator's page in a real browser: headless Chromium, driven from its command line.

``python -m supervisor web`` serves an SQLite queue holding queued, running and
failed tasks, one of them written by a hostile producer (``<script>`` in its
type, error and options). Chromium loads the page the way an operator would
(the token once in the address, then its cookie), and the test reads the DOM
Chromium built (``--dump-dom``), not the HTML the server sent: what counts is
that the browser made no element out of a producer's string. Screenshots of
the overview and of a failed task's page are kept under ``test-artifacts/``
(gitignored) for CI to publish.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it). Without it
the test is skipped, unless ``CI`` or ``SUPERVISOR_TEST_REQUIRE_BROWSER`` is set.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from supervisor.dsn import SqliteDsn, parse_dsn
from supervisor.store import NewTask, SupervisorInfo
from tests.conftest import migrated_store
from tests.e2e.test_web import WebProcess

pytestmark = pytest.mark.timeout(180)
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
TOKEN = "browser-token"
HOSTILE_TYPE = "<script>document.title='owned'</script>"  # a type is at most 64 characters
HOSTILE = HOSTILE_TYPE + "<img src=x onerror=alert(1)>"
STACK = 'Traceback (most recent call last):\n  File "handlers/resize.py", line 9, in handle\n'
ERROR = "TimeoutError: " + HOSTILE + "\n\n" + STACK + "    time.sleep(60)\n"  # message, stack
BROWSER_S = 60


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") or os.environ.get("SUPERVISOR_TEST_REQUIRE_BROWSER"):
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    pytest.skip("chromium is not installed")


class Dom(HTMLParser):
    """The elements of a serialized DOM: tag names, attributes by id, and text by id."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text_by_id: dict[str, str] = {}
        self.texts: list[str] = []
        self.title = ""
        self._in_title = False
        self._open_ids: list[tuple[str, str]] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_title = tag == "title"
        self.attributes.extend(attrs)
        element_id = dict(attrs).get("id")
        if element_id:
            self._open_ids.append((tag, element_id))
            self.text_by_id[element_id] = ""

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False
        if self._open_ids and self._open_ids[-1][0] == tag:
            self._open_ids.pop()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        self.texts.append(data)
        for _tag, element_id in self._open_ids:
            self.text_by_id[element_id] += data

    @property
    def text(self) -> str:
        return "".join(self.texts)


@pytest.fixture
def served(tmp_path: Path, sqlite_dsn: str) -> Iterator[tuple[WebProcess, int]]:
    """The page over a queue with work in every state; yields it and the failed task's id."""
    with migrated_store(sqlite_dsn) as store:
        for _ in range(3):
            store.enqueue(NewTask(type="resize", options='{"path": "a.png"}'))
        store.enqueue(NewTask(type="email", options="secret-options"))
        [claim] = store.claim("web1:4242", ["email"], 1, 60.0)
        store.progress(claim, 60)
        store.register(
            SupervisorInfo(id="web1:4242", host="web1", pid=4242, workers=4, version="1"), 60
        )
        store.set_paused("thumbnail", True)
    dsn = parse_dsn(sqlite_dsn)
    assert isinstance(dsn, SqliteDsn)
    conn = sqlite3.connect(dsn.path)
    with conn:
        failed = conn.execute(
            "INSERT INTO tasks (type, task_options, status, failure, attempts, last_error,"
            " started_at, completed_at) VALUES (?, ?, 'failed', 'timeout', 1, ?,"
            " strftime('%Y-%m-%d %H:%M:%f', 'now'), strftime('%Y-%m-%d %H:%M:%f', 'now'))",
            (
                HOSTILE_TYPE,
                "options " + HOSTILE,
                ERROR,
            ),
        ).lastrowid
    conn.close()
    assert failed is not None
    page = WebProcess(tmp_path, sqlite_dsn, env={"SUPERVISOR_WEB_TOKEN": TOKEN})
    try:
        yield page, failed
    finally:
        page.stop()


def browse(url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    """Load ``url`` in headless Chromium; its DOM after load, or a screenshot of it."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root in a container, where the sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1280,860",
    ]
    command.append(f"--screenshot={screenshot}" if screenshot else "--dump-dom")
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=BROWSER_S, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_page_in_chromium_shows_the_queue_and_a_failed_tasks_stack_inert(
    served: tuple[WebProcess, int], tmp_path: Path
) -> None:
    page, failed = served
    profile = tmp_path / "chromium-profile"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    overview = Dom(browse(f"{page.url}?token={TOKEN}", profile))  # redirected, then by cookie
    assert "script" not in overview.tags and "img" not in overview.tags
    assert not [name for name, _ in overview.attributes if name.startswith("on")]
    assert overview.title == "Overview · supervisor"  # no script of a producer's ran
    assert "<script>document.title='owned'</script>" in overview.text  # shown as text
    assert "paused" in overview.text and "thumbnail" in overview.text
    assert "web1:4242" in overview.text and "60%" in overview.text
    assert "secret-options" not in overview.text

    task = Dom(browse(f"{page.url}tasks/{failed}?token={TOKEN}", profile))
    assert "script" not in task.tags and "img" not in task.tags
    assert task.text_by_id["last_error"] == ERROR  # the whole stack, as text
    assert "options" not in task.text_by_id  # task_options only when asked

    listing = Dom(browse(f"{page.url}tasks?status=failed&failure=timeout&token={TOKEN}", profile))
    assert "python -m supervisor retry --failure timeout --dry-run" in listing.text

    overview_png = ARTIFACTS / "overview.png"
    task_png = ARTIFACTS / "failed-task.png"
    browse(f"{page.url}?token={TOKEN}", profile, screenshot=overview_png)
    browse(f"{page.url}tasks/{failed}?token={TOKEN}", profile, screenshot=task_png)
    for png in (overview_png, task_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_its_token_chromium_gets_the_401_page(
    served: tuple[WebProcess, int], tmp_path: Path
) -> None:
    page, _ = served
    refused = Dom(browse(page.url, tmp_path / "chromium-profile"))
    assert "Token needed" in refused.text
    assert "resize" not in refused.text
