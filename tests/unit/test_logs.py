"""Log lines: JSON for machines; text whose tracebacks read as tracebacks."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from loguru import logger

from supervisor import logs

TRACEBACK = 'ValueError: {not a field} <red>\n  File "h.py", line 2, in handle'


@pytest.fixture
def restore_logger() -> Iterator[None]:
    yield
    logger.remove()


def test_text_logs_put_a_multi_line_field_on_lines_of_its_own(restore_logger: None) -> None:
    out = io.StringIO()
    logs.configure("text", "INFO", out)
    logger.error("task failed", task_id=3, outcome="error", error=TRACEBACK)
    first, *rest = out.getvalue().splitlines()
    assert first.endswith("task failed task_id=3 outcome=error")
    assert rest == [
        "  error:",
        "ValueError: {not a field} <red>",
        '  File "h.py", line 2, in handle',
    ]


def test_json_logs_keep_one_record_per_line_with_the_fields(restore_logger: None) -> None:
    out = io.StringIO()
    logs.configure("json", "INFO", out)
    logger.error("task failed", task_id=3, error=TRACEBACK)
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert (record["message"], record["task_id"], record["error"]) == ("task failed", 3, TRACEBACK)
