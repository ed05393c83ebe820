"""Signals, the gunicorn way: handlers only record; the loop acts.

A Python signal handler runs between bytecodes of whatever the loop was
doing, so it must not touch metrics, logs or the database. Here the handler
does nothing at all: ``signal.set_wakeup_fd`` writes the signal number to a
pipe the loop's selector watches, and the loop calls ``handle_<name>`` on its
target (``handle_sigterm`` for SIGTERM). A signal with no such method is
logged, not dropped silently. At exit the previous handlers and wakeup fd are
restored, so an embedding program (or a test) gets its process back as it was.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from collections.abc import Iterable
from types import FrameType
from typing import Any

from loguru import logger

HANDLED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
)

_Handler = Any  # what signal.getsignal returns: a callable, an int constant or None


class SignalInbox:
    def __init__(self, signals: Iterable[signal.Signals] = HANDLED) -> None:
        self._signals = tuple(signals)
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous: dict[signal.Signals, _Handler] = {}
        self._previous_fd: int | None = None

    def install(self, selector: selectors.BaseSelector) -> None:
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, _record_only)
        selector.register(self._read, selectors.EVENT_READ, ("signal", None))

    def dispatch(self, target: object) -> None:
        """Call ``target.handle_<signal>()`` for each signal received, in order."""
        try:
            data = os.read(self._read, 256)
        except BlockingIOError:
            return
        for number in data:
            try:
                name = signal.Signals(number).name.lower()
            except ValueError:
                name = f"signal {number}"
            handler = getattr(target, f"handle_{name}", None)
            if handler is None:
                logger.warning("signal received with no handler; ignored", signal=name.upper())
                continue
            handler()

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


def _record_only(signum: int, frame: FrameType | None) -> None:
    """Signal handler: the wakeup fd already carries ``signum`` to the loop; nothing else to do."""
