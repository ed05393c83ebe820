"""How long the operator's page takes to render over a large ``tasks`` table on MariaDB.

Creates a throwaway database, fills it with ``--rows`` tasks (MariaDB's
SEQUENCE engine makes the rows inside the server: a million take seconds, not
a million round trips), then renders each page in-process through the same
WSGI application the server runs, ``--repeat`` times, and prints the median
and the slowest render. The database is dropped at the end unless ``--keep``.

The mix resembles a queue that keeps its history: most tasks completed over
the last week, a few per cent failed (errors, timeouts, panics), some
cancelled, a live queue of queued and running tasks.

    python scripts/web_bench.py --dsn mysql://root@127.0.0.1:3306/web_bench --rows 1000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.util import setup_testing_defaults

import pymysql

from supervisor.dsn import MysqlDsn, parse_dsn
from supervisor.store import TaskFilter, open_store
from supervisor.web import WebPage

CHUNK = 100_000
WEEK_US = 7 * 86400 * 1_000_000
TYPES = ("resize", "email", "report", "sync", "thumbnail", "webhook", "export", "import")

# One row per sequence value; ``seq`` picks its type, status and times deterministically.
FILL = """
INSERT INTO tasks (type, task_options, status, failure, last_error, attempts, max_attempts,
                   progress_pct, claimed_by, created_at, run_at, deadline_at, started_at,
                   completed_at, lease_expires_at)
SELECT ELT(1 + seq % 8, {types}),
       CONCAT('{{"n": ', seq, '}}'),
       CASE WHEN seq % 100 < 90 THEN 'completed' WHEN seq % 100 < 95 THEN 'failed'
            WHEN seq % 100 < 96 THEN 'cancelled' WHEN seq % 1000 < 999 THEN 'queued'
            ELSE 'running' END,
       CASE WHEN seq % 100 BETWEEN 90 AND 94
            THEN ELT(1 + seq % 3, 'error', 'timeout', 'panic') END,
       CASE WHEN seq % 100 BETWEEN 90 AND 94
            THEN CONCAT('ValueError: bad input ', seq, '\\n\\nTraceback (most recent call last):',
                        '\\n  File "handler.py", line 3\\n')
            WHEN seq % 100 = 95 THEN 'cancelled by an operator' END,
       1, 3, IF(seq % 100 < 90, 100, 0),
       IF(seq % 1000 = 999, 'bench:1', NULL),
       {ago},
       {ago},
       NOW(6) + INTERVAL 1 HOUR,
       IF(seq % 100 < 96 OR seq % 1000 = 999,
          {ago}, NULL),
       IF(seq % 100 < 96, {ago}
                          + INTERVAL 1 SECOND, NULL),
       IF(seq % 1000 = 999, NOW(6) + INTERVAL 60 SECOND, NULL)
FROM seq_{first}_to_{last}
"""


def connect(dsn: MysqlDsn, database: str | None) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=dsn.host,
        port=dsn.port,
        user=dsn.user,
        password=dsn.password or "",
        database=database,
        autocommit=True,
    )


def fill(dsn: MysqlDsn, rows: int) -> None:
    """Create the database afresh, migrate it, and insert ``rows`` tasks in chunks."""
    with connect(dsn, None) as admin, admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{dsn.database}`")
        cursor.execute(f"CREATE DATABASE `{dsn.database}`")
    open_store(dsn).migrate()
    types = ", ".join(f"'{t}'" for t in TYPES)
    # Creation times spread evenly over the last week, the newest ids the newest tasks.
    ago = f"NOW(6) - INTERVAL ({WEEK_US} * ({rows} - seq) DIV {rows}) MICROSECOND"
    with connect(dsn, dsn.database) as conn, conn.cursor() as cursor:
        for first in range(1, rows + 1, CHUNK):
            last = min(rows, first + CHUNK - 1)
            cursor.execute(FILL.format(types=types, ago=ago, first=first, last=last))
            print(f"  filled {last:,} rows", file=sys.stderr)
        cursor.execute("ANALYZE TABLE tasks")


def render(app: Callable[..., Iterable[bytes]], path: str, query: str = "") -> tuple[float, int]:
    """Seconds to render one page, and its HTTP status."""
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
    setup_testing_defaults(environ)
    status: list[str] = []
    started = time.perf_counter()
    body = b"".join(app(environ, lambda s, h: status.append(s)))
    elapsed = time.perf_counter() - started
    assert body
    return elapsed, int(status[0].split()[0])


PAGES = [
    ("overview", "/", ""),
    ("failures (first page)", "/tasks", "status=failed"),
    ("timeouts of one type", "/tasks", "type=resize&failure=timeout"),
    ("all tasks (first page)", "/tasks", ""),
    ("filter matching nothing", "/tasks", "error=no+such+text"),
    ("one task", "/tasks/{newest}", ""),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="mysql://root@127.0.0.1:3306/supervisor_web_bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--no-fill", action="store_true", help="reuse a kept database")
    args = parser.parse_args()
    dsn = parse_dsn(args.dsn, {})
    assert isinstance(dsn, MysqlDsn), "a MySQL/MariaDB DSN"
    if not args.no_fill:
        started = time.perf_counter()
        fill(dsn, args.rows)
        print(
            f"filled {args.rows:,} rows in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
    store = open_store(dsn)
    app = WebPage(open_store=lambda: store)
    try:
        render(app, "/")  # connect, warm the buffer pool
        newest = store.find_tasks(TaskFilter(), limit=1)[0].id
        print(f"{'page':<26} {'median ms':>10} {'max ms':>8}  ({args.repeat} renders each)")
        for name, path, query in PAGES:
            times = []
            for _ in range(args.repeat):
                elapsed, status = render(app, path.format(newest=newest), query)
                assert status == 200, (name, status)
                times.append(elapsed * 1000)
            print(f"{name:<26} {statistics.median(times):>10.1f} {max(times):>8.1f}")
    finally:
        store.close()
        if not args.keep:
            with connect(dsn, None) as admin, admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{dsn.database}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
