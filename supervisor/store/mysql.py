"""MySQL 8 / MariaDB 10.6+ through pymysql: the backend for fleets of supervisors.

Session rules that keep many supervisors from hurting each other:

* READ COMMITTED: under REPEATABLE READ, gap locks make claims deadlock with
  producers' INSERTs, and MariaDB 11.6+ raises 1020 on locking reads of rows
  changed since the snapshot.
* autocommit outside the claim transaction, so a polling connection never
  sits in a stale snapshot.
* CLIENT_FOUND_ROWS, so a fenced write reports rows *matched*: a progress
  write of an unchanged value is not mistaken for a lost claim.
* short lock waits, and 1213/1205/1020 retried with jitter.

Concurrency limits (:mod:`supervisor.store.limits`): a claim of a type whose
handler declares ``CONCURRENCY`` or ``CONCURRENCY_PER_KEY`` locks the type's
``task_types`` row (types in sorted order), counts the running rows, and claims
what fits, all in the claim's transaction; under READ COMMITTED the count sees
every claim committed before the lock was granted. Types without limits claim
with the plain statements, without that lock.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT

from supervisor.dsn import MysqlDsn
from supervisor.errors import StoreError, StoreMisconfigured, StoreUnavailable
from supervisor.lifecycle import MAX_OPTIONS_BYTES
from supervisor.policy import HandlerPolicy, claim_defaults, policy_of
from supervisor.store import limits, migrator
from supervisor.store.base import Claim, Enqueued, NewTask
from supervisor.store.queries import load_queries
from supervisor.store.sql import (
    Params,
    Row,
    SqlStore,
    admitted_rows,
    claim_order,
    row_to_claim,
    running_of,
    seconds,
)
from supervisor.usage import Usage

T = TypeVar("T")

DEADLOCK, LOCK_WAIT_TIMEOUT, RECORD_CHANGED = 1213, 1205, 1020
RETRYABLE = frozenset({DEADLOCK, LOCK_WAIT_TIMEOUT, RECORD_CHANGED})
# Errors that mean "the server is not reachable (now)": worth reconnecting later.
UNREACHABLE = frozenset(
    {
        1040,  # too many connections
        1044,  # access denied to this database
        1045,  # access denied
        1049,  # unknown database
        1053,  # server shutdown in progress
        1927,  # connection killed (MariaDB)
        2002,
        2003,
        2005,
        2006,
        2013,
        2014,
        2055,
        4031,  # disconnected by the server for inactivity (MySQL 8)
    }
)
# Among those, the ones only the operator can fix: fatal when ``run`` starts.
MISCONFIGURED = frozenset(
    {
        1044,  # access denied to this database
        1045,  # access denied (user or password)
        1049,  # unknown database
        2005,  # unknown host
    }
)
TRANSACTION_TRIES = 6
LOCK_WAIT_S = 5
# A statement that has not answered in this long is treated as a lost connection: the parent's
# loop is single-threaded, so this bounds how long a database that hangs (rather than refuses)
# can delay deadline kills. Twice the lock wait leaves room for a lock wait that then succeeds.
READ_TIMEOUT_S = 2 * LOCK_WAIT_S
# How long a migration may take, and how long another supervisor waits for it.
MIGRATION_TIMEOUT_S = 3600


def _unknown_host(exc: BaseException) -> bool:
    """PyMySQL reports a host name that does not resolve as 2003 (cannot connect), not 2005.

    Only a definite "no such name" counts: a DNS server that is failing now
    (``EAI_AGAIN``) is an outage and is retried.
    """
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, socket.gaierror) and cause.errno in _NO_SUCH_NAME


_NO_SUCH_NAME = {
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
}


DUPLICATE_KEY = 1062
UNIQUE_TRIES = 5


def insert_task(cursor: Any, params: Params) -> Enqueued:
    """Insert one task, or find the live task that holds its (type, unique key).

    Shared by the store and ``enqueue_in_transaction`` (the caller's cursor, of
    any cursor class). A duplicate key fails only this statement, not the
    transaction. The live task may end between the failed insert and the
    read; then the key is free, and the insert is tried again.
    """
    queries = load_queries("mysql.sql")
    for _ in range(UNIQUE_TRIES):
        try:
            cursor.execute(queries["enqueue"], params)
            return Enqueued(int(cursor.lastrowid))
        except pymysql.err.IntegrityError as exc:
            if exc.args[0] != DUPLICATE_KEY or params["unique_key"] is None:
                raise
        cursor.execute(queries["live_unique"], params)
        found = cursor.fetchone()
        if found is not None:
            task_id = found["id"] if isinstance(found, dict) else found[0]
            return Enqueued(int(task_id), existed=True)
    raise StoreError(
        f"the live task holding unique key {params['unique_key']!r} kept ending and "
        f"reappearing over {UNIQUE_TRIES} tries; nothing was enqueued"
    )


class MysqlStore(SqlStore):
    def __init__(self, dsn: MysqlDsn) -> None:
        self.dsn = dsn
        self._queries = load_queries("mysql.sql")
        self._conn: pymysql.connections.Connection[Any] | None = None

    def _connection(self) -> pymysql.connections.Connection[Any]:
        if self._conn is None:
            self._conn = self._connect(read_timeout_s=READ_TIMEOUT_S)
        return self._conn

    def _connect(self, *, read_timeout_s: float) -> pymysql.connections.Connection[Any]:
        try:
            conn = pymysql.connect(
                host=self.dsn.host,
                port=self.dsn.port,
                user=self.dsn.user,
                password=self.dsn.password,
                database=self.dsn.database,
                unix_socket=self.dsn.unix_socket,
                charset="utf8mb4",
                autocommit=True,
                client_flag=CLIENT.FOUND_ROWS,
                connect_timeout=self.dsn.connect_timeout,
                read_timeout=read_timeout_s,
                write_timeout=read_timeout_s,
                cursorclass=pymysql.cursors.DictCursor,
            )
            with conn.cursor() as cursor:
                for statement in ("session_read_committed", "session_lock_wait"):
                    cursor.execute(self._queries[statement], {"lock_wait_s": LOCK_WAIT_S})
        except (pymysql.err.MySQLError, OSError) as exc:
            raise self._translate(exc) from None
        return conn

    def _translate(self, exc: BaseException) -> StoreError:
        """Turn a driver error into one clear line that names the server but not the password."""
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        message = exc.args[1] if len(exc.args) > 1 else str(exc)
        where = self.dsn.redacted()
        if isinstance(exc, pymysql.err.InterfaceError | OSError) or code in UNREACHABLE:
            self._drop()
            if code in MISCONFIGURED or _unknown_host(exc):
                return StoreMisconfigured(f"MySQL at {where} refused us: ({code}) {message}")
            return StoreUnavailable(f"MySQL at {where} is unavailable: ({code}) {message}")
        return StoreError(f"MySQL at {where} refused the operation: ({code}) {message}")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # the socket may be gone; nothing to save
                conn.close()

    def _with_retries(self, work: Callable[[pymysql.connections.Connection[Any]], T]) -> T:
        """Run ``work`` retrying deadlocks and lock waits with jittered backoff."""
        for attempt in range(TRANSACTION_TRIES):
            try:
                return work(self._connection())
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args else 0
                if code in RETRYABLE and attempt < TRANSACTION_TRIES - 1:
                    time.sleep(random.uniform(0, 0.01 * 2**attempt))
                    continue
                raise self._translate(exc) from None
            except OSError as exc:
                raise self._translate(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, name: str, params: Params | None = None) -> tuple[int, list[Row]]:
        query = self._queries[name]

        def work(conn: pymysql.connections.Connection[Any]) -> tuple[int, list[Row]]:
            with conn.cursor() as cursor:
                matched = cursor.execute(query, params)
                return matched, list(cursor.fetchall())

        return self._with_retries(work)

    def _transaction(self, body: Callable[[pymysql.cursors.DictCursor], T]) -> T:
        """One short explicit transaction; rolled back on any error, retried on lock conflicts."""

        def work(conn: pymysql.connections.Connection[Any]) -> T:
            conn.begin()
            try:
                with conn.cursor() as cursor:
                    result = body(cursor)
                conn.commit()
            except BaseException:
                try:
                    conn.rollback()
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    self._drop()
                raise
            return result

        return self._with_retries(work)

    def _write_then_read(self, write: str, read: str, params: Params) -> list[Row]:
        def body(cursor: pymysql.cursors.DictCursor) -> list[Row]:
            cursor.execute(self._queries[write], params)
            cursor.execute(self._queries[read], params)
            return list(cursor.fetchall())

        return self._transaction(body)

    def migrate(self) -> None:
        """Apply the pending migrations (see :mod:`supervisor.store.migrator`).

        The common case, nothing pending, is two reads and no lock. Migrations
        run on a connection of their own, with no read timeout: an ALTER of a
        large table may take minutes, which the loop's connection would take
        for a dead server. ``GET_LOCK`` (released when that connection closes,
        however it closes) lets one supervisor migrate while the others wait.
        """
        applied, has_tasks = self._versions(self._run)
        if not migrator.pending("mysql", applied, has_tasks_table=has_tasks):
            return
        conn = self._connect(read_timeout_s=MIGRATION_TIMEOUT_S)
        try:

            def run(name: str, params: Params | None = None) -> tuple[int, list[Row]]:
                with conn.cursor() as cursor:
                    matched = cursor.execute(self._queries[name], params)
                    return matched, list(cursor.fetchall())

            got = run("migration_lock", {"wait_s": MIGRATION_TIMEOUT_S})[1]
            if not got or got[0]["got"] != 1:
                raise StoreUnavailable("another supervisor held the migration lock too long")
            run("create_schema_migrations")
            applied, has_tasks = self._versions(run)  # again: another may have migrated
            if migrator.to_adopt(applied, has_tasks_table=has_tasks):
                first = migrator.migrations("mysql")[0]
                run("record_migration", {"version": 1, "name": first.name})
            for migration in migrator.pending("mysql", applied, has_tasks_table=has_tasks):
                with conn.cursor() as cursor:
                    for statement in migration.statements:
                        cursor.execute(statement)
                run("record_migration", {"version": migration.version, "name": migration.name})
        except pymysql.err.MySQLError as exc:
            raise self._translate(exc) from None
        finally:
            with contextlib.suppress(Exception):  # closing releases the lock in any case
                conn.close()

    @staticmethod
    def _versions(run: Callable[..., tuple[int, list[Row]]]) -> tuple[set[int], bool]:
        """(versions recorded, whether a ``tasks`` table exists)."""
        tables = {str(row["name"]) for row in run("tables")[1]}
        applied: set[int] = set()
        if "schema_migrations" in tables:
            applied = {int(row["version"]) for row in run("applied_migrations")[1]}
        return applied, "tasks" in tables

    def enqueue_many(self, tasks: Sequence[NewTask]) -> list[Enqueued]:
        def body(cursor: pymysql.cursors.DictCursor) -> list[Enqueued]:
            return [insert_task(cursor, self.new_task_params(task)) for task in tasks]

        return self._transaction(body)

    def fire_slot(self, task: NewTask, schedule: str, slot: datetime) -> Enqueued | None:
        params = self.slot_params(task, schedule, slot)
        queries = self._queries

        def body(cursor: pymysql.cursors.DictCursor) -> Enqueued | None:
            cursor.execute(queries["schedule_row"], params)
            cursor.execute(queries["schedule_mark"], params)
            found = cursor.fetchone()
            mark = None if found is None else found["schedule_last_slot"]
            fires = self.slot_decision(mark, slot)
            if mark is None or fires:
                cursor.execute(queries["schedule_advance"], params)
            return insert_task(cursor, self.new_task_params(task)) if fires else None

        return self._transaction(body)

    def claim(
        self,
        owner: str,
        types: Iterable[str],
        limit: int,
        lease_s: float,
        *,
        policies: Mapping[str, HandlerPolicy] | None = None,
    ) -> list[Claim]:
        return self.complete_and_claim((), owner, types, limit, lease_s, policies=policies)[1]

    def complete_many(
        self, claims: Sequence[Claim], usages: Sequence[Usage | None] | None = None
    ) -> set[int]:
        won: set[int] = set()
        paired = list(zip(claims, usages or [None] * len(claims), strict=True))
        for owner in {c.owner for c in claims}:
            mine = [(c, u) for c, u in paired if c.owner == owner]
            won |= self.complete_and_claim(
                [c for c, _ in mine], owner, (), 0, 0.0, usages=[u for _, u in mine]
            )[0]
        return won

    def complete_and_claim(
        self,
        completions: Sequence[Claim],
        owner: str,
        types: Iterable[str],
        limit: int,
        lease_s: float,
        *,
        policies: Mapping[str, HandlerPolicy] | None = None,
        usages: Sequence[Usage | None] | None = None,
    ) -> tuple[set[int], list[Claim]]:
        """Complete ``completions`` (all ``owner``'s) and claim the next batch in ONE transaction.

        One commit (one log flush) instead of two per turn of the parent's loop.
        Completions lock the rows still held first, then complete exactly those:
        reading winners back after the UPDATE could not tell a completion made
        now from one made earlier (a repeated write), which must not count as won.
        """
        type_list = tuple(self._types_list(types))
        claiming = bool(type_list) and limit > 0
        limited = limits.limited_types(type_list, policies)
        if not completions and not claiming:
            return set(), []
        assert all(c.owner == owner for c in completions)
        queries = self._queries
        fences = (
            {**_fence_params(owner, completions), "usage": usage_by_id(completions, usages)}
            if completions
            else {}
        )

        def body(
            cursor: pymysql.cursors.DictCursor, *, optimistic: bool
        ) -> tuple[set[int], list[Row]]:
            held: tuple[int, ...] = ()
            if completions and optimistic:
                # The common case in one statement: every completion still holds its fence.
                # Rows matched (CLIENT_FOUND_ROWS) == completions proves it; otherwise the
                # transaction is rolled back and redone the careful way below.
                if cursor.execute(queries["complete_many"], fences) != len(completions):
                    raise _SomeFenceLost
                held = fences["ids"]
            elif completions:
                cursor.execute(queries["lock_held"], fences)
                held = tuple(int(row["id"]) for row in cursor.fetchall())
                if held:
                    cursor.execute(queries["complete_many"], {**fences, "ids": held})
            rows: list[Row] = []
            if claiming and limited:
                rows = self._claim_with_limits(
                    cursor,
                    type_list,
                    limited,
                    limit=limit,
                    claim=(owner, lease_s),
                    policies=policies,
                )
            elif claiming:
                cursor.execute(
                    queries["claim_select"],
                    {"types": type_list, "limit": limit, "max_options_bytes": MAX_OPTIONS_BYTES},
                )
                rows = list(cursor.fetchall())
                self._claim_rows(cursor, rows, (owner, lease_s), policies)
            return set(held), rows

        try:
            won, rows = self._transaction(functools.partial(body, optimistic=True))
        except _SomeFenceLost:
            won, rows = self._transaction(functools.partial(body, optimistic=False))
        return won, [row_to_claim(row, owner, policies) for row in rows]

    def _claim_with_limits(
        self,
        cursor: pymysql.cursors.DictCursor,
        types: tuple[str, ...],
        limited: list[str],
        *,
        limit: int,
        claim: tuple[str, float],
        policies: Mapping[str, HandlerPolicy] | None,
    ) -> list[Row]:
        """The claim when some of ``types`` have concurrency limits (see :mod:`.limits`).

        Types without limits are selected exactly as claim_select does. Each
        limited type, in sorted order (so two claimers never wait on each other's
        type locks in opposite orders), locks its ``task_types`` row, counts its
        running tasks and selects within its room. The first ``limit`` candidates
        in claim order are claimed; the others were locked only until the commit.
        """
        queries = self._queries
        candidates: list[Row] = []
        unlimited = tuple(t for t in types if t not in limited)
        if unlimited:
            params = {"types": unlimited, "limit": limit, "max_options_bytes": MAX_OPTIONS_BYTES}
            cursor.execute(queries["claim_select"], params)
            candidates += cursor.fetchall()
        for task_type in limited:
            policy = policy_of(policies, task_type)
            candidates += self._limited_candidates(cursor, task_type, policy, limit)
        rows = claim_order(candidates, limit)
        self._claim_rows(cursor, rows, claim, policies)
        return rows

    def _claim_rows(
        self,
        cursor: pymysql.cursors.DictCursor,
        rows: Sequence[Row],
        claim: tuple[str, float],
        policies: Mapping[str, HandlerPolicy] | None,
    ) -> None:
        """Claim the selected rows: one UPDATE per group of types with the same defaults
        (the effective max_attempts and timeout a row without its own gets); one in the
        common case of one type."""
        owner, lease_s = claim
        for (max_attempts, timeout_s), ids in _by_defaults(rows, policies).items():
            params = {
                "ids": ids,
                "owner": owner,
                "lease_us": seconds(lease_s)["us"],
                "max_attempts": max_attempts,
                "timeout_s": timeout_s,
            }
            cursor.execute(self._queries["claim_update"], params)

    def _limited_candidates(
        self, cursor: pymysql.cursors.DictCursor, task_type: str, policy: HandlerPolicy, want: int
    ) -> list[Row]:
        """Lock the type, count its running tasks, select and keep what fits (locked rows).

        A type with nothing runnable is not locked at all: one plain read first, so
        a supervisor busy with other types does not queue on the lock of an idle
        limited type, fleet-wide, at every claim. A task enqueued just after that
        read waits for the next claim, as one enqueued after any claim does.
        """
        queries = self._queries
        anything = {"type": task_type, "no_full_keys": True, "full_keys": (b"",)}
        cursor.execute(queries["probe_limited"], anything)
        if not cursor.fetchall():
            return []
        cursor.execute(queries["lock_task_type"], {"type": task_type})
        cursor.execute(queries["running_by_key"], {"type": task_type})
        running = running_of(cursor.fetchall())
        fetch = limits.fetch_limit(policy, running, want)
        if fetch == 0:
            return []
        params = {
            "type": task_type,
            "limit": fetch,
            "max_options_bytes": MAX_OPTIONS_BYTES,
            **self._key_params(policy, running),
        }
        cursor.execute(queries["claim_select_limited"], params)
        return admitted_rows(list(cursor.fetchall()), policy, running, want)

    def _types_param(self, types: Sequence[str]) -> object:
        return tuple(types)

    def _full_keys_param(self, keys: Sequence[str]) -> object:
        """Keys as bytes, compared with the column's bytes; ``(b"",)`` stands in for none."""
        return tuple(key.encode("utf-8", "surrogateescape") for key in keys) or (b"",)

    def renew_leases(self, owner: str, claims: Sequence[Claim], lease_s: float) -> set[int]:
        if not claims:
            return set()
        params = {**_fence_params(owner, claims), "lease_us": seconds(lease_s)["us"]}
        if self._run("renew_leases", params)[0] == len(claims):
            return {c.id for c in claims}
        return {int(row["id"]) for row in self._rows("still_held", params)}

    def cancelled_claims(self, owner: str, claims: Sequence[Claim]) -> set[int]:
        if not claims:
            return set()
        return {int(r["id"]) for r in self._rows("cancelled_claims", _fence_params(owner, claims))}

    def _sweep(self, name: str, limit: int) -> list[str]:
        """Lock up to ``limit`` matching rows (skipping those others hold), then update them.

        MySQL's UPDATE cannot return the rows it changed; selecting them first
        tells the sweeper which types it expired or lost, for its metrics.
        """
        select, update = self._queries[f"{name}_select"], self._queries[name]

        def body(cursor: pymysql.cursors.DictCursor) -> list[str]:
            cursor.execute(select, {"limit": limit})
            rows = list(cursor.fetchall())
            if not rows:
                return []
            cursor.execute(update, {"ids": tuple(int(row["id"]) for row in rows)})
            return [str(row["type"]) for row in rows]

        return self._transaction(body)

    def close(self) -> None:
        self._drop()


def _by_defaults(
    rows: Sequence[Row], policies: Mapping[str, HandlerPolicy] | None
) -> dict[tuple[int, float | None], tuple[int, ...]]:
    """Claimed ids grouped by what the claim writes where the row sets nothing: one UPDATE
    per group, and in the common case (one type, or types without a policy) just one."""
    groups: dict[tuple[int, float | None], list[int]] = {}
    for row in rows:
        key = claim_defaults(policies, str(row["type"]))
        groups.setdefault(key, []).append(int(row["id"]))
    return {key: tuple(ids) for key, ids in groups.items()}


class _SomeFenceLost(Exception):
    """A completion lost its fence: redo the transaction, finding out which ones won."""


def usage_by_id(claims: Sequence[Claim], usages: Sequence[Usage | None] | None) -> str:
    """``{"<id>": {"c": cpu_s, "r": peak_rss_bytes, "w": wall_s}, ...}``: a batch's figures for
    ``complete_many``, which looks each row's up by its id (the fence is the statement's own
    ``(id, attempts) IN`` clause). A figure not measured is left out: its path reads NULL."""
    return json.dumps(
        {
            str(claim.id): {
                key: value
                for key, value in (
                    ("c", usage.cpu_s),
                    ("r", usage.peak_rss_bytes),
                    ("w", usage.wall_s),
                )
                if value is not None
            }
            for claim, usage in zip(claims, usages or [None] * len(claims), strict=True)
            if usage is not None
        },
        separators=(",", ":"),
    )


def _fence_params(owner: str, claims: Sequence[Claim]) -> Params:
    return {
        "owner": owner,
        "ids": tuple(c.id for c in claims),
        "fences": tuple((c.id, c.attempt) for c in claims),
    }
