"""The embedded default: one SQLite file, safe for several supervisors on one host.

WAL lets readers proceed during a write; ``BEGIN IMMEDIATE`` takes the write
lock up front so two claimers queue on the busy timeout instead of failing on
a lock upgrade; the claim is one ``UPDATE ... RETURNING`` statement. When a
claimed type has a concurrency limit, the claim instead reads the running
counts and the candidates, then claims the ids that fit: ``BEGIN IMMEDIATE``
already serialises that against every other writer of the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime

from supervisor.dsn import SqliteDsn
from supervisor.errors import StoreError, StoreUnavailable
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
    fences_json,
    row_to_claim,
    running_of,
    seconds,
    usage_json,
)
from supervisor.usage import Usage

BUSY_TIMEOUT_MS = 10_000


def insert_task(conn: sqlite3.Connection, params: Params) -> Enqueued:
    """Insert one task, or find the live task that holds its (type, unique key).

    Shared by the store and ``enqueue_in_transaction`` (the caller's connection).
    SQLite has one writer: once the insert has run, even one that inserted
    nothing, no other connection can end the live task before the read.
    """
    queries = load_queries("sqlite.sql")
    cursor = conn.execute(queries["enqueue"], params)
    if cursor.rowcount == 1:
        assert cursor.lastrowid is not None
        return Enqueued(cursor.lastrowid)
    (task_id,) = conn.execute(queries["live_unique"], params).fetchone()
    return Enqueued(int(task_id), existed=True)


class SqliteStore(SqlStore):
    def __init__(self, dsn: SqliteDsn) -> None:
        self.dsn = dsn
        self._queries = load_queries("sqlite.sql")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            directory = os.path.dirname(os.path.abspath(self.dsn.path))
            if not os.path.isdir(directory):
                raise StoreUnavailable(f"SQLite database folder {directory} does not exist")
            try:
                conn = sqlite3.connect(
                    self.dsn.path,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as exc:
                raise StoreUnavailable(
                    f"cannot open SQLite database {self.dsn.path}: {exc}"
                ) from None
            self._conn = conn
        return self._conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from None

    def _run(self, name: str, params: Params | None = None) -> tuple[int, list[Row]]:
        with self._errors():
            cursor = self._connection().execute(self._queries[name], params or {})
            rows = [dict(row) for row in cursor.fetchall()]
            return cursor.rowcount, rows

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the lock from its first statement."""
        with self._errors():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _write_then_read(self, write: str, read: str, params: Params) -> list[Row]:
        with self._immediate() as conn:
            conn.execute(self._queries[write], params)
            return [dict(row) for row in conn.execute(self._queries[read], params).fetchall()]

    def migrate(self) -> None:
        """Apply the pending migrations (see :mod:`supervisor.store.migrator`).

        Nothing pending is two reads. Otherwise the whole run is one immediate
        transaction: SQLite's DDL is transactional, so a migration applies
        entirely or not at all, and a second supervisor starting at the same
        moment waits on the write lock, then finds nothing left to do.
        """
        applied, has_tasks = self._versions()
        if not migrator.pending("sqlite", applied, has_tasks_table=has_tasks):
            return
        with self._immediate() as conn:
            conn.execute(self._queries["create_schema_migrations"])
            applied, has_tasks = self._versions()
            if migrator.to_adopt(applied, has_tasks_table=has_tasks):
                first = migrator.migrations("sqlite")[0]
                conn.execute(self._queries["record_migration"], {"version": 1, "name": first.name})
            for migration in migrator.pending("sqlite", applied, has_tasks_table=has_tasks):
                for statement in migration.statements:
                    conn.execute(statement)
                params = {"version": migration.version, "name": migration.name}
                conn.execute(self._queries["record_migration"], params)

    def _versions(self) -> tuple[set[int], bool]:
        """(versions recorded, whether a ``tasks`` table exists)."""
        tables = {str(row["name"]) for row in self._rows("tables")}
        applied: set[int] = set()
        if "schema_migrations" in tables:
            applied = {int(row["version"]) for row in self._rows("applied_migrations")}
        return applied, "tasks" in tables

    def enqueue_many(self, tasks: Sequence[NewTask]) -> list[Enqueued]:
        with self._immediate() as conn:
            return [insert_task(conn, self.new_task_params(task)) for task in tasks]

    def fire_slot(self, task: NewTask, schedule: str, slot: datetime) -> Enqueued | None:
        params = self.slot_params(task, schedule, slot)
        with self._immediate() as conn:  # the write lock is the row lock here
            conn.execute(self._queries["schedule_row"], params)
            (mark,) = conn.execute(self._queries["schedule_mark"], params).fetchone()
            fires = self.slot_decision(mark, slot)
            if mark is None or fires:
                conn.execute(self._queries["schedule_advance"], params)
            return insert_task(conn, self.new_task_params(task)) if fires else None

    def claim(
        self,
        owner: str,
        types: Iterable[str],
        limit: int,
        lease_s: float,
        *,
        policies: Mapping[str, HandlerPolicy] | None = None,
    ) -> list[Claim]:
        type_list = self._types_list(types)
        if not type_list or limit <= 0:
            return []
        params = {
            "owner": owner,
            "types": json.dumps(type_list),
            "limit": limit,
            "lease_s": seconds(lease_s)["s"],
            "max_options_bytes": MAX_OPTIONS_BYTES,
            "defaults": json.dumps({t: claim_defaults(policies, t) for t in type_list}),
        }
        limited = limits.limited_types(type_list, policies)
        with self._immediate() as conn:
            if limited:
                rows = self._claim_with_limits(conn, type_list, limited, params, policies)
            else:
                rows = conn.execute(self._queries["claim_batch"], params).fetchall()
        rows.sort(key=lambda row: (row["priority"] or 0, row["id"]))
        return [row_to_claim(dict(row), owner, policies) for row in rows]

    def _claim_with_limits(
        self,
        conn: sqlite3.Connection,
        types: list[str],
        limited: list[str],
        params: Params,
        policies: Mapping[str, HandlerPolicy] | None,
    ) -> list[sqlite3.Row]:
        """The claim when some of ``types`` have concurrency limits (see :mod:`.limits`).

        Candidates are read first (the types without limits as claim_batch would
        take them; each limited type within its room), the first ``limit`` in
        claim order are claimed by id. ``BEGIN IMMEDIATE`` holds the write lock
        throughout, so no other claim can slip in between the count and the claim.
        """
        limit = int(params["limit"])
        candidates: list[Row] = []
        unlimited = [t for t in types if t not in limited]
        if unlimited:
            candidates += self._candidates(conn, unlimited, limit, no_full_keys=True)
        for task_type in limited:
            policy = policy_of(policies, task_type)
            running = running_of(self._fetch(conn, "running_by_key", {"type": task_type}))
            fetch = limits.fetch_limit(policy, running, limit)
            if fetch == 0:
                continue
            rows = self._candidates(conn, [task_type], fetch, **self._key_params(policy, running))
            candidates += admitted_rows(rows, policy, running, limit)
        chosen = claim_order(candidates, limit)
        if not chosen:
            return []
        ids = json.dumps([int(row["id"]) for row in chosen])
        return conn.execute(self._queries["claim_ids"], {**params, "ids": ids}).fetchall()

    def _candidates(
        self,
        conn: sqlite3.Connection,
        types: list[str],
        limit: int,
        *,
        no_full_keys: bool,
        full_keys: object = "[]",
    ) -> list[Row]:
        params = {
            "types": json.dumps(types),
            "limit": limit,
            "no_full_keys": no_full_keys,
            "full_keys": full_keys,
        }
        return self._fetch(conn, "claim_candidates", params)

    def _fetch(self, conn: sqlite3.Connection, name: str, params: Params) -> list[Row]:
        return [dict(row) for row in conn.execute(self._queries[name], params).fetchall()]

    def _types_param(self, types: Sequence[str]) -> object:
        return json.dumps(list(types))

    def _full_keys_param(self, keys: Sequence[str]) -> object:
        return json.dumps(list(keys))

    def complete_many(
        self, claims: Sequence[Claim], usages: Sequence[Usage | None] | None = None
    ) -> set[int]:
        if not claims:
            return set()
        won: set[int] = set()
        paired = list(zip(claims, usages or [None] * len(claims), strict=True))
        for owner in {c.owner for c in claims}:
            mine = [(c, u) for c, u in paired if c.owner == owner]
            usage = usage_json([c for c, _ in mine], [u for _, u in mine])
            rows = self._rows("complete_many", {"owner": owner, "usage": usage})
            won.update(int(row["id"]) for row in rows)
        return won

    def renew_leases(self, owner: str, claims: Sequence[Claim], lease_s: float) -> set[int]:
        if not claims:
            return set()
        params = {"owner": owner, "fences": fences_json(claims), "lease_s": seconds(lease_s)["s"]}
        return {int(row["id"]) for row in self._rows("renew_leases", params)}

    def cancelled_claims(self, owner: str, claims: Sequence[Claim]) -> set[int]:
        if not claims:
            return set()
        params = {"owner": owner, "fences": fences_json(claims)}
        return {int(row["id"]) for row in self._rows("cancelled_claims", params)}

    def _sweep(self, name: str, limit: int) -> list[str]:
        return [row["type"] for row in self._rows(name, {"limit": limit})]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
