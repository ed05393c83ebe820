"""Versioned schema migrations: numbered SQL files per dialect, applied in order, once.

The files live in ``supervisor/store/migrations/<dialect>/NNNN_name.sql``. The
table ``schema_migrations`` records each version applied and when. Rules:

* Migrations are additive (new columns, tables, indexes, enum values; a
  constraint relaxed), so a supervisor one version older keeps working beside
  a newer schema during a rolling deploy.
* A database that a release before versioning made (it has ``tasks`` but no
  ``schema_migrations``) is adopted as version 1 as it stands: version 1 is
  exactly that schema, so nothing of it is run again.
* A schema newer than this code knows is refused with one line
  (:class:`SchemaTooNew`): this code cannot know what the newer columns mean.
* Several supervisors starting at once are safe: each backend applies under
  a lock (``GET_LOCK`` on MySQL, an immediate transaction on SQLite) and
  re-reads the versions once it holds it.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import attrs

from supervisor.errors import StoreMisconfigured
from supervisor.store.queries import parse_statements

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


class SchemaTooNew(StoreMisconfigured):
    """The database was migrated by a newer release than this one."""


@attrs.frozen(kw_only=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...] = attrs.field(repr=False)


@cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """Every migration for ``dialect`` ("mysql" or "sqlite"), in version order.

    Versions must run 1, 2, 3, ... without gaps: a gap is a packaging error,
    found here rather than half-way through a migration.
    """
    folder = resources.files("supervisor.store").joinpath("migrations", dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                statements=tuple(parse_statements(entry.read_text("utf-8"))),
            )
        )
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise AssertionError(f"{dialect} migrations are not numbered 1..n: {found}")
    return tuple(found)


def latest(dialect: str) -> int:
    return migrations(dialect)[-1].version


def pending(dialect: str, applied: set[int], *, has_tasks_table: bool) -> list[Migration]:
    """What to apply, given the versions recorded and whether a ``tasks`` table exists.

    With nothing recorded and a ``tasks`` table present, the database predates
    versioning: it is version 1 already, so the caller records 1 (adopts it)
    and applies the rest. Raises :class:`SchemaTooNew` for unknown versions.
    """
    known = migrations(dialect)
    if applied and max(applied) > known[-1].version:
        raise SchemaTooNew(
            f"the database schema is version {max(applied)}, newer than this supervisor "
            f"knows (version {known[-1].version}): upgrade the supervisor before running it here"
        )
    if not applied and has_tasks_table:
        applied = {1}
    return [m for m in known if m.version not in applied]


def to_adopt(applied: set[int], *, has_tasks_table: bool) -> bool:
    """Whether a database made before versioning must first be recorded as version 1."""
    return not applied and has_tasks_table
