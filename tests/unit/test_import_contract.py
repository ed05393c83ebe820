"""Who may import what: the boundaries that keep the child light and the store process-free.

Each import is checked in a fresh interpreter (``sys.modules`` after the
import), since this test process has long since imported everything. That
interpreter runs without coverage measurement, which imports modules of its own.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "supervisor"

# The child imports handler code and runs it; it must not carry (or be able to
# reach) the database, nor pay for what only the parent needs.
CHILD_MUST_NOT_LOAD = (
    "supervisor.store",
    "supervisor.dblink",
    "supervisor.dsn",
    "pymysql",
    "sqlite3",
    "psutil",  # imported lazily where it kills its own tree; not at start-up
    "loguru",
    "prometheus_client",  # only when metrics are on, after the slot's files are named
)

# The store is the producers' library too (a web app enqueues through it): it
# must not pull in the parent's machinery, process control or signal handling.
# And the link imports the store, so a store importing the parent's rooms
# would be a cycle.
STORE_MUST_NOT_LOAD = (
    "supervisor.parent",
    "supervisor.pool",
    "supervisor.attempts",
    "supervisor.workers",
    "supervisor.child",
    "supervisor.dblink",
    "supervisor.telemetry",
    "supervisor.metrics",
    "supervisor.signals",
    "supervisor.reaping",
    "supervisor.importcheck",
    "subprocess",
    "multiprocessing",
    "signal",
    "psutil",
    "loguru",
    "prometheus_client",
)

# Each backend module imports the package (and with it base and memory), sql and queries.
STORE_MODULES = ("supervisor.store", "supervisor.store.sqlite", "supervisor.store.mysql")

# The parent's side: everything here reaches the store through the database link only.
PARENT_SIDE = (
    "parent.py",
    "burst.py",
    "relay.py",
    "link_events.py",
    "service.py",
    "pool.py",
    "attempts.py",
    "workers.py",
    "telemetry.py",
    "importcheck.py",
    "forkserver.py",
    "template.py",
    "signals.py",
    "results.py",
    "health.py",
    "records.py",
    "lifecycle.py",
)


def uncovered_environment() -> dict[str, str]:
    """This environment, minus what makes coverage measure (and import into) a subprocess."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}


def modules_loaded_by(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=uncovered_environment(),
    )
    return set(json.loads(out.stdout))


def offending(loaded: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        name for name in loaded if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def test_the_child_program_loads_no_database_code_and_nothing_only_the_parent_needs() -> None:
    assert offending(modules_loaded_by("supervisor.child"), CHILD_MUST_NOT_LOAD) == []


@pytest.mark.parametrize("module", STORE_MODULES)
def test_the_store_imports_nothing_about_processes(module: str) -> None:
    loaded = modules_loaded_by(module)
    assert offending(loaded, STORE_MUST_NOT_LOAD) == []
    assert module in loaded


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("filename", PARENT_SIDE)
def test_only_the_database_link_imports_the_store_on_the_parents_side(filename: str) -> None:
    imports = imported_modules(PACKAGE / filename)
    assert sorted(m for m in imports if m == "supervisor.store" or "store." in m) == []


def test_the_database_link_does_import_the_store() -> None:
    """The check above would pass vacuously if the names were wrong."""
    assert "supervisor.store" in imported_modules(PACKAGE / "dblink.py")
