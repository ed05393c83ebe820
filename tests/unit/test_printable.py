"""What operator commands print from rows: control characters escaped, text otherwise intact."""

from __future__ import annotations

import pytest

from supervisor.status_view import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("resize", "resize"),
        ("café ☕", "café ☕"),
        ("red\x1b[31m", "red\\x1b[31m"),
        ("bell\x07", "bell\\x07"),
        ("over\rwrite", "over\\rwrite"),
        ("two\nlines\ttab", "two\\nlines\\ttab"),
        ("c1\x9b31m", "c1\\x9b31m"),  # the one-byte CSI some terminals act on
        ("del\x7f", "del\\x7f"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
    ],
)
def test_control_characters_are_shown_as_escapes(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_multi_line_values_keep_newlines_and_tabs_but_nothing_else() -> None:
    """A traceback stays readable; an escape inside it is still shown, not acted on."""
    traceback = 'Traceback:\n\tFile "x"\r\nValueError: \x1b[2J'
    assert printable(traceback, keep_lines=True) == (
        'Traceback:\n\tFile "x"\\r\nValueError: \\x1b[2J'
    )
