"""The pipe protocol: every message round-trips, and nothing malformed gets past decode()."""

from __future__ import annotations

import pytest

from supervisor.lifecycle import MAX_OPTIONS_BYTES
from supervisor.protocol import (
    MAX_LINE_BYTES,
    DoneMessage,
    ErrorMessage,
    LineBuffer,
    Message,
    ProgressMessage,
    ProtocolError,
    ReadyMessage,
    StopMessage,
    TaskMessage,
    decode,
    encode,
)

MESSAGES: list[Message] = [
    TaskMessage(
        id=7,
        type="resize",
        path="/h/resize.py",
        options='{"a": "x\\ny"}',
        attempt=2,
        max_attempts=3,
        remaining_s=12.5,
    ),
    TaskMessage(
        id=8, type="t", path="/h/t.py", options=None, attempt=1, max_attempts=1, remaining_s=1
    ),
    StopMessage(),
    ReadyMessage(pid=123),
    ProgressMessage(id=7, pct=50),
    DoneMessage(id=7),
    ErrorMessage(id=7, message="ValueError: bad", traceback="Traceback ...", permanent=True),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_as_one_line(message: Message) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line[:-1]) == message


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"kind": "exec", "code": "import os"}',
        b'{"id": 1}',
        b'{"kind": "done"}',
        b'{"kind": "done", "id": 1, "extra": 2}',
        b'{"kind": "done", "id": "1"}',
        b'{"kind": "done", "id": true}',
        b'{"kind": "error", "id": 1, "message": "m", "traceback": "t", "permanent": 1}',
        b'{"kind": "progress", "id": 1, "pct": 5.5}',
    ],
)
def test_malformed_lines_are_protocol_errors_not_crashes(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(line)


def test_line_buffer_reassembles_messages_split_across_reads() -> None:
    data = encode(DoneMessage(id=1)) + encode(ProgressMessage(id=2, pct=3))
    buffer = LineBuffer()
    lines = [line for i in range(len(data)) for line in buffer.feed(data[i : i + 1])]
    assert [decode(line) for line in lines] == [DoneMessage(id=1), ProgressMessage(id=2, pct=3)]


def test_line_buffer_refuses_an_endless_line() -> None:
    buffer = LineBuffer(max_line=10)
    with pytest.raises(ProtocolError):
        buffer.feed(b"x" * 11)


def test_a_task_with_options_at_the_limit_fits_the_line_limit_however_escaped() -> None:
    """The one options limit (1 MiB, checked at enqueue and at claim) keeps every task message
    inside the child's line limit, even when JSON escapes each byte into six."""
    options = "\x01" * MAX_OPTIONS_BYTES
    line = encode(
        TaskMessage(
            id=1,
            type="t",
            path="/h/t.py",
            options=options,
            attempt=1,
            max_attempts=3,
            remaining_s=1.0,
        )
    )
    assert len(line) < MAX_LINE_BYTES
    [got] = LineBuffer().feed(line)
    assert got == line.rstrip(b"\n")
