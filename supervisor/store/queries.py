"""Load a backend's SQL file of named blocks (``-- name: claim_batch``) once.

Keeping every statement of a backend in one ``.sql`` file lets a reviewer read
the whole database contract in one place and keeps SQL text out of Python.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@cache
def load_queries(filename: str) -> dict[str, str]:
    """Return ``{name: statement}`` from ``supervisor/store/<filename>``."""
    text = resources.files("supervisor.store").joinpath(filename).read_text("utf-8")
    return parse_queries(text)


def parse_queries(text: str) -> dict[str, str]:
    """Split ``text`` at its ``-- name:`` markers; anything before the first one is a header."""
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        name = match.group(1)
        if name in queries:
            raise ValueError(f"SQL query {name!r} is defined twice")
        queries[name] = body.rstrip(";").strip()
    return queries


def parse_statements(script: str) -> list[str]:
    """Split a DDL script on the semicolons that end its statements (none occur inside them)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
