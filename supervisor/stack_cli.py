"""``supervisor stack ID``: ask the supervisor running a task for its child's stack, and print it.

The request goes through the database, as a cancel does, so it reaches the
task's supervisor wherever it runs in the fleet: one statement marks the row
(``stack_requested_at``), and that supervisor, which reads its running rows
once per poll interval, signals the child, reads the stack faulthandler wrote
and writes it to the row (``stack``, ``stack_at``). This command polls the row
with plain reads until a stack taken at or after its request is there, or
``--wait`` passes. The task keeps running throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from supervisor.lifecycle import Status
from supervisor.status_view import printable
from supervisor.store import Store

POLL_S = 0.2
EXIT_OK, EXIT_FAILED = 0, 1


def ask_for_stack(
    store: Store,
    task_id: int,
    wait_s: float,
    *,
    out: TextIO,
    err: TextIO,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Request the stack, wait for it, print it; the exit status (1: none came, and why)."""
    request = store.request_stack(task_id)
    if request.before is None:
        print(f"supervisor: no task with id {task_id}", file=err)
        return EXIT_FAILED
    if request.requested_at is None:
        state = request.before.value if isinstance(request.before, Status) else request.before
        print(
            f"supervisor: task {task_id} is {printable(str(state))}; only a running task has a "
            f"stack to take (show {task_id} --stack prints the last one taken)",
            file=err,
        )
        return EXIT_FAILED
    until = clock() + wait_s
    while True:
        row = store.get(task_id)
        if row is None:
            print(f"supervisor: task {task_id} was deleted before its stack came", file=err)
            return EXIT_FAILED
        if (
            row.stack is not None
            and row.stack_at is not None
            and row.stack_at >= request.requested_at
        ):
            print(printable(row.stack, keep_lines=True), file=out)
            return EXIT_OK
        # A cancelled task's stack comes with its cancel: wait for that one too.
        if row.status not in (Status.RUNNING, Status.CANCELLED):
            print(
                f"supervisor: task {task_id} ended ({row.status.value}) before its stack was taken",
                file=err,
            )
            return EXIT_FAILED
        if clock() >= until:
            print(f"supervisor: {no_answer(store, task_id, wait_s, request.claimed_by)}", file=err)
            return EXIT_FAILED
        sleep(min(POLL_S, max(0.0, until - clock())))


def no_answer(store: Store, task_id: int, wait_s: float, owner: str | None) -> str:
    """Why no stack came, as far as the registry can tell: whose task it is, and is it alive."""
    text = f"no stack of task {task_id} within {wait_s:g} s"
    if owner is None:
        return f"{text}; no supervisor holds it"
    live = {s.id: s.alive for s in store.supervisors()}
    if live.get(owner):
        return (
            f"{text}; it is held by {printable(owner)}, a live supervisor (busy, or a version "
            "that takes no stacks on demand); the request stays until it answers"
        )
    return (
        f"{text}; it is held by {printable(owner)}, which is not a live supervisor: the task "
        "is rescued once its lease runs out"
    )
