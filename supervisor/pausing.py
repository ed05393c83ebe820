"""Pause and resume: an operator's switch per task type, read by every supervisor in the fleet.

A pause is a row in ``task_types``; each claiming supervisor reads the paused
set at most once per poll interval and leaves those types out of its claims,
so a pause takes effect fleet-wide within one poll interval. Running tasks
finish. Pausing a type that no supervisor handles is allowed (its producer
may come first); ``status`` then says that no handler exists for it.
"""

from __future__ import annotations

import sys
from collections.abc import Container
from typing import Any, TextIO

from supervisor.lifecycle import validate_type
from supervisor.store import Store, TypeInfo


def pause_or_resume(store: Store, command: str, task_type: str, out: TextIO = sys.stdout) -> int:
    """``pause TYPE`` / ``resume TYPE``: one line saying what changed (exit 0 either way)."""
    validate_type(task_type)
    pausing = command == "pause"
    changed = store.set_paused(task_type, pausing)
    if not changed:
        state = 'paused' if pausing else 'running (not paused)'
        print(f"{task_type} was already {state}", file=out)
        return 0
    if pausing:
        known = any(i.type == task_type and i.policy is not None for i in store.type_infos())
        note = "" if known else " (no supervisor has declared a handler for it yet)"
        print(
            f"paused {task_type}: no supervisor claims it from its next poll; running tasks "
            f"finish{note}",
            file=out,
        )
    else:
        print(f"resumed {task_type}: claimed again from each supervisor's next poll", file=out)
    return 0


def paused_entries(infos: list[TypeInfo], handled_here: Container[str]) -> list[dict[str, Any]]:
    """The paused types for ``status``; ``handler`` is False when none exists anywhere we know.

    A handler exists if some supervisor declared the type's policy (it has the
    file) or the handlers folder ``status`` was pointed at holds it.
    """
    return [
        {
            "type": info.type,
            "paused_at": info.paused_at.isoformat(sep=" ") if info.paused_at else None,
            "handler": info.policy is not None or info.type in handled_here,
        }
        for info in infos
        if info.paused
    ]
