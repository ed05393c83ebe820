"""progress() takes any value a handler passes and never raises (issue 10, item 9)."""

from __future__ import annotations

import pytest

from supervisor.child import progress_value


class Raises:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __float__(self) -> float:
        raise self.exc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10**400, 100),
        (-(10**400), 0),
        (float("inf"), 100),
        (float("-inf"), 0),
        (float("nan"), None),
        ("abc", None),
        ("42", 42),
        (None, None),
        ([1], None),
        (Raises(KeyError("x")), None),
        (Raises(ZeroDivisionError()), None),
        (Raises(OverflowError()), None),
        (55.9, 55),
        (True, 1),
    ],
)
def test_any_value_is_clamped_or_ignored(value: object, expected: int | None) -> None:
    assert progress_value(value) == expected
