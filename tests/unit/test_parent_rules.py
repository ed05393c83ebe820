"""The parent's arithmetic as pure rules: doubling delays, recycling, refunds, outcome texts."""

from __future__ import annotations

import pytest

from supervisor.lifecycle import (
    COMPLETED,
    REFUND,
    Outcome,
    Status,
    doubling_delay,
    exception_type,
    handler_error,
    panic_error,
    should_recycle,
    timeout_error,
)

# --- doubling delays (database reconnects, children that die at start-up) -----------------


@pytest.mark.parametrize(
    ("failures", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0)]
)
def test_the_delay_doubles_from_the_minimum_with_each_failure_up_to_the_cap(
    failures: int, delay: float
) -> None:
    assert doubling_delay(failures, minimum=0.5, maximum=30.0) == delay


def test_no_failure_means_no_delay() -> None:
    assert doubling_delay(0, minimum=0.5, maximum=30.0) == 0.0


def test_a_very_long_run_of_failures_stays_at_the_cap_without_overflowing() -> None:
    assert doubling_delay(10_000, minimum=0.5, maximum=5.0) == 5.0


# --- recycling -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("done", "limit", "recycle"),
    [(1, 1, True), (0, 1, False), (2, 3, False), (3, 3, True), (4, 3, True), (10**6, 0, False)],
)
def test_a_child_is_recycled_once_it_has_run_max_tasks_per_child_and_never_with_0(
    done: int, limit: int, recycle: bool
) -> None:
    assert should_recycle(done, limit) is recycle


# --- refunds and completions -----------------------------------------------------------------


def test_a_refund_puts_the_task_back_to_queued_at_once() -> None:
    assert (REFUND.status, REFUND.retry_in_s, REFUND.failure) == (Status.QUEUED, 0.0, None)


def test_a_completion_is_terminal_and_not_a_failure() -> None:
    assert (COMPLETED.status, COMPLETED.outcome, COMPLETED.failure) == (
        Status.COMPLETED,
        Outcome.COMPLETED,
        None,
    )


# --- outcome texts (last_error) ---------------------------------------------------------------


def test_only_the_exception_type_of_a_handler_error_is_safe_to_log() -> None:
    assert exception_type("ValueError: secret option value") == "ValueError"
    assert exception_type("KeyError") == "KeyError"
    assert exception_type(": no type") == "exception"


def test_a_handler_error_keeps_message_then_traceback() -> None:
    assert handler_error("ValueError: x", "Traceback ...") == "ValueError: x\n\nTraceback ..."
    assert handler_error("ValueError: x", "") == "ValueError: x"


def test_a_timeout_says_the_budget_and_where_the_handler_was() -> None:
    text = timeout_error(1.5, 'File "h.py", line 3 in handle')
    first, _, rest = text.partition("\n\n")
    assert first.startswith("timeout: the wall-clock budget ran out after 1.500 s")
    assert rest == 'Stack at the deadline:\nFile "h.py", line 3 in handle'
    assert "\n" not in timeout_error(1.5, "")


def test_a_panic_says_how_the_child_ended_then_its_crash_stack() -> None:
    text = panic_error("child process was killed by SIGSEGV", "Fatal Python error")
    assert text == "panic: child process was killed by SIGSEGV\n\nFatal Python error"
    assert panic_error("child process exited with code 3", "") == (
        "panic: child process exited with code 3"
    )
