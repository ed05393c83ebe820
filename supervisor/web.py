"""The operator's page: a read-only view of the queue, rendered on the server as plain HTML.

Served at ``/`` by the supervisor's metrics server, and alone by
``python -m supervisor web``. No script, no build step, nothing fetched from
elsewhere: a ``<meta http-equiv="refresh">`` reloads it every few seconds, and
the Content-Security-Policy forbids scripts altogether, so a string that slipped
past escaping still could not run.

Everything a producer controls (type names, errors, unique keys, options,
supervisor ids) is escaped with :func:`html.escape` at the one place it enters
the HTML (:func:`e`). Every read is bounded: live counts and recent history
use status-led indexes, listings are keyset pages of :data:`PAGE_SIZE` rows,
and ``task_options`` is read only on one task's page, only when asked
(``?options=1``). A listing page looks back at most :data:`SCAN_IDS` ids, so
even a filter that matches nothing costs a bounded range of the primary key.

Pages: ``/`` (overview), ``/tasks`` (a filtered listing, with the equivalent
bulk command), ``/tasks/<id>`` (one task). The page writes nothing: the
commands it shows are for the operator to run.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import html
import signal
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from supervisor import bulk
from supervisor.dsn import Dsn
from supervisor.errors import StartupError, StoreError, UnreadableRow, UsageError
from supervisor.lifecycle import Failure, Status
from supervisor.policy import effective_values
from supervisor.store import (
    StatusCount,
    Store,
    TaskFilter,
    TaskRow,
    TaskSummary,
    TypeInfo,
    open_store,
)
from supervisor.usage import describe as describe_usage

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

REFRESH_S = 5
PAGE_SIZE = 50
# How many ids one listing page may look back: a filter that matches little must not make a
# page read a table of millions (about 0.1 s on MariaDB; the page links to the next range).
SCAN_IDS = 100_000
RUNNING_SHOWN = 50
FAILURES_SHOWN = 20
HISTORY_S = 3600.0  # the overview's "finished in the last hour"
COOKIE = "supervisor_web_token"
BUSY_WAIT_S = 2.0
MAX_QUERY_FIELDS = 32
TOKEN_ENV = "SUPERVISOR_WEB_TOKEN"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    # No script may run at all; styles are inline; nothing is loaded from elsewhere.
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:20px;margin:0 0 .2em}h2{font-size:16px;margin:1.4em 0 .4em}
table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right}
td.t{white-space:nowrap}
pre{background:#f6f6f6;padding:8px;overflow:auto;max-height:40em;white-space:pre-wrap}
code.cmd{display:block;background:#f6f6f6;padding:6px;margin:4px 0}
.muted{color:#777}.bad{color:#a00}.paused{color:#a60;font-weight:bold}
.bar{display:inline-block;width:80px;height:9px;background:#eee;vertical-align:middle}
.bar span{display:block;height:9px;background:#4a8}
nav a{margin-right:1em}form label{margin-right:.8em}
"""


def e(value: object) -> str:
    """Text made inert in HTML, quotes included: the one way a value enters a page."""
    return html.escape("" if value is None else str(value), quote=True)


def local_host(host: str) -> bool:
    return host in LOCAL_HOSTS


def check_exposure(host: str, token: str | None, flag: str) -> None:
    """Refuse to serve the page beyond this host without a token (one line, exit status 2)."""
    if not local_host(host) and not token:
        raise UsageError(
            f"serving the web page on {host} (not this host only) needs a token: "
            f"set --web-token or {TOKEN_ENV}, or bind {flag} to 127.0.0.1"
        )


class Unauthorized(Exception):
    """The request carries no valid token."""


class BadRequest(Exception):
    """A query string the page cannot use; its message is shown, escaped."""


class NotFound(Exception):
    """No such page or task."""


class Busy(Exception):
    """The page's connection is still serving an earlier request."""


@attrs.define
class WebPage:
    """The WSGI application of the page.

    ``open_store`` is called on first use and again after a database error:
    the page has its own connection (the loop's is the loop's alone), used
    by one request at a time (a database connection is not thread-safe).
    ``token``: when set, every page needs it, as ``Authorization: Bearer``,
    as the cookie a first ``?token=`` visit sets, or as that query parameter.
    """

    open_store: Callable[[], Store]
    token: str | None = None
    refresh_s: int = REFRESH_S
    _store: Store | None = None
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @classmethod
    def for_dsn(cls, dsn: Dsn, token: str | None) -> WebPage:
        """The page inside a supervisor: a connection of its own, opened on the first request.

        The loop's connection belongs to the loop's thread (and to
        :mod:`supervisor.dblink` alone); the page never shares it.
        """
        return cls(open_store=lambda: open_store(dsn), token=token)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = list(HEADERS)
        try:
            self._authorize(environ, headers)
            if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed", [*headers, ("Allow", "GET, HEAD")])
                return [self._page("Read-only", "<p>This page only reads.</p>").encode()]
            status, body = "200 OK", self._route(environ)
        except Unauthorized:
            headers.append(("WWW-Authenticate", 'Bearer realm="supervisor"'))
            status, body = "401 Unauthorized", self._page("Token needed", UNAUTHORIZED)
        except _Redirect as redirect:
            headers.append(("Location", redirect.location))
            status, body = "303 See Other", ""
        except BadRequest as exc:
            status, body = "400 Bad Request", self._page("Bad request", f"<p>{e(exc)}</p>")
        except NotFound as exc:
            status, body = "404 Not Found", self._page("Not found", f"<p>{e(exc)}</p>")
        except Busy:
            headers.append(("Retry-After", str(self.refresh_s)))
            status = "503 Service Unavailable"
            body = self._page("Busy", "<p>An earlier request is still reading; try again.</p>")
        except StoreError as exc:
            self._drop_store()
            status = "503 Service Unavailable"
            body = self._page("Database unavailable", f"<p class=bad>{e(exc)}</p>")
        start_response(status, headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body.encode()]

    # --- access --------------------------------------------------------------------------

    def _authorize(self, environ: dict[str, Any], headers: list[tuple[str, str]]) -> None:
        """Accept the token from a header, the cookie, or once from the query string.

        A valid ``?token=`` is moved into an HttpOnly cookie and the browser is
        sent to the same address without it, so the token does not stay in
        the address bar, the history or a link copied from the page.
        """
        if not self.token:
            return
        given = [bearer(environ.get("HTTP_AUTHORIZATION", ""))]
        given.append(cookie(environ.get("HTTP_COOKIE", ""), COOKIE))
        if any(self._valid(value) for value in given):
            return
        query = parse_query(environ.get("QUERY_STRING", ""))
        if self._valid(first(query, "token")):
            headers.append(
                ("Set-Cookie", f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/")
            )
            rest = {k: v for k, v in query.items() if k != "token"}
            # One leading slash: "//host/x" would send the browser to another host.
            path = "/" + urllib.parse.quote(str(environ.get("PATH_INFO", "")).lstrip("/"))
            raise _Redirect(path + ("?" + urllib.parse.urlencode(rest, doseq=True) if rest else ""))
        raise Unauthorized

    def _valid(self, value: str | None) -> bool:
        assert self.token
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    def _with_store(self, read: Callable[[Store], str]) -> str:
        """Run ``read`` on the page's one connection, waiting at most :data:`BUSY_WAIT_S`.

        Requests that queued behind a read on a database that hangs would each
        hold one of the server's few connection slots, until ``/metrics`` and
        ``/healthz`` could not be answered: they are told "busy" instead.
        """
        if not self._lock.acquire(timeout=BUSY_WAIT_S):
            raise Busy
        try:
            if self._store is None:
                self._store = self.open_store()
            return read(self._store)
        finally:
            self._lock.release()

    def _drop_store(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(StoreError):
                store.close()

    # --- pages ---------------------------------------------------------------------------

    def _route(self, environ: dict[str, Any]) -> str:
        path = environ.get("PATH_INFO", "/") or "/"
        query = parse_query(environ.get("QUERY_STRING", ""))
        if path == "/":
            return self._with_store(self.overview)
        if path == "/tasks":
            return self._with_store(lambda store: self.listing(store, query))
        prefix = "/tasks/"
        if path.startswith(prefix) and path[len(prefix) :].isascii():
            text = path[len(prefix) :]
            if text.isdigit() and len(text) < 20:
                task_id = int(text)
                with_options = first(query, "options") == "1"
                return self._with_store(lambda store: self.task(store, task_id, with_options))
        raise NotFound(f"not found: no page at {path} (try /, /tasks or /metrics)")

    def overview(self, store: Store) -> str:
        now = store.utc_now()
        live = store.counts(live_only=True)
        finished = store.finished_counts(HISTORY_S)
        infos = {info.type: info for info in store.type_infos()}
        running = store.find_tasks(
            TaskFilter(statuses=frozenset({Status.RUNNING})), limit=RUNNING_SHOWN
        )
        failures = store.find_tasks(
            TaskFilter(statuses=frozenset({Status.FAILED})), limit=FAILURES_SHOWN
        )
        parts = [
            "<h2>Queue</h2>",
            queue_table(live, finished, infos),
            "<h2>Supervisors</h2>",
            fleet_table(store, now),
            f"<h2>Running <span class=muted>(newest {RUNNING_SHOWN})</span></h2>",
            running_table(running, now),
            f"<h2>Recent failures <span class=muted>(newest {FAILURES_SHOWN}; "
            f'<a href="/tasks?status=failed">all, with filters</a>)</span></h2>',
            listing_table(failures),
        ]
        return self._page("Overview", "\n".join(parts), now=now)

    def listing(self, store: Store, query: dict[str, list[str]]) -> str:
        now = store.utc_now()
        where = filter_from_query(query, now)
        before = first(query, "before")
        if before is not None and not (before.isdigit() and len(before) < 20):
            raise BadRequest("before must be a task id")
        if before is not None:
            top = int(before)
        else:
            newest = store.find_tasks(TaskFilter(), limit=1)
            top = newest[0].id + 1 if newest else 1
        floor = max(1, top - SCAN_IDS)
        page = store.find_tasks(where, before_id=top, min_id=floor, limit=PAGE_SIZE)
        parts = [filter_form(where, query), commands_for(where), listing_table(page)]
        links = []
        if before is not None:
            links.append(f'<a href="/tasks?{e(query_of(where))}">newest</a>')
        if len(page) == PAGE_SIZE:
            older = query_of(where, before=page[-1].id)
            links.append(f'<a href="/tasks?{e(older)}" id=older>older</a>')
        elif floor > 1:  # this page looked back SCAN_IDS ids; older ones may match too
            older = query_of(where, before=floor)
            links.append(
                f"<span class=muted>searched ids {floor} to {top - 1}</span> "
                f'<a href="/tasks?{e(older)}" id=older>search older</a>'
            )
        parts.append(f"<p>{' '.join(links)}</p>")
        return self._page("Tasks", "\n".join(parts), now=now)

    def task(self, store: Store, task_id: int, with_options: bool) -> str:
        try:
            row: TaskRow | None = store.get(task_id)
        except UnreadableRow as exc:
            fields = {k: v for k, v in exc.fields.items() if k != "task_options" or with_options}
            body = f"<p class=bad>{e(exc)}</p>" + fields_table(fields)
            return self._page(f"Task {task_id}", body)
        if row is None:
            raise NotFound(f"no task with id {task_id}")
        info = next((i for i in store.type_infos() if i.type == row.type), None)
        return self._page(f"Task {task_id}", task_body(row, info, with_options))

    def _page(self, title: str, body: str, *, now: datetime | None = None) -> str:
        stamp = f" · {now:%Y-%m-%d %H:%M:%S} UTC" if now else ""
        return (
            "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="refresh" content="{int(self.refresh_s)}">'
            '<meta name="viewport" content="width=device-width">'
            f"<title>{e(title)} · supervisor</title><style>{STYLE}</style></head><body>"
            f"<h1>{e(title)}</h1>"
            f'<nav><a href="/">overview</a><a href="/tasks?status=failed">failures</a>'
            f'<a href="/tasks?status=running">running</a><a href="/tasks">all tasks</a>'
            f"<span class=muted>read-only · refreshes every {int(self.refresh_s)} s{stamp}"
            f"</span></nav>\n{body}\n</body></html>\n"
        )


UNAUTHORIZED = (
    "<p>This page needs the token the supervisor was started with (--web-token or "
    f"{TOKEN_ENV}): open it once as <code>/?token=…</code>, or send "
    "<code>Authorization: Bearer …</code>.</p>"
)


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


# --- request parsing -------------------------------------------------------------------------


def parse_query(text: str) -> dict[str, list[str]]:
    """The query string, bounded: a request with hundreds of fields is refused, not parsed."""
    try:
        return urllib.parse.parse_qs(text, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise BadRequest("too many query parameters") from None


def first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def filter_from_query(query: dict[str, list[str]], now: datetime) -> TaskFilter:
    """The listing's filter; values outside the lifecycle are a 400, never a query."""
    try:
        statuses = frozenset(Status(s) for s in query.get("status", []) if s)
        failure_text = first(query, "failure")
        failure = Failure(failure_text) if failure_text else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    try:
        since = bulk.moment(first(query, "since") or None, "since", now)
        until = bulk.moment(first(query, "until") or None, "until", now)
    except UsageError as exc:
        raise BadRequest(str(exc)) from None
    return TaskFilter(
        type=first(query, "type") or None,
        statuses=statuses,
        failure=failure,
        since=since,
        until=until,
        error_match=first(query, "error") or None,
    )


def query_of(where: TaskFilter, *, before: int | None = None) -> str:
    """The listing's query string for ``where`` (times absolute, so a page link stays put)."""
    pairs: list[tuple[str, str]] = []
    if where.type is not None:
        pairs.append(("type", where.type))
    pairs += [("status", s.value) for s in sorted(where.statuses, key=lambda s: s.value)]
    if where.failure is not None:
        pairs.append(("failure", where.failure.value))
    if where.since is not None:
        pairs.append(("since", where.since.strftime(bulk.TIME_FORMAT)))
    if where.until is not None:
        pairs.append(("until", where.until.strftime(bulk.TIME_FORMAT)))
    if where.error_match is not None:
        pairs.append(("error", where.error_match))
    if before is not None:
        pairs.append(("before", str(before)))
    return urllib.parse.urlencode(pairs)


# --- fragments -------------------------------------------------------------------------------


def table(head: list[str], rows: Iterable[Iterable[str]], empty: str) -> str:
    """Cells arrive as HTML already escaped by their maker; headings are constants."""
    lines = ["<tr>" + "".join(cells) + "</tr>" for cells in rows]
    if not lines:
        return f"<p class=muted>{empty}</p>"
    heading = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return f"<table>{heading}{''.join(lines)}</table>"


def td(value: object, css: str = "") -> str:
    return f"<td{' class=' + css if css else ''}>{e(value)}</td>"


def queue_table(
    live: list[StatusCount], finished: list[StatusCount], infos: dict[str, TypeInfo]
) -> str:
    counts: dict[str, dict[str, int]] = {}
    oldest: dict[str, float | None] = {}
    for line in [*live, *finished]:
        counts.setdefault(line.type, {})[str(line.status)] = line.count
        if line.status is Status.QUEUED:
            oldest[line.type] = line.oldest_age_s
    for name, known in infos.items():
        if known.paused or known.schedule:
            counts.setdefault(name, {})
    rows = []
    for name in sorted(counts):
        info = infos.get(name)
        state = "paused" if info and info.paused else ""
        schedule = info.schedule if info and info.schedule else ""
        link = (
            f'<td><a href="/tasks?{e(urllib.parse.urlencode({"type": name}))}">{e(name)}</a></td>'
        )
        cells = [link, f"<td class=paused>{state}</td>"]
        cells += [td(counts[name].get(s, 0), "n") for s in ("queued", "running")]
        cells.append(td(age(oldest.get(name)), "n"))
        cells += [td(counts[name].get(s, 0), "n") for s in ("completed", "failed", "cancelled")]
        cells.append(td(schedule))
        rows.append(cells)
    head = ["type", "", "queued", "running", "oldest queued"]
    head += ["completed 1h", "failed 1h", "cancelled 1h", "schedule"]
    return table(head, rows, "no queued or running tasks, none finished in the last hour")


def fleet_table(store: Store, now: datetime) -> str:
    rows = [
        [
            td(info.id),
            td(info.host),
            td(info.pid, "n"),
            td(info.workers, "n"),
            td(info.version),
            td(since(now, info.heartbeat_at) + " ago"),
            td("alive" if info.alive else "gone (no heartbeat)", "" if info.alive else "bad"),
        ]
        for info in store.supervisors()
    ]
    head = ["supervisor", "host", "pid", "workers", "version", "last heartbeat", ""]
    return table(head, rows, "no supervisor registered")


def running_table(tasks: list[TaskSummary], now: datetime) -> str:
    rows = [
        [
            task_link(t),
            td(t.type),
            f'<td><span class=bar><span style="width:{int(t.progress_pct)}%"></span></span> '
            f"{int(t.progress_pct)}%</td>",
            td(f"{t.attempts}/{t.max_attempts if t.max_attempts is not None else '-'}", "n"),
            td(since(now, t.started_at), "n"),
            td(age((t.deadline_at - now).total_seconds()), "n"),
            td(t.claimed_by),
        ]
        for t in tasks
    ]
    head = ["id", "type", "progress", "attempt", "running for", "time left", "supervisor"]
    return table(head, rows, "nothing running")


def listing_table(tasks: list[TaskSummary]) -> str:
    rows = [
        [
            task_link(t),
            td(t.type),
            td(t.status.value),
            td(t.failure.value if t.failure else "", "bad"),
            td(f"{t.attempts}/{t.max_attempts if t.max_attempts is not None else '-'}", "n"),
            td(stamp(t.created_at), "t"),
            td(stamp(t.completed_at), "t"),
            td(first_line(t.error_head)),
        ]
        for t in tasks
    ]
    head = ["id", "type", "status", "failure", "attempts", "created", "finished", "error"]
    return table(head, rows, "no task matches")


def task_link(task: TaskSummary) -> str:
    return f'<td class=n><a href="/tasks/{int(task.id)}">{int(task.id)}</a></td>'


def filter_form(where: TaskFilter, query: dict[str, list[str]]) -> str:
    def text(name: str, label: str, value: str | None) -> str:
        return f'<label>{label} <input name={name} value="{e(value or "")}" size=14></label>'

    def select(name: str, values: list[str], chosen: str | None) -> str:
        options = "".join(
            f"<option{' selected' if v == chosen else ''}>{e(v)}</option>" for v in ["", *values]
        )
        return f"<label>{name} <select name={name}>{options}</select></label>"

    statuses = sorted(s.value for s in where.statuses)
    return (
        '<form method=get action="/tasks">'
        + text("type", "type", where.type)
        + select("status", [s.value for s in Status], statuses[0] if len(statuses) == 1 else None)
        + select(
            "failure", [f.value for f in Failure], where.failure.value if where.failure else None
        )
        + text("since", "since", first(query, "since"))
        + text("until", "until", first(query, "until"))
        + text("error", "error contains", where.error_match)
        + "<button>filter</button></form>"
        + "<p class=muted>since/until: UTC time (2026-01-31T14:00:00) or a span back (30m, 2h,"
        " 7d); a finished task by when it finished, a live one by when it was created.</p>"
    )


def commands_for(where: TaskFilter) -> str:
    """The bulk commands that would act on this filter, for the operator to copy and run."""
    lines = [
        f"<code class=cmd>{e(bulk.command_line(command, where))}</code>"
        for command in ("retry", "cancel")
        if bulk.applicable(command, where)
    ]
    if not lines:
        return ""
    return (
        "<p>The same selection from the command line (drop <code>--dry-run</code> to act):"
        f"</p>{''.join(lines)}"
    )


def task_body(row: TaskRow, info: TypeInfo | None, with_options: bool) -> str:
    fields: dict[str, object] = {
        f.name: getattr(row, f.name) for f in attrs.fields(TaskRow) if f.name != "options"
    }
    fields.pop("last_error")
    fields.pop("stack")  # dozens of lines: below the table, as last_error
    fields["usage"] = describe_usage(row.cpu_s, row.peak_rss_bytes, row.wall_s)
    parts = [fields_table(fields)]
    parts.append("<h2>Effective policy</h2>" + policy_table(row, info))
    if row.last_error is not None:
        parts.append(f"<h2>last_error</h2><pre id=last_error>{e(row.last_error)}</pre>")
    if row.stack is not None:
        taken = e(str(row.stack_at))
        parts.append(f"<h2>stack <span class=muted>taken at {taken}</span></h2>")
        parts.append(f"<pre id=stack>{e(row.stack)}</pre>")
    if with_options:
        parts.append(f"<h2>task_options</h2><pre id=options>{e(row.options)}</pre>")
    else:
        parts.append(
            f'<p><a href="/tasks/{int(row.id)}?options=1">show task_options</a> '
            "<span class=muted>(they may hold what a producer meant to keep private)</span></p>"
        )
    commands = [f"python -m supervisor show {int(row.id)}"]
    if row.status in bulk.ALLOWED["retry"]:
        commands.append(f"python -m supervisor retry {int(row.id)}")
    if row.status in bulk.ALLOWED["cancel"]:
        commands.append(f"python -m supervisor cancel {int(row.id)}")
    if row.status is Status.RUNNING:
        commands.append(f"python -m supervisor stack {int(row.id)}")
    parts.append("".join(f"<code class=cmd>{e(c)}</code>" for c in commands))
    return "\n".join(parts)


def policy_table(row: TaskRow, info: TypeInfo | None) -> str:
    """What applies, with its source, by the same rule as ``show`` (``policy.effective_values``)."""
    declared = info.policy if info else None
    found = effective_values(
        max_attempts=row.max_attempts,
        timeout_s=row.timeout_s,
        claimed=row.was_claimed,
        declared=None if row.was_claimed else declared,
    )
    attempts, timeout = found["max_attempts"], found["timeout_s"]
    rows = [
        [td("max_attempts"), td(f"{attempts.value} ({attempts.source})")],
        [
            td("attempt timeout"),
            td(
                f"{timeout.value:g} s ({timeout.source})"
                if timeout.value is not None
                else "none (the budget only)"
            ),
        ],
        [td("budget ends"), td(stamp(row.deadline_at))],
        [td("paused type"), td("yes" if info and info.paused else "no")],
    ]
    if declared is not None:
        rows.append([td("handler declares"), td(declared.as_constants() or "nothing")])
    return table(["", ""], rows, "")


def fields_table(fields: dict[str, object]) -> str:
    rows = [[td(name), td(plain(value))] for name, value in fields.items()]
    return table(["field", "value"], rows, "")


def plain(value: object) -> object:
    if isinstance(value, datetime):
        return stamp(value)
    if isinstance(value, Status | Failure):
        return value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def stamp(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def first_line(text: str | None) -> str:
    """An error's first line: ``last_error`` starts with ``Type: message``, then the stack."""
    lines = (text or "").strip().splitlines()
    return lines[0][:200] if lines else ""


def since(now: datetime, then: datetime | None) -> str:
    return "-" if then is None else age((now - then).total_seconds())


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 120:
        return f"{sign}{seconds:.0f}s"
    if seconds < 7200:
        return f"{sign}{seconds / 60:.0f}m"
    return f"{sign}{seconds / 3600:.1f}h"


DEFAULT_PORT = 9192


def add_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The flags of ``python -m supervisor web``."""
    parser.add_argument(
        "--host",
        default=environ.get("SUPERVISOR_WEB_HOST", "127.0.0.1"),
        help="address to bind (env SUPERVISOR_WEB_HOST; default 127.0.0.1: this host only; "
        "any other needs a token)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(environ.get("SUPERVISOR_WEB_PORT", DEFAULT_PORT)),
        help="port (env SUPERVISOR_WEB_PORT; default %(default)s; 0 picks a free one)",
    )
    parser.add_argument(
        "--web-token",
        default=None,
        help=f"the page requires this token (env {TOKEN_ENV}, which ps does not show)",
    )
    parser.add_argument(
        "--refresh", type=int, default=REFRESH_S, help="seconds between reloads of the page"
    )


def token_from(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    return str(args.web_token or environ.get(TOKEN_ENV) or "") or None


def run_alone(
    store: Store, host: str, port: int, token: str | None, *, refresh_s: int = REFRESH_S
) -> int:
    """``python -m supervisor web``: the page alone, plus an open ``/healthz``, until a signal.

    TERM ends it with status 0, as Ctrl-C does (the CLI turns that into 130).
    Its one line on standard output names the address, with the port chosen
    when ``port`` is 0.
    """
    from supervisor import http

    page = WebPage(open_store=lambda: store, token=token, refresh_s=max(1, refresh_s))

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        return page(environ, start_response)

    try:
        server = http.make_page_server(host, port, app)
    except OSError as exc:
        raise StartupError(
            f"cannot serve the page on {host}:{port} ({exc.strerror or exc}); choose another "
            "with --port"
        ) from None
    signal.signal(signal.SIGTERM, _stop)
    try:
        print(
            f"serving the operator's page at http://{host}:{server.server_address[1]}/", flush=True
        )
        server.serve_forever(poll_interval=0.2)
    except _Stop:
        return 0
    finally:
        server.server_close()
        store.close()
    return 0  # pragma: no cover - serve_forever returns only through an exception


class _Stop(BaseException):
    """SIGTERM: leave serve_forever and exit 0.

    A BaseException, as KeyboardInterrupt is: socketserver swallows any
    ``Exception`` raised while it handles a request (``handle_error``), and
    the signal may land there.
    """


def _stop(signum: int, frame: object) -> None:
    raise _Stop
