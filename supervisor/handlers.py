"""Find handler files: each ``<dir>/*.py`` not starting with ``_`` serves the type of its stem.

The parent only lists file names here; it never imports handler code, so a
broken handler cannot take the parent down. Children import lazily.
"""

from __future__ import annotations

from pathlib import Path

from supervisor.lifecycle import TYPE_NAME


def discover(folder: Path) -> dict[str, Path]:
    """``{task_type: path}`` for the handler files in ``folder`` (empty if it does not exist)."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_") or not TYPE_NAME.fullmatch(path.stem):
            continue
        found[path.stem] = path.resolve()
    return found
