"""Schedules as pure rules: which cron is accepted, which slot is due, and each slot's key."""

from __future__ import annotations

from datetime import datetime

import pytest

from supervisor.policy import PolicyError, from_constants
from supervisor.schedules import ScheduleError, latest_slot, next_slot, slot_key, validate_cron


@pytest.mark.parametrize("cron", ["* * * * *", "*/5 * * * *", "0 3 * * 1-5", "30 2 1 * *"])
def test_standard_five_field_cron_is_accepted(cron: str) -> None:
    assert validate_cron(cron) == cron


@pytest.mark.parametrize(
    "cron",
    ["", "* * * *", "* * * * * *", "61 * * * *", "every minute", 5, None],
    ids=["empty", "four-fields", "seconds-field", "minute-61", "words", "int", "none"],
)
def test_anything_else_is_refused_with_the_reason(cron: object) -> None:
    with pytest.raises(ScheduleError, match="SCHEDULE must be"):
        validate_cron(cron)


def test_the_latest_slot_includes_a_slot_exactly_now_and_the_next_is_strictly_later() -> None:
    at_slot = datetime(2030, 1, 1, 12, 5)
    assert latest_slot("*/5 * * * *", at_slot) == at_slot
    assert latest_slot("*/5 * * * *", datetime(2030, 1, 1, 12, 9, 59)) == at_slot
    assert next_slot("*/5 * * * *", at_slot) == datetime(2030, 1, 1, 12, 10)


def test_a_slots_unique_key_is_its_iso_8601_utc_time() -> None:
    assert slot_key(datetime(2030, 1, 1, 12, 5)) == "schedule:2030-01-01T12:05:00Z"


def test_a_handlers_schedule_and_its_options_are_policy_constants() -> None:
    policy = from_constants({"SCHEDULE": "0 * * * *", "SCHEDULE_OPTIONS": {"report": "daily"}})
    assert policy.schedule == "0 * * * *"
    assert policy.schedule_options == '{"report": "daily"}'
    as_text = from_constants({"SCHEDULE": "0 * * * *", "SCHEDULE_OPTIONS": "x"})
    assert as_text.schedule_options == "x"


@pytest.mark.parametrize(
    ("constants", "complaint"),
    [
        ({"SCHEDULE": "61 * * * *"}, "SCHEDULE must be"),
        ({"SCHEDULE": ["* * * * *"]}, "SCHEDULE must be"),
        ({"SCHEDULE_OPTIONS": "x"}, "SCHEDULE is not"),
        ({"SCHEDULE": "* * * * *", "SCHEDULE_OPTIONS": 3}, "SCHEDULE_OPTIONS must be"),
        ({"SCHEDULE": "* * * * *", "SCHEDULE_OPTIONS": "x" * (1024 * 1024 + 1)}, "1 MiB"),
    ],
)
def test_a_bad_schedule_constant_is_a_policy_error(
    constants: dict[str, object], complaint: str
) -> None:
    with pytest.raises(PolicyError, match=complaint):
        from_constants(constants)
