"""The loop under handler policies: claims wait for the check, TIMEOUT kills an attempt, BACKOFF.

The import check is played by the test (``NoImportCheck``): it reports each
handler's constants at once, or holds its report until told.
"""

from __future__ import annotations

from datetime import timedelta

from supervisor.lifecycle import STACK_LEAD_S, Backoff, Failure, Status
from supervisor.policy import HandlerPolicy
from supervisor.store import SupervisorInfo
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import STACK_TEXT, Loop

TIMES_OUT = {"echo": {"TIMEOUT": 2, "MAX_ATTEMPTS": 2, "BACKOFF": [0, 5]}}


def run_into_the_limit(loop: Loop, seconds: float) -> None:
    """The child takes the task and never answers; the loop kills it ``seconds`` after dispatch."""
    loop.cycle()
    child = loop.child(0)
    assert child.task().remaining_s == seconds, "the handler is told when it will be killed"
    start = loop.clock()
    loop.advance_to(start + seconds - STACK_LEAD_S)
    loop.step()
    assert child.stack_requests == 1, "the stack is asked for first, as for a deadline"
    loop.advance_to(start + seconds)
    loop.step()
    assert child.kills == 1
    loop.turn()
    loop.step()  # the loop hears what was recorded, and replaces the child
    loop.step()
    loop.child(0).say_ready()
    loop.step()


# --- claims wait for the policy ------------------------------------------------------------


def test_no_type_is_claimed_before_the_import_check_reported_its_policy(
    make_loop: MakeLoop,
) -> None:
    """Claimed before, a task would run without the handler's limits (CONCURRENCY...)."""
    loop = make_loop(workers=1, hold_check=True, constants={"echo": {"MAX_ATTEMPTS": 5}})
    [task_id] = loop.enqueue()
    loop.cycle(3)
    assert loop.busy() == [] and loop.row(task_id).status is Status.QUEUED

    loop.sup.imports.report()  # type: ignore[attr-defined]
    loop.cycle()
    assert loop.child(0).task().max_attempts == 5
    assert loop.row(task_id).max_attempts == 5, "the claim wrote the handler's value"


def test_a_reload_stops_claims_until_the_new_check_reported(make_loop: MakeLoop) -> None:
    """A reload may change the limits: nothing is claimed under the old ones meanwhile."""
    loop = make_loop(workers=1)
    loop.sup.imports.hold = True  # type: ignore[attr-defined]
    loop.sup.handle_sighup()
    loop.step()
    loop.child(0).exit(0)  # the idle child is replaced
    loop.step()
    loop.child(0).say_ready()
    [task_id] = loop.enqueue()
    for _ in range(3):
        loop.poll()
    assert loop.row(task_id).status is Status.QUEUED

    loop.sup.imports.report()  # type: ignore[attr-defined]
    loop.poll()
    assert loop.row(task_id).status is Status.RUNNING


def test_a_handler_with_a_bad_constant_is_reported_and_its_type_never_claimed(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, types=("echo", "ok"), constants={"echo": {"MAX_ATTEMPTS": 0}})
    [bad_id] = loop.enqueue()
    [ok_id] = loop.enqueue(type="ok")
    (report,) = loop.logged("handler declares a bad policy constant; its tasks are not claimed")
    assert report["type"] == "echo"
    assert "MAX_ATTEMPTS must be a whole number from 1 to 100, got 0" in report["error"]
    for _ in range(3):
        loop.poll()
    assert loop.row(bad_id).status is Status.QUEUED
    assert loop.row(ok_id).status is Status.RUNNING
    assert loop.store.declared_policy("echo") is None, "nothing declared for it either"


def test_a_handler_that_does_not_import_is_claimed_so_its_tasks_fail_with_the_reason(
    make_loop: MakeLoop,
) -> None:
    """As before policies existed: the task fails with the import error, it does not wait."""
    loop = make_loop(workers=1, hold_check=True)
    loop.sup.import_failed("echo", "handler echo.py failed to import: boom")
    [task_id] = loop.enqueue()
    loop.cycle()
    assert loop.row(task_id).status is Status.RUNNING


def test_a_check_that_reports_nothing_leaves_every_type_unclaimed(make_loop: MakeLoop) -> None:
    """Without any policy known, a limit could be exceeded: wait for a reload instead."""
    loop = make_loop(workers=1, hold_check=True)
    loop.sup.import_failed("*", "the handler import check did not finish cleanly (exit status 1)")
    assert loop.logged("no handler policy is known; nothing is claimed until a reload (HUP)")
    [task_id] = loop.enqueue()
    loop.poll()
    assert loop.row(task_id).status is Status.QUEUED


# --- TIMEOUT -------------------------------------------------------------------------------


def test_a_timeout_kills_the_attempt_retries_it_with_the_handlers_backoff_then_fails(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, backoff=Backoff((0.0, 30.0)), constants=TIMES_OUT)
    [task_id] = loop.enqueue(budget_s=100)

    run_into_the_limit(loop, 2.0)
    row = loop.row(task_id)
    assert (row.status, row.attempts, row.failure) == (Status.QUEUED, 1, None)
    assert row.run_at == loop.db_clock() + timedelta(seconds=5), "BACKOFF, not --backoff"
    assert row.last_error is not None
    assert row.last_error.startswith("attempt_timeout: the attempt timed out after 2 s")
    assert STACK_TEXT in row.last_error
    assert loop.logged("attempt TIMEOUT reached; killing the child's tree")

    loop.advance(5)
    run_into_the_limit(loop, 2.0)
    row = loop.row(task_id)
    assert (row.status, row.failure, row.attempts) == (Status.FAILED, Failure.ATTEMPT_TIMEOUT, 2)
    assert loop.metric("tasks_processed_total", type="echo", outcome="retried") == 1
    assert loop.metric("tasks_processed_total", type="echo", outcome="attempt_timeout") == 1
    assert loop.metric("supervisor_child_restarts_total", reason="attempt_timeout") == 2


def test_an_explicit_timeout_beats_the_handlers(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, constants=TIMES_OUT)
    [task_id] = loop.enqueue(budget_s=100, timeout_s=3.5)
    run_into_the_limit(loop, 3.5)
    assert loop.row(task_id).last_error.startswith(  # type: ignore[union-attr]
        "attempt_timeout: the attempt timed out after 3.5 s"
    )


def test_when_the_task_deadline_comes_first_it_is_a_terminal_timeout(make_loop: MakeLoop) -> None:
    """TIMEOUT 2 s but only 2 s of budget left: the deadline's kill, no retry."""
    loop = make_loop(workers=1, constants=TIMES_OUT)
    [task_id] = loop.enqueue(budget_s=2)
    run_into_the_limit(loop, 2.0)
    row = loop.row(task_id)
    assert (row.status, row.failure, row.attempts) == (Status.FAILED, Failure.TIMEOUT, 1)
    assert loop.logged("deadline reached; killing the child's tree")


def test_an_answer_after_the_stack_request_is_still_the_attempt_timeout(
    make_loop: MakeLoop,
) -> None:
    """The stack signal may be what ended the handler: its ``done`` is not a completion."""
    loop = make_loop(workers=1, constants=TIMES_OUT)
    [task_id] = loop.enqueue(budget_s=100)
    loop.cycle()
    loop.advance(2.0 - STACK_LEAD_S)
    loop.step()
    loop.child(0).say_done()
    loop.step()
    loop.turn()
    row = loop.row(task_id)
    assert (row.status, row.attempts) == (Status.QUEUED, 1)
    assert row.last_error is not None and row.last_error.startswith("attempt_timeout")


def test_a_handler_error_is_retried_after_the_handlers_backoff(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, backoff=Backoff((0.0, 30.0)), constants=TIMES_OUT)
    [task_id] = loop.enqueue()
    loop.cycle()
    loop.child(0).say_error()
    loop.step()
    loop.turn()
    assert loop.row(task_id).run_at == loop.db_clock() + timedelta(seconds=5)


# --- declarations --------------------------------------------------------------------------


def test_the_policies_are_declared_once_the_check_reported_them(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, constants=TIMES_OUT)
    loop.cycle()
    assert loop.store.declared_policy("echo") == HandlerPolicy(
        max_attempts=2, backoff=(0.0, 5.0), timeout_s=2.0
    )


def test_replacing_another_live_supervisors_different_policy_is_a_warning(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, start=False, constants=TIMES_OUT)
    other = SupervisorInfo(id="other:1:abc", host="h", pid=1, workers=1, version="x")
    loop.store.register(other, ttl_s=60)
    loop.store.declare_types(other.id, {"echo": HandlerPolicy(max_attempts=9)})
    loop.start()
    loop.cycle()
    (warning,) = loop.logged(
        "replaced a different policy another live supervisor declared for this type"
    )
    assert (warning["type"], warning["declared_by"]) == ("echo", other.id)
    assert warning["before"] == {"MAX_ATTEMPTS": 9}
    assert warning["now"] == {"MAX_ATTEMPTS": 2, "BACKOFF": (0.0, 5.0), "TIMEOUT": 2.0}
