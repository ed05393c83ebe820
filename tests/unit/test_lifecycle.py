"""The lifecycle rules as pure functions: backoff, what an outcome does, input validation."""

from __future__ import annotations

import pytest

from supervisor.errors import UsageError
from supervisor.lifecycle import (
    LAST_ERROR_LIMIT,
    MAX_OPTIONS_BYTES,
    Backoff,
    Decision,
    Failure,
    Outcome,
    Status,
    decide_error,
    decision_for_failure,
    trim_error,
    validate_budget,
    validate_delay,
    validate_max_attempts,
    validate_options,
    validate_type,
)

# --- statuses and vocabulary ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (Status.QUEUED, False),
        (Status.RUNNING, False),
        (Status.COMPLETED, True),
        (Status.FAILED, True),
        (Status.CANCELLED, True),
    ],
)
def test_only_completed_failed_and_cancelled_are_terminal(status: Status, terminal: bool) -> None:
    assert status.is_terminal is terminal


def test_outcomes_are_completed_retried_and_every_failure_kind() -> None:
    """One vocabulary for rows, metrics and logs."""
    assert {o.value for o in Outcome} == {"completed", "retried", "cancelled"} | {
        f.value for f in Failure
    }


def test_failure_kinds_are_the_column_values() -> None:
    assert [f.value for f in Failure] == [
        "error",
        "panic",
        "timeout",
        "expired",
        "lost",
        "attempt_timeout",
        "memory",
    ]


# --- backoff -------------------------------------------------------------------------------


def test_default_backoff_is_0_30_300() -> None:
    assert Backoff().delays == (0.0, 30.0, 300.0)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 0.0), (2, 30.0), (3, 300.0)])
def test_backoff_before_attempt_n_is_the_nth_delay(attempt: int, delay: float) -> None:
    """DESIGN: the delay before attempt n is [0s, 30s, 5m][n-1]."""
    assert Backoff().delay_before(attempt) == delay


@pytest.mark.parametrize("attempt", [4, 5, 99])
def test_backoff_repeats_the_last_delay(attempt: int) -> None:
    assert Backoff().delay_before(attempt) == 300.0


def test_backoff_with_one_delay_uses_it_for_every_attempt() -> None:
    backoff = Backoff((7.0,))
    assert [backoff.delay_before(n) for n in (1, 2, 10)] == [7.0, 7.0, 7.0]


def test_backoff_before_any_attempt_is_the_first_delay() -> None:
    """An attempt number below 1 (never valid) is treated as the first, not wrapped around."""
    assert Backoff((1.0, 2.0)).delay_before(0) == 1.0


@pytest.mark.parametrize(
    ("text", "delays"),
    [
        ("0,30,300", (0.0, 30.0, 300.0)),
        ("5", (5.0,)),
        (" 1.5 , 2 ", (1.5, 2.0)),
        ("0,0", (0.0, 0.0)),
    ],
)
def test_backoff_parse_reads_comma_separated_seconds(text: str, delays: tuple[float, ...]) -> None:
    assert Backoff.parse(text) == Backoff(delays)


def test_backoff_parse_of_the_default_text_is_the_default() -> None:
    assert Backoff.parse("0,30,300") == Backoff()


@pytest.mark.parametrize(
    "text", ["", " ", "a", "1,,2", "1;2", "1,", "-1", "0,-5", "nan", "inf", "1,inf", "1e999"]
)
def test_backoff_parse_rejects_anything_but_finite_non_negative_seconds(text: str) -> None:
    with pytest.raises(UsageError):
        Backoff.parse(text)


@pytest.mark.parametrize("delays", [(), (-1.0,), (1.0, float("nan")), (float("inf"),)])
def test_backoff_rejects_bad_delays_however_built(delays: tuple[float, ...]) -> None:
    with pytest.raises(UsageError):
        Backoff(delays)


# --- what a finished attempt does ----------------------------------------------------------


def test_error_with_attempts_left_is_retried_after_the_backoff_of_the_next_attempt() -> None:
    backoff = Backoff((1.0, 20.0, 50.0))
    assert decide_error(attempt=2, max_attempts=3, permanent=False, backoff=backoff) == Decision(
        outcome=Outcome.RETRIED, status=Status.QUEUED, failure=None, retry_in_s=50.0
    )


def test_error_on_the_first_attempt_waits_30_seconds_by_default() -> None:
    decision = decide_error(attempt=1, max_attempts=3, permanent=False, backoff=Backoff())
    assert decision.status is Status.QUEUED
    assert decision.retry_in_s == 30.0


@pytest.mark.parametrize(("attempt", "max_attempts"), [(3, 3), (1, 1), (5, 3)])
def test_error_on_the_last_attempt_fails_the_task(attempt: int, max_attempts: int) -> None:
    decision = decide_error(
        attempt=attempt, max_attempts=max_attempts, permanent=False, backoff=Backoff()
    )
    assert decision == Decision(outcome=Outcome.ERROR, status=Status.FAILED, failure=Failure.ERROR)


def test_permanent_error_fails_the_task_even_with_attempts_left() -> None:
    decision = decide_error(attempt=1, max_attempts=10, permanent=True, backoff=Backoff())
    assert decision == Decision(outcome=Outcome.ERROR, status=Status.FAILED, failure=Failure.ERROR)
    assert decision.retry_in_s is None


@pytest.mark.parametrize("failure", list(Failure))
def test_every_failure_kind_is_terminal_with_its_own_outcome(failure: Failure) -> None:
    decision = decision_for_failure(failure)
    assert decision == Decision(
        outcome=Outcome(failure.value), status=Status.FAILED, failure=failure, retry_in_s=None
    )


# --- trim_error ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, LAST_ERROR_LIMIT - 1, LAST_ERROR_LIMIT])
def test_errors_up_to_the_limit_are_kept_whole(length: int) -> None:
    text = "x" * length
    assert trim_error(text) == text


def test_a_long_error_keeps_its_head_and_tail_within_the_limit() -> None:
    head = "Traceback (most recent call last):\n"
    tail = "\nValueError: where it ended"
    text = head + "m" * 100_000 + tail
    trimmed = trim_error(text)
    assert len(trimmed) <= LAST_ERROR_LIMIT
    assert trimmed.startswith(head)
    assert trimmed.endswith(tail)
    assert "characters trimmed" in trimmed


def test_trimmed_error_says_how_much_was_dropped() -> None:
    text = "X" * 60 + "Y" * 1000 + "Z" * 60
    trimmed = trim_error(text, limit=100)
    kept = trimmed.count("X") + trimmed.count("Y") + trimmed.count("Z")
    assert f"[{len(text) - kept} characters trimmed]" in trimmed
    assert trimmed.startswith("X" * 30) and trimmed.endswith("Z" * 30)
    assert len(trimmed) <= 100


def test_the_limit_fits_a_mysql_text_column_in_any_utf8() -> None:
    """At 4 bytes per character the longest kept error still fits TEXT's 65,535 bytes."""
    assert len(trim_error("😀" * (LAST_ERROR_LIMIT * 3)).encode()) <= 65_535
    assert len(("😀" * LAST_ERROR_LIMIT).encode()) <= 65_535


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resize", "a", "send_mail", "img.thumb-v2", "A1", "x" * 64])
def test_task_types_of_letters_digits_dot_dash_underscore_are_valid(name: str) -> None:
    assert validate_type(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "two words", "a/b", "../up", "é", "tab\t", "line\n", "semi;colon"]
)
def test_other_task_types_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        validate_type(name)


@pytest.mark.parametrize("options", [None, "", '{"a": 1}', "x" * MAX_OPTIONS_BYTES])
def test_options_up_to_one_mebibyte_are_kept_verbatim(options: str | None) -> None:
    assert validate_options(options) == options


def test_options_are_measured_in_utf8_bytes() -> None:
    two_byte = "é" * (MAX_OPTIONS_BYTES // 2)
    assert validate_options(two_byte) == two_byte
    with pytest.raises(UsageError):
        validate_options(two_byte + "x")


def test_oversized_options_are_refused_without_echoing_them() -> None:
    secret = "s3cr3t-token-" + "x" * MAX_OPTIONS_BYTES
    with pytest.raises(UsageError) as raised:
        validate_options(secret)
    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize("value", [1, 3, 100])
def test_max_attempts_between_1_and_100_are_valid(value: int) -> None:
    assert validate_max_attempts(value) == value


@pytest.mark.parametrize("value", [0, -1, 101])
def test_other_max_attempts_are_refused(value: int) -> None:
    with pytest.raises(UsageError):
        validate_max_attempts(value)


@pytest.mark.parametrize("value", [0.001, 1.0, 3600.0, 1e7])
def test_positive_budgets_are_valid(value: float) -> None:
    assert validate_budget(value) == value


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), float("-inf")])
def test_zero_negative_and_non_finite_budgets_are_refused(value: float) -> None:
    with pytest.raises(UsageError):
        validate_budget(value)


@pytest.mark.parametrize("value", [0.0, 0.5, 86400.0])
def test_zero_and_positive_delays_are_valid(value: float) -> None:
    assert validate_delay(value) == value


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), float("-inf")])
def test_negative_and_non_finite_delays_are_refused(value: float) -> None:
    with pytest.raises(UsageError):
        validate_delay(value)
