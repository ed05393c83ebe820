"""The embedded default: one SQLite file, safe for several supervisors on one host.

WAL lets readers proceed during a write; ``BEGIN IMMEDIATE`` takes the write
lock up front so two claimers queue on the busy timeout instead of failing on
a lock upgrade; the claim is one ``UPDATE ... RETURNING`` statement.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence

from supervisor.dsn import SqliteDsn
from supervisor.errors import StoreError, StoreUnavailable
from supervisor.lifecycle import MAX_OPTIONS_BYTES
from supervisor.policy import HandlerPolicy, claim_defaults
from supervisor.store import migrator
from supervisor.store.base import Claim, NewTask
from supervisor.store.queries import load_queries
from supervisor.store.sql import Params, Row, SqlStore, fences_json, row_to_claim, seconds

BUSY_TIMEOUT_MS = 10_000


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

    def enqueue_many(self, tasks: Sequence[NewTask]) -> list[int]:
        with self._immediate() as conn:
            ids = []
            for task in tasks:
                cursor = conn.execute(self._queries["enqueue"], self.new_task_params(task))
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
            return ids

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
        with self._immediate() as conn:
            rows = conn.execute(self._queries["claim_batch"], params).fetchall()
        rows.sort(key=lambda row: (row["priority"] or 0, row["id"]))
        return [row_to_claim(dict(row), owner, policies) for row in rows]

    def has_claimable(self, types: Iterable[str]) -> bool:
        type_list = self._types_list(types)
        return bool(type_list) and bool(self._rows("probe", {"types": json.dumps(type_list)}))

    def complete_many(self, claims: Sequence[Claim]) -> set[int]:
        if not claims:
            return set()
        won: set[int] = set()
        for owner in {c.owner for c in claims}:
            mine = [c for c in claims if c.owner == owner]
            rows = self._rows("complete_many", {"owner": owner, "fences": fences_json(mine)})
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
