"""Handler policy rules: the constants, effective values, and which limit kills an attempt."""

from __future__ import annotations

import math

import pytest

from supervisor.lifecycle import (
    Backoff,
    Failure,
    Outcome,
    Status,
    attempt_limit,
    attempt_timeout_error,
    decide_attempt_timeout,
)
from supervisor.policy import (
    DEFAULT_POLICY,
    Effective,
    HandlerPolicy,
    PolicyError,
    backoff_from_text,
    backoff_text,
    claim_defaults,
    effective_values,
    from_constants,
)

# --- the constants -------------------------------------------------------------------------


def test_every_constant_is_read_into_the_policy() -> None:
    policy = from_constants(
        {
            "MAX_ATTEMPTS": 5,
            "BACKOFF": [0, 10, 60],
            "TIMEOUT": 120,
            "CONCURRENCY": 4,
            "CONCURRENCY_PER_KEY": 1,
        }
    )
    assert policy == HandlerPolicy(
        max_attempts=5,
        backoff=(0.0, 10.0, 60.0),
        timeout_s=120.0,
        concurrency=4,
        concurrency_per_key=1,
    )
    assert policy.limited


def test_a_handler_that_sets_nothing_has_the_default_policy() -> None:
    assert from_constants({}) == DEFAULT_POLICY
    assert not DEFAULT_POLICY.limited


def test_a_single_number_is_a_backoff_of_one_delay() -> None:
    assert from_constants({"BACKOFF": 5}).backoff == (5.0,)


@pytest.mark.parametrize(
    ("constants", "says"),
    [
        ({"MAX_ATTEMPTS": 0}, "MAX_ATTEMPTS must be a whole number from 1 to 100"),
        ({"MAX_ATTEMPTS": 2.5}, "MAX_ATTEMPTS must be a whole number"),
        ({"MAX_ATTEMPTS": True}, "MAX_ATTEMPTS must be a whole number"),
        ({"CONCURRENCY": -1}, "CONCURRENCY must be a whole number"),
        ({"CONCURRENCY_PER_KEY": "2"}, "CONCURRENCY_PER_KEY must be a whole number"),
        ({"TIMEOUT": 0}, "TIMEOUT must be a number of seconds above 0"),
        ({"TIMEOUT": math.nan}, "TIMEOUT must be a number of seconds above 0"),
        ({"TIMEOUT": "<object object>"}, "got '<object object>'"),
        ({"BACKOFF": []}, "BACKOFF must be a tuple of seconds"),
        ({"BACKOFF": [0, -1]}, "BACKOFF must hold numbers of seconds from 0"),
        ({"BACKOFF": [1] * 200}, "BACKOFF is too long"),
        ({"RETRIES": 3}, "unknown policy constant RETRIES"),
    ],
)
def test_a_bad_constant_is_refused_with_a_message_naming_it(
    constants: dict[str, object], says: str
) -> None:
    with pytest.raises(PolicyError, match=says):
        from_constants(constants)


def test_the_declared_backoff_reads_back_exactly() -> None:
    delays = (0.0, 1.5, 30.0, 86400.0, 0.125)
    assert backoff_text(delays) == "0,1.5,30,86400,0.125"
    assert backoff_from_text(backoff_text(delays)) == delays
    assert backoff_text(None) is None and backoff_from_text(None) is None


# --- effective values ----------------------------------------------------------------------


def test_a_claim_writes_the_handlers_values_else_three_attempts_and_no_limit() -> None:
    policies = {"t": HandlerPolicy(max_attempts=5, timeout_s=2.0)}
    assert claim_defaults(policies, "t") == (5, 2.0)
    assert claim_defaults(policies, "other") == (3, None)
    assert claim_defaults(None, "t") == (3, None)


def test_show_of_a_queued_row_names_the_source_of_each_value() -> None:
    declared = HandlerPolicy(max_attempts=5, timeout_s=2.0)
    assert effective_values(
        max_attempts=None, timeout_s=None, claimed=False, declared=declared
    ) == {
        "max_attempts": Effective(value=5, source="handler"),
        "timeout_s": Effective(value=2.0, source="handler"),
    }
    assert effective_values(max_attempts=2, timeout_s=None, claimed=False, declared=None) == {
        "max_attempts": Effective(value=2, source="explicit"),
        "timeout_s": Effective(value=None, source="default"),
    }


def test_show_of_a_claimed_row_reports_what_the_claim_wrote() -> None:
    found = effective_values(max_attempts=500, timeout_s=9.0, claimed=True, declared=None)
    assert found == {
        "max_attempts": Effective(value=100, source="claim"),  # clamped, as claims obey it
        "timeout_s": Effective(value=9.0, source="claim"),
    }


# --- which limit kills the attempt ---------------------------------------------------------


def test_a_timeout_shorter_than_the_remaining_budget_is_the_attempts_limit() -> None:
    limit = attempt_limit(started=100.0, task_deadline=200.0, timeout_s=30.0)
    assert (limit.at, limit.failure) == (130.0, Failure.ATTEMPT_TIMEOUT)


def test_the_task_deadline_wins_when_it_comes_first_or_at_the_same_moment() -> None:
    for timeout_s in (100.0, 100.000001, 1e9):
        limit = attempt_limit(started=100.0, task_deadline=200.0, timeout_s=timeout_s)
        assert (limit.at, limit.failure) == (200.0, Failure.TIMEOUT)


def test_the_per_attempt_limit_wins_by_the_smallest_margin() -> None:
    limit = attempt_limit(started=100.0, task_deadline=200.0, timeout_s=99.999999)
    assert limit.failure is Failure.ATTEMPT_TIMEOUT


def test_without_a_timeout_only_the_task_deadline_applies() -> None:
    limit = attempt_limit(started=100.0, task_deadline=200.0, timeout_s=None)
    assert (limit.at, limit.failure) == (200.0, Failure.TIMEOUT)


def test_an_attempt_timeout_is_retried_with_backoff_while_attempts_remain() -> None:
    decision = decide_attempt_timeout(attempt=1, max_attempts=2, backoff=Backoff((0.0, 7.0)))
    assert (decision.outcome, decision.status, decision.retry_in_s) == (
        Outcome.RETRIED,
        Status.QUEUED,
        7.0,
    )


def test_an_attempt_timeout_on_the_last_attempt_is_terminal() -> None:
    decision = decide_attempt_timeout(attempt=2, max_attempts=2, backoff=Backoff())
    assert (decision.outcome, decision.status, decision.failure) == (
        Outcome.ATTEMPT_TIMEOUT,
        Status.FAILED,
        Failure.ATTEMPT_TIMEOUT,
    )


def test_the_attempt_timeout_error_says_after_how_long_and_where() -> None:
    text = attempt_timeout_error(2.5, "File handler.py, line 3")
    assert text.startswith("attempt_timeout: the attempt timed out after 2.5 s")
    assert text.endswith("Stack at the timeout:\nFile handler.py, line 3")
    assert "Stack" not in attempt_timeout_error(2.5, "")
