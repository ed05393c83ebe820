"""The pipe protocol between the parent and a child: one JSON document per line.

Messages, each an object with a ``kind``:

parent -> child
    ``task``      ``{id, type, path, options, attempt, max_attempts, remaining_s}``: run it.
    ``stop``      finish (the child is idle when it gets this) and exit 0.

child -> parent
    ``ready``     ``{pid, cpu_total_s}``: started, ignoring SIGINT/SIGTERM, waiting for a task.
    ``progress``  ``{id, pct}``: the handler reported progress (already clamped to 0..100).
    ``done``      ``{id, cpu_s, peak_rss_bytes, cpu_total_s}``: the handler returned.
    ``error``     ``{id, message, traceback, permanent, cpu_s, peak_rss_bytes, cpu_total_s}``:
                  the handler raised.

``cpu_s`` and ``peak_rss_bytes`` are what the attempt used (:mod:`supervisor.usage`;
null where the child could not measure), ``cpu_total_s`` the child's CPU so
far: the parent's baseline for measuring the next attempt if it has to kill it.
A figure that is not a finite, non-negative number (or, for bytes, an integer
the columns can hold) makes the message malformed.

JSON, never pickle: decoding a child's bytes can never make the parent run
code, and a malformed line is a :class:`ProtocolError` (the parent then treats
the child as broken). Lines end with ``\\n``; JSON escapes newlines inside
strings, so a line is always one whole message.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from supervisor.usage import MAX_RSS_BYTES

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
    cpu_total_s: float | None = None
    kind: str = "ready"


@attrs.frozen(kw_only=True)
class ProgressMessage:
    id: int
    pct: int
    kind: str = "progress"


@attrs.frozen(kw_only=True)
class DoneMessage:
    id: int
    cpu_s: float | None = None
    peak_rss_bytes: int | None = None
    cpu_total_s: float | None = None
    kind: str = "done"


@attrs.frozen(kw_only=True)
class ErrorMessage:
    id: int
    message: str
    traceback: str
    permanent: bool
    cpu_s: float | None = None
    peak_rss_bytes: int | None = None
    cpu_total_s: float | None = None
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

# The JSON types each field may have, exactly: json.loads makes nothing but plain dict, list,
# str, int, float, bool and None, so an exact check needs no care for bool being an int.
_FIELD_TYPES: dict[str, frozenset[type]] = {
    "id": frozenset({int}),
    "pid": frozenset({int}),
    "pct": frozenset({int}),
    "attempt": frozenset({int}),
    "max_attempts": frozenset({int}),
    "remaining_s": frozenset({int, float}),
    "type": frozenset({str}),
    "path": frozenset({str}),
    "options": frozenset({str, type(None)}),
    "message": frozenset({str}),
    "traceback": frozenset({str}),
    "permanent": frozenset({bool}),
    "cpu_s": frozenset({int, float, type(None)}),
    "peak_rss_bytes": frozenset({int, type(None)}),
    "cpu_total_s": frozenset({int, float, type(None)}),
}
# Figures (supervisor.usage), null or 0 <= value < limit: the chained comparison also refuses
# NaN, and the bytes' limit is what the columns hold. CPU seconds are bounded too (a billion
# seconds is 31 years of a core): JSON admits an int of 400 digits, which compares with a
# float exactly but cannot become one (OverflowError in the histogram, the arithmetic, SQLite).
MAX_CPU_S = 1e9
_FIGURE_LIMITS: dict[str, float] = {
    "cpu_s": MAX_CPU_S,
    "peak_rss_bytes": MAX_RSS_BYTES + 1,
    "cpu_total_s": MAX_CPU_S,
}


def _schema(
    cls: type[Message],
) -> tuple[type[Message], frozenset[str], tuple[tuple[str, float], ...]]:
    names = frozenset(field.name for field in attrs.fields(cls)) - {"kind"}
    figures = tuple((name, limit) for name, limit in _FIGURE_LIMITS.items() if name in names)
    return cls, names, figures


# What decode() checks of each kind, worked out once: it runs for every message a child sends.
_SCHEMAS = {kind: _schema(cls) for kind, cls in _KINDS.items()}


# encode() runs for every message either side sends: the field names are looked up once, and
# one encoder serves every call (json.dumps with separators builds a new encoder each time).
_FIELD_NAMES = {cls: tuple(field.name for field in attrs.fields(cls)) for cls in _KINDS.values()}
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(message: Message) -> bytes:
    data = {name: getattr(message, name) for name in _FIELD_NAMES[type(message)]}
    return _ENCODER.encode(data).encode("utf-8") + b"\n"


def decode(line: bytes) -> Message:
    """Parse one line; anything unexpected is a :class:`ProtocolError`, never a crash."""
    try:
        data: Any = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = data.pop("kind", None)
    schema = _SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ProtocolError("unknown message kind")
    cls, expected, figures = schema
    if data.keys() != expected:
        raise ProtocolError(f"{cls.__name__} wants fields {sorted(expected)}")
    for name, value in data.items():
        if type(value) not in _FIELD_TYPES[name]:
            raise ProtocolError(f"field {name!r} has the wrong type")
    for name, limit in figures:
        value = data[name]
        if value is not None and not 0 <= value < limit:
            raise ProtocolError(f"field {name!r} is not a valid figure")
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
