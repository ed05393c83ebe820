"""The pipe protocol between the parent and a child: one JSON document per line.

Messages, each an object with a ``kind``:

parent -> child
    ``task``      ``{id, type, path, options, attempt, max_attempts, remaining_s}``: run it.
    ``stop``      finish (the child is idle when it gets this) and exit 0.

child -> parent
    ``ready``     ``{pid}``: started, ignoring SIGINT/SIGTERM, waiting for a task.
    ``progress``  ``{id, pct}``: the handler reported progress (already clamped to 0..100).
    ``done``      ``{id}``: the handler returned.
    ``error``     ``{id, message, traceback, permanent}``: the handler raised.

JSON, never pickle: decoding a child's bytes can never make the parent run
code, and a malformed line is a :class:`ProtocolError` (the parent then treats
the child as broken). Lines end with ``\\n``; JSON escapes newlines inside
strings, so a line is always one whole message.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

# Bytes asked of the socket per read. A message longer than this arrives in several reads
# (LineBuffer joins them); a larger buffer would be allocated, and mmapped, on every read.
RECV_BYTES = 64 * 1024


class ProtocolError(ValueError):
    """A line that is not a valid message."""


@attrs.frozen(kw_only=True)
class TaskMessage:
    id: int
    type: str
    path: str
    options: str | None = attrs.field(repr=False)
    attempt: int
    max_attempts: int
    remaining_s: float
    kind: str = "task"


@attrs.frozen(kw_only=True)
class StopMessage:
    kind: str = "stop"


@attrs.frozen(kw_only=True)
class ReadyMessage:
    pid: int
    kind: str = "ready"


@attrs.frozen(kw_only=True)
class ProgressMessage:
    id: int
    pct: int
    kind: str = "progress"


@attrs.frozen(kw_only=True)
class DoneMessage:
    id: int
    kind: str = "done"


@attrs.frozen(kw_only=True)
class ErrorMessage:
    id: int
    message: str
    traceback: str
    permanent: bool
    kind: str = "error"


Message = TaskMessage | StopMessage | ReadyMessage | ProgressMessage | DoneMessage | ErrorMessage

_KINDS: dict[str, type[Message]] = {
    "task": TaskMessage,
    "stop": StopMessage,
    "ready": ReadyMessage,
    "progress": ProgressMessage,
    "done": DoneMessage,
    "error": ErrorMessage,
}

# The JSON type each field must have; bool is checked before int (bool is an int in Python).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,),
    "pid": (int,),
    "pct": (int,),
    "attempt": (int,),
    "max_attempts": (int,),
    "remaining_s": (int, float),
    "type": (str,),
    "path": (str,),
    "options": (str, type(None)),
    "message": (str,),
    "traceback": (str,),
    "permanent": (bool,),
}


def encode(message: Message) -> bytes:
    # asdict without recursion: every field is a plain JSON value, and this runs per message.
    data = attrs.asdict(message, recurse=False)
    return json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line: bytes) -> Message:
    """Parse one line; anything unexpected is a :class:`ProtocolError`, never a crash."""
    try:
        data: Any = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    cls = _KINDS.get(data.pop("kind", None))
    if cls is None:
        raise ProtocolError("unknown message kind")
    expected = {field.name for field in attrs.fields(cls)} - {"kind"}
    if set(data) != expected:
        raise ProtocolError(f"{cls.__name__} wants fields {sorted(expected)}")
    for name, value in data.items():
        wanted = _FIELD_TYPES[name]
        if isinstance(value, bool) and bool not in wanted:
            raise ProtocolError(f"field {name!r} has the wrong type")
        if not isinstance(value, wanted):
            raise ProtocolError(f"field {name!r} has the wrong type")
    return cls(**data)


# The longest line either side accepts. A task's options are at most MAX_OPTIONS_BYTES (1 MiB,
# checked at enqueue and again at claim); JSON escapes a byte into at most 6, so every task
# message the parent sends fits with room to spare (tests/unit/test_protocol.py checks it).
MAX_LINE_BYTES = 64 * 1024 * 1024


class LineBuffer:
    """Reassemble lines from reads of arbitrary size (a pipe read may split a message)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._pending = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        if b"\n" not in data:
            if len(self._pending) > self._max_line:
                raise ProtocolError("line too long")
            return []
        *lines, rest = self._pending.split(b"\n")
        self._pending = bytearray(rest)
        return [bytes(line) for line in lines]
