"""The parent reads only a bounded tail of a child's dump file, whatever a handler wrote there."""

from __future__ import annotations

import socket
from pathlib import Path

from supervisor.workers import DUMP_TAIL_BYTES, Child


def test_a_huge_dump_file_is_read_as_a_bounded_tail(tmp_path: Path) -> None:
    dump = tmp_path / "child.dump"
    size = 256 * 1024 * 1024  # sparse: costs no disk, but a whole read costs 256 MB
    marker = b'  File "h.py", line 3 in handle\n'
    with dump.open("wb") as f:
        f.truncate(size - len(marker))
        f.seek(0, 2)
        f.write(marker)
    a, b = socket.socketpair()
    with a, b:
        child = Child(slot=0, pid=0, sock=a, pidfd=-1, dump_path=dump)
        text = child.read_dump()
    assert len(text) <= DUMP_TAIL_BYTES
    assert text.endswith('File "h.py", line 3 in handle')


def test_a_small_dump_is_read_whole(tmp_path: Path) -> None:
    dump = tmp_path / "child.dump"
    dump.write_text('Thread 0x1:\n  File "h.py", line 3 in handle\n')
    a, b = socket.socketpair()
    with a, b:
        child = Child(slot=0, pid=0, sock=a, pidfd=-1, dump_path=dump)
        assert child.read_dump() == 'Thread 0x1:\n  File "h.py", line 3 in handle'
