"""The parent never waits on a child's socket: what it cannot take now goes out later."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.pool import Pool
from supervisor.protocol import LineBuffer, StopMessage, TaskMessage, decode
from supervisor.workers import Child

BIG = "x" * (4 * 1024 * 1024)  # far beyond a socket buffer


def task(options: str) -> TaskMessage:
    return TaskMessage(
        id=1, type="t", path="/h/t.py", options=options, attempt=1, max_attempts=3, remaining_s=9.0
    )


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[Child, socket.socket]]:
    parent_end, child_end = socket.socketpair()
    parent_end.setblocking(False)
    pipe_r, pipe_w = os.pipe()
    handle = Child(
        slot=0, pid=os.getpid(), pidfd=pipe_r, sock=parent_end, dump_path=tmp_path / "dump"
    )
    yield handle, child_end
    child_end.close()
    parent_end.close()
    os.close(pipe_r)
    os.close(pipe_w)


def read_all(sock: socket.socket, handle: Child, count: int) -> list[object]:
    """Play a child that reads ``count`` messages while the parent flushes when it can."""
    buffer, lines = LineBuffer(), []
    sock.setblocking(False)
    deadline = time.monotonic() + 10
    while len(lines) < count and time.monotonic() < deadline:
        handle.flush()
        with contextlib.suppress(BlockingIOError):
            lines += buffer.feed(sock.recv(1 << 16))
    return [decode(line) for line in lines]


def test_a_task_larger_than_the_socket_buffer_does_not_block_the_sender(
    child: tuple[Child, socket.socket],
) -> None:
    handle, _ = child
    started = time.monotonic()
    assert handle.send(task(BIG))
    assert time.monotonic() - started < 1.0
    assert handle.unsent  # the rest waits for the child to read


def test_what_was_held_back_arrives_whole_and_in_order(
    child: tuple[Child, socket.socket],
) -> None:
    handle, child_end = child
    handle.send(task(BIG))
    handle.send(StopMessage())  # queued behind the task, never interleaved with it
    messages = read_all(child_end, handle, 2)
    assert messages == [task(BIG), StopMessage()]
    assert not handle.unsent


def test_a_child_that_closed_its_end_is_reported_gone(
    child: tuple[Child, socket.socket],
) -> None:
    handle, child_end = child
    child_end.close()
    assert handle.send(StopMessage()) is False


def test_the_pool_watches_a_socket_for_writes_only_while_bytes_wait(
    child: tuple[Child, socket.socket],
) -> None:
    handle, child_end = child
    selector = selectors.DefaultSelector()
    pool = Pool(
        spawner=lambda slot: handle,
        selector=selector,
        workers=1,
        max_tasks_per_child=0,
        on_restart=lambda reason: None,
        on_slot_dead=lambda slot: None,
    )
    pool.start()
    pool.watch_writes()
    assert selector.get_key(handle.sock).events == selectors.EVENT_READ
    handle.send(task(BIG))
    pool.watch_writes()
    assert selector.get_key(handle.sock).events == selectors.EVENT_READ | selectors.EVENT_WRITE
    read_all(child_end, handle, 1)
    pool.watch_writes()
    assert selector.get_key(handle.sock).events == selectors.EVENT_READ
    selector.close()
