"""Structured logging with loguru: JSON lines for machines, readable text for terminals.

``diagnose=False`` everywhere: loguru's default prints local variables in
tracebacks, which would put task options (and whatever secrets they hold)
into the log. Task events carry ``task_id``, ``type``, ``attempt``,
``outcome`` and ``duration_s`` as fields, never the options.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

TEXT_HEAD = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<level>{message}</level>"
)


def text_format(record: Record) -> str:
    """One line per record with its fields as ``key=value``; a field that holds several lines
    (a traceback, a stack) follows on lines of its own instead of as one line of ``\\n``.

    The values are referenced (``{extra[key]}``), never pasted into the format, so braces
    or markup in a value are printed as they are.
    """
    single: list[str] = []
    multi: list[str] = []
    for key, value in record["extra"].items():
        (multi if isinstance(value, str) and "\n" in value else single).append(key)
    line = TEXT_HEAD + "".join(f" <dim>{key}={{extra[{key}]}}</dim>" for key in single)
    for key in multi:
        line += f"\n  {key}:\n{{extra[{key}]}}"
    return line + "\n{exception}"


def json_sink(stream: TextIO) -> Any:
    """A sink writing one compact JSON object per record: time, level, message and fields."""

    def write(message: Message) -> None:
        record = message.record
        document: dict[str, Any] = {
            "time": record["time"].isoformat(),
            "level": record["level"].name,
            "message": record["message"],
            **record["extra"],
        }
        if record["exception"] is not None and record["exception"].type is not None:
            document["exception"] = (
                f"{record['exception'].type.__name__}: {record['exception'].value}"
            )
        stream.write(json.dumps(document, default=str) + "\n")  # stderr is line-buffered

    return write


def configure(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Replace loguru's default handler; ``auto`` means text on a terminal, JSON otherwise."""
    out = stream or sys.stderr
    logger.remove()
    use_json = log_format == "json" or (log_format == "auto" and not out.isatty())
    if use_json:
        # The sink builds its own document: the cheapest format spares loguru formatting
        # a text line per record that nobody reads (a per-task cost).
        logger.add(
            json_sink(out),
            level=level,
            format="{message}",
            diagnose=False,
            backtrace=False,
            catch=True,
        )
    else:
        logger.add(
            out, level=level, format=text_format, diagnose=False, backtrace=False, colorize=None
        )
