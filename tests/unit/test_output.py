"""The output reader's bounds: lines are cut, a turn reads a capped amount, nothing blocks."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from supervisor.output import (
    LINE_MAX_BYTES,
    READ_BYTES,
    TURN_MAX_LINES,
    OutputLine,
    OutputReader,
    record_fields,
)


@pytest.fixture
def pipe() -> Iterator[tuple[OutputReader, int]]:
    r, w = os.pipe()
    reader = OutputReader(r)
    yield reader, w
    reader.close()
    os.close(w)


def test_lines_are_split_and_a_partial_line_waits(pipe: tuple[OutputReader, int]) -> None:
    reader, w = pipe
    os.write(w, b"one\ntwo\nthr")
    assert reader.read() == [OutputLine("one", False), OutputLine("two", False)]
    assert reader.read() == []  # nothing more: returns at once, never blocks
    os.write(w, b"ee\n\xff\n")
    assert reader.read() == [OutputLine("three", False), OutputLine("\ufffd", False)]
    os.write(w, b"tail")
    reader.read()
    assert reader.flush() == [OutputLine("tail", False)]
    assert reader.flush() == []


def test_a_long_line_is_cut_and_marked(pipe: tuple[OutputReader, int]) -> None:
    reader, w = pipe
    os.write(w, b"x" * (LINE_MAX_BYTES * 3) + b"\nnext\n")
    lines = reader.read()
    assert lines == [OutputLine("x" * LINE_MAX_BYTES, True), OutputLine("next", False)]


def test_one_turn_reads_at_most_its_limit(pipe: tuple[OutputReader, int]) -> None:
    reader, w = pipe
    os.write(w, b"a\n" * 1000)
    assert len(reader.read(limit=100)) == 50
    assert len(reader.read()) == 950


def test_a_flood_of_short_lines_is_read_a_bounded_share_per_turn(
    pipe: tuple[OutputReader, int],
) -> None:
    reader, w = pipe
    os.write(w, b"\n" * 60_000)
    first = reader.read()
    assert TURN_MAX_LINES <= len(first) <= TURN_MAX_LINES + READ_BYTES
    total = len(first)
    while lines := reader.read():
        total += len(lines)
    assert total == 60_000


def test_end_of_file_flushes_the_partial_line() -> None:
    r, w = os.pipe()
    reader = OutputReader(r)
    os.write(w, b"last words")
    os.close(w)
    assert reader.read() == [OutputLine("last words", False)]
    assert reader.eof
    reader.close()
    assert reader.fd == -1


def test_an_idle_childs_output_carries_no_task() -> None:
    fields = record_fields(OutputLine("hi", True), None)
    assert fields == {
        "task_id": None,
        "type": None,
        "attempt": None,
        "stream": "output",
        "line": "hi",
        "truncated": True,
    }


def test_output_left_in_the_pipe_at_an_attempts_end_stays_that_attempts() -> None:
    first, second = object(), object()  # stand-ins for claims: only their identity matters
    r, w = os.pipe()
    reader = OutputReader(r)
    try:
        os.write(w, b"a\n" * 5000 + b"partial")
        read = len(reader.read())
        assert read < 5000  # the turn's share ran out
        assert reader.end_attempt(first) == []  # type: ignore[arg-type]
        os.write(w, b"-next\n")  # the next attempt's output, behind the first's in the pipe
        assert reader.owner(second) is first  # type: ignore[arg-type]
        while reader.tails[0].left > 0:
            assert reader.finished_tails() == []
            rest = reader.read()
            assert set(rest) == {OutputLine("a", False)}
            read += len(rest)
        assert read == 5000
        assert reader.finished_tails() == [(OutputLine("partial", False), first)]
        assert reader.owner(second) is second  # type: ignore[arg-type]
        assert reader.read() == [OutputLine("-next", False)]
        os.write(w, b"done")
        reader.read()
        assert reader.end_attempt(second) == [OutputLine("done", False)]  # type: ignore[arg-type]
    finally:
        reader.close()
        os.close(w)
