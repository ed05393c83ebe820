"""Signals are only recorded by their handlers; the loop dispatches them; exit restores them."""

from __future__ import annotations

import os
import selectors
import signal
from collections.abc import Iterator

import pytest
from loguru import logger

from supervisor.signals import SignalInbox


class Target:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def handle_sigusr1(self) -> None:
        self.calls.append("usr1")


@pytest.fixture
def inbox() -> Iterator[tuple[SignalInbox, selectors.BaseSelector]]:
    selector = selectors.DefaultSelector()
    box = SignalInbox([signal.SIGUSR1, signal.SIGUSR2])
    box.install(selector)
    try:
        yield box, selector
    finally:
        box.restore()
        selector.close()


def test_a_signal_is_dispatched_to_its_handle_method_by_the_loop_not_the_handler(
    inbox: tuple[SignalInbox, selectors.BaseSelector],
) -> None:
    box, selector = inbox
    target = Target()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert target.calls == []  # the handler only recorded it
    assert selector.select(timeout=1)
    box.dispatch(target)
    assert target.calls == ["usr1"]


def test_a_signal_with_no_handle_method_is_logged_not_dropped(
    inbox: tuple[SignalInbox, selectors.BaseSelector],
) -> None:
    box, selector = inbox
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message} {extra[signal]}")
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert selector.select(timeout=1)
        box.dispatch(Target())
    finally:
        logger.remove(sink)
    assert lines == ["signal received with no handler; ignored SIGUSR2\n"]


def test_dispatch_with_nothing_received_does_nothing(
    inbox: tuple[SignalInbox, selectors.BaseSelector],
) -> None:
    box, _ = inbox
    target = Target()
    box.dispatch(target)
    assert target.calls == []


def test_restore_gives_back_the_previous_handlers_and_wakeup_fd() -> None:
    def previous(signum: int, frame: object) -> None:
        pass

    before = signal.signal(signal.SIGUSR1, previous)
    try:
        box = SignalInbox([signal.SIGUSR1])
        selector = selectors.DefaultSelector()
        box.install(selector)
        assert signal.getsignal(signal.SIGUSR1) is not previous
        box.restore()
        selector.close()
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert signal.set_wakeup_fd(-1) == -1  # none was set before, none is left
    finally:
        signal.signal(signal.SIGUSR1, before)
