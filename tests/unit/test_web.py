"""The operator's page as a WSGI application: what it shows, to whom, and what it never does.

Hostile rows (a type, an error and options holding ``<script>``) are written
with plain SQL into an SQLite database, as any producer could; the page must
render them as text. The token rules, path and query-string tampering and
the bounded reads are stated here; tests/e2e/test_browser.py looks at the
same page in a real browser.
"""

from __future__ import annotations

import io
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import attrs
import pytest

from supervisor import http, web
from supervisor.dsn import parse_dsn
from supervisor.errors import StoreUnavailable, UnreadableRow, UsageError
from supervisor.health import Health
from supervisor.lifecycle import Failure, Status
from supervisor.store import Claim, MemoryStore, NewTask, Store, SupervisorInfo, TaskRow
from supervisor.store.memory import ManualClock
from tests.conftest import migrated_store

pytestmark = pytest.mark.timeout(30)
TOKEN = "s3cret-token"
HOSTILE = "<script>document.title='owned'</script>"


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: str


def call(app: web.App, path: str, query: str = "", **environ: Any) -> Response:
    env: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query, **environ}
    setup_testing_defaults(env)
    env["wsgi.input"] = io.BytesIO()
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        started.extend([status, headers])

    body = b"".join(app(env, start_response)).decode()
    return Response(int(started[0].split()[0]), dict(started[1]), body)


@pytest.fixture
def sqlite_store(sqlite_dsn: str) -> Iterator[Store]:
    with migrated_store(sqlite_dsn) as store:
        yield store


@pytest.fixture
def hostile(sqlite_store: Store, sqlite_dsn: str) -> int:
    """A failed task whose type, error and options a hostile producer wrote; its id."""
    path = parse_dsn(sqlite_dsn).path  # type: ignore[union-attr]
    with sqlite3.connect(path) as conn:
        cursor = conn.execute(
            "INSERT INTO tasks (type, task_options, status, failure, last_error, completed_at) "
            "VALUES (?, ?, 'failed', 'error', ?, strftime('%Y-%m-%d %H:%M:%f', 'now'))",
            (
                HOSTILE,
                "options " + HOSTILE,
                "ValueError: " + HOSTILE + "\n\nTraceback\n  " + HOSTILE,
            ),
        )
        task_id = cursor.lastrowid
    conn.close()
    assert task_id is not None
    return task_id


def page(store: Store, token: str | None = None) -> web.WebPage:
    return web.WebPage(open_store=lambda: store, token=token)


def no_live_markup(body: str) -> None:
    """The hostile string appears only escaped: no element, no attribute made from it."""
    assert "<script" not in body
    assert "onerror" not in body


# --- escaping ------------------------------------------------------------------------------


def test_a_hostile_type_and_error_render_as_text_on_every_page(
    sqlite_store: Store, hostile: int
) -> None:
    app = page(sqlite_store)
    escaped = "&lt;script&gt;document.title=&#x27;owned&#x27;&lt;/script&gt;"
    for path, query in [
        ("/", ""),
        ("/tasks", "status=failed"),
        ("/tasks", "type=" + HOSTILE.replace(" ", "+")),
        (f"/tasks/{hostile}", ""),
        (f"/tasks/{hostile}", "options=1"),
    ]:
        response = call(app, path, query)
        assert response.status == 200, (path, query)
        no_live_markup(response.body)
        assert escaped in response.body, (path, query)


def test_options_are_shown_only_when_asked_for_on_one_task(
    sqlite_store: Store, hostile: int
) -> None:
    app = page(sqlite_store)
    for path, query in [("/", ""), ("/tasks", ""), (f"/tasks/{hostile}", "")]:
        assert "options &lt;script" not in call(app, path, query).body
    shown = call(app, f"/tasks/{hostile}", "options=1").body
    assert "<pre id=options>options &lt;script&gt;" in shown


def test_the_page_forbids_scripts_and_is_never_cached(sqlite_store: Store) -> None:
    headers = call(page(sqlite_store), "/").headers
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "script-src" not in headers["Content-Security-Policy"]  # so none may run
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_the_bulk_command_shown_for_a_filter_is_quoted_for_the_shell_and_escaped(
    sqlite_store: Store, hostile: int
) -> None:
    body = call(page(sqlite_store), "/tasks", "status=failed&error=%27%3B+rm+-rf+%2F").body
    assert "python -m supervisor retry --status failed --error-match " in body
    assert "&#x27;&quot;&#x27;&quot;&#x27;; rm -rf /&#x27;" in body  # shlex quoting, escaped
    assert "supervisor cancel" not in body  # failed tasks cannot be cancelled


# --- the token -----------------------------------------------------------------------------


def test_without_a_token_every_page_is_refused_with_401(sqlite_store: Store) -> None:
    app = page(sqlite_store, TOKEN)
    for path in ["/", "/tasks", "/tasks/1", "/nothing", "/healthz"]:
        response = call(app, path)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in response.body


@pytest.mark.parametrize(
    "environ",
    [
        {"HTTP_AUTHORIZATION": "Bearer wrong"},
        {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
        {"HTTP_AUTHORIZATION": "Bearer "},
        {"HTTP_COOKIE": f"{web.COOKIE}={TOKEN}x"},
        {"HTTP_COOKIE": f"other={TOKEN}"},
        {"QUERY_STRING": f"token={TOKEN[:-1]}"},
        {"QUERY_STRING": "token="},
    ],
)
def test_a_wrong_token_anywhere_is_refused(sqlite_store: Store, environ: dict[str, str]) -> None:
    query = environ.pop("QUERY_STRING", "")
    assert call(page(sqlite_store, TOKEN), "/", query, **environ).status == 401


def test_a_valid_token_in_a_header_or_cookie_opens_the_page(sqlite_store: Store) -> None:
    app = page(sqlite_store, TOKEN)
    assert call(app, "/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status == 200
    cookies = f"a=b; {web.COOKIE}={TOKEN}"
    assert call(app, "/tasks", "status=failed", HTTP_COOKIE=cookies).status == 200


def test_a_token_in_the_address_becomes_a_cookie_and_leaves_the_address(
    sqlite_store: Store,
) -> None:
    response = call(page(sqlite_store, TOKEN), "/tasks", f"status=failed&token={TOKEN}")
    assert response.status == 303
    assert response.headers["Location"] == "/tasks?status=failed"
    assert response.headers["Set-Cookie"] == (
        f"{web.COOKIE}={TOKEN}; HttpOnly; SameSite=Strict; Path=/"
    )
    assert call(page(sqlite_store, TOKEN), "/", f"token={TOKEN}").headers["Location"] == "/"
    elsewhere = call(page(sqlite_store, TOKEN), "//evil.example/x", f"token={TOKEN}")
    assert elsewhere.headers["Location"] == "/evil.example/x"  # stays on this host


def test_metrics_and_healthz_stay_open_while_the_page_needs_its_token(
    sqlite_store: Store, tmp_path: Path
) -> None:
    health = Health(stale_after_s=60.0, db_ok_at=0.0)
    app = http.make_app(str(tmp_path), health, page=page(sqlite_store, TOKEN))
    assert call(app, "/metrics").status == 200
    assert call(app, "/healthz").status in (200, 503)  # open: health, not a 401
    assert call(app, "/").status == 401
    assert call(app, "/tasks").status == 401
    assert call(app, "/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status == 200
    without_page = http.make_app(str(tmp_path), health)
    assert call(without_page, "/").headers["Content-Type"].startswith("text/plain")  # metrics


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", ""])
def test_binding_beyond_this_host_needs_a_token(host: str) -> None:
    with pytest.raises(UsageError, match="needs a token: set --web-token or SUPERVISOR_WEB_TOKEN"):
        web.check_exposure(host, None, "--host")
    web.check_exposure(host, TOKEN, "--host")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_this_host_alone_needs_no_token(host: str) -> None:
    web.check_exposure(host, None, "--host")


# --- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "status"),
    [
        ("/tasks/../etc/passwd", "", 404),
        ("/tasks/1/../../", "", 404),
        ("/tasks/-1", "", 404),
        ("/tasks/1.0", "", 404),
        ("/tasks/0x10", "", 404),
        ("/tasks/\u0661", "", 404),  # an Arabic-Indic digit: isdigit() but no ASCII id
        ("/tasks/99999999999999999999999", "", 404),
        ("/tasks/1%00", "", 404),
        ("/tasks/1\x00", "", 404),
        ("//etc/passwd", "", 404),
        ("/static/../../x", "", 404),
        ("/tasks", "status=bogus", 400),
        ("/tasks", "failure=%3Cscript%3E", 400),
        ("/tasks", "since=yesterday", 400),
        ("/tasks", "before=abc", 400),
        ("/tasks", "before=-5", 400),
        ("/tasks", "&".join(f"f{i}=1" for i in range(100)), 400),
        ("/tasks", "type=%ZZ&error=%", 200),  # undecodable escapes stay as text
        ("/tasks/12345", "", 404),
    ],
)
def test_tampered_paths_and_queries_get_a_plain_error_never_a_crash(
    sqlite_store: Store, path: str, query: str, status: int
) -> None:
    response = call(page(sqlite_store), path, query)
    assert response.status == status
    no_live_markup(response.body)


def test_a_bad_value_is_echoed_escaped(sqlite_store: Store) -> None:
    body = call(page(sqlite_store), "/tasks", "status=%3Cscript%3E").body
    assert "&lt;script&gt;" in body
    no_live_markup(body)


def test_the_page_never_writes_so_other_methods_are_refused(sqlite_store: Store) -> None:
    for method in ("POST", "PUT", "DELETE"):
        response = call(page(sqlite_store), "/", REQUEST_METHOD=method)
        assert response.status == 405
        assert response.headers["Allow"] == "GET, HEAD"
    assert call(page(sqlite_store), "/", REQUEST_METHOD="HEAD").body == ""


# --- what it shows -------------------------------------------------------------------------


def memory_with_work() -> MemoryStore:
    store = MemoryStore(clock=ManualClock())
    for _ in range(3):
        store.enqueue(NewTask(type="resize", max_attempts=1))
    [running, failing] = store.claim("sup-1", ["resize"], 2, 60.0)
    store.progress(running, 40)
    store.fail(failing, Failure.TIMEOUT, "TimeoutError: slow\n\nTraceback\n  File x\n")
    store.register(SupervisorInfo(id="sup-1", host="web1", pid=7, workers=4, version="1"), 60)
    store.set_paused("email", True)
    return store


def test_the_overview_shows_queue_fleet_running_and_failures() -> None:
    body = call(page(memory_with_work()), "/").body
    text = re.sub(r"<[^>]+>", " ", body)
    assert re.search(r"resize\s+1\s+1\s+\S+\s+0\s+1\s+0", text)  # queued, running, ..., failed
    assert re.search(r"email\s+paused", text)
    assert "sup-1" in text and "web1" in text
    assert "40%" in text
    assert "TimeoutError: slow" in text  # the error's first line
    assert "File x" not in text  # the stack is on the task's page
    assert '<meta http-equiv="refresh" content="5">' in body


def test_one_task_shows_its_row_stack_and_effective_policy() -> None:
    store = memory_with_work()
    body = call(page(store), "/tasks/2").body
    assert "<pre id=last_error>TimeoutError: slow\n\nTraceback\n  File x\n</pre>" in body
    assert re.search(r"max_attempts</td><td>1<", body)
    assert "python -m supervisor retry 2" in body
    assert "supervisor cancel 2" not in body


def test_a_listing_pages_by_id_and_links_the_next_page() -> None:
    store = MemoryStore(clock=ManualClock())
    for _ in range(web.PAGE_SIZE + 5):
        store.enqueue(NewTask(type="resize"))
    first = call(page(store), "/tasks", "type=resize").body
    older = re.search(r'href="/tasks\?([^"]+)" id=older', first)
    assert older is not None
    assert older.group(1) == "type=resize&amp;before=6"
    second = call(page(store), "/tasks", "type=resize&before=6").body
    assert re.findall(r'<a href="/tasks/(\d+)">', second) == ["5", "4", "3", "2", "1"]
    assert "id=older" not in second
    assert "python -m supervisor cancel --type resize --dry-run" in second


def test_a_listing_looks_back_a_bounded_range_of_ids_and_links_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(web, "SCAN_IDS", 10)
    store = MemoryStore(clock=ManualClock())
    store.enqueue(NewTask(type="rare"))
    for _ in range(25):
        store.enqueue(NewTask(type="common"))
    first = call(page(store), "/tasks", "type=rare").body
    assert "searched ids 17 to 26" in first and 'href="/tasks/1"' not in first
    assert 'href="/tasks?type=rare&amp;before=17" id=older>search older' in first
    last = call(page(store), "/tasks", "type=rare&before=7").body
    assert 'href="/tasks/1"' in last and "id=older" not in last


def test_the_page_reads_a_bounded_number_of_rows() -> None:
    store = memory_with_work()
    calls_before = store.calls
    call(page(store), "/")
    calls = store.calls - calls_before
    assert calls["counts"] == 1 and calls["finished_counts"] == 1  # live only, last hour only
    assert calls["find_tasks"] == 2  # running and failures, each with a LIMIT
    assert calls["get"] == 0


def test_a_database_error_is_a_503_and_the_next_request_reconnects() -> None:
    store = memory_with_work()
    opened: list[Store] = []

    def open_store() -> Store:
        opened.append(store)
        return store

    app = web.WebPage(open_store=open_store)
    store.fail_with(StoreUnavailable("database gone <b>"))
    response = call(app, "/")
    assert response.status == 503
    assert "database gone &lt;b&gt;" in response.body
    store.fail_with(None)
    assert call(app, "/").status == 200
    assert len(opened) == 2


class UnreadableStore(MemoryStore):
    """A row a permissive MariaDB left with an empty status (SQLite's CHECK refuses one)."""

    def get(self, task_id: int) -> TaskRow | None:
        fields = {"id": task_id, "type": "x<i>", "status": "", "task_options": "hidden"}
        raise UnreadableRow(task_id, fields, "status ''")


def test_an_unreadable_row_is_shown_raw_without_options() -> None:
    body = call(page(UnreadableStore()), "/tasks/1").body
    assert "x&lt;i&gt;" in body
    assert "hidden" not in body
    assert "hidden" in call(page(UnreadableStore()), "/tasks/1", "options=1").body


def test_a_request_behind_a_hung_read_is_told_busy_not_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Queued requests would hold the server's few slots, starving /metrics and /healthz."""
    monkeypatch.setattr(web, "BUSY_WAIT_S", 0.01)
    app = page(memory_with_work())
    with app._lock:  # a read in another thread that does not come back
        response = call(app, "/")
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert call(app, "/").status == 200


def test_a_running_task_shows_its_last_stack_escaped_and_the_stack_command() -> None:
    store = memory_with_work()
    row = store.get(1)
    assert row is not None and row.status is Status.RUNNING and row.claimed_by is not None
    claim = Claim(
        id=1,
        type=row.type,
        options=None,
        attempt=row.attempts,
        max_attempts=1,
        owner=row.claimed_by,
        remaining_s=60.0,
    )
    assert store.record_stack(claim, 'File "h.py" in <wait_for_the_disk>', status=Status.RUNNING)
    body = call(page(store), "/tasks/1").body
    assert "<pre id=stack>File &quot;h.py&quot; in &lt;wait_for_the_disk&gt;</pre>" in body
    assert "python -m supervisor stack 1" in body
    assert "<td>stack</td>" not in body, "below the table, not in it"
