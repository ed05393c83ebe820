"""Test doubles for driving the parent's loop by hand: clocks, children, a store that keeps order.

:class:`Loop` builds a real :class:`~supervisor.parent.Supervisor` on a
:class:`~supervisor.store.MemoryStore`, with

* one monotonic clock for the loop and the link, and the store's
  :class:`~supervisor.store.ManualClock`, both moved by :meth:`Loop.advance`;
* :class:`FakeChild` children: real :class:`~supervisor.workers.Child`
  objects around an in-process socket pair (the test speaks for the child on
  the other end) and a pipe standing in for the pidfd (written to when the
  "process" exits), so the loop's selector sees exactly what it would see;
* no link thread: the test turns the link (:meth:`Loop.turn`) and the loop
  (:meth:`Loop.step`) in the order it wants to examine.

Nothing sleeps: time moves only when a test says so.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import signal
import socket
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
from loguru import logger
from prometheus_client import CollectorRegistry

from supervisor.config import Settings
from supervisor.dblink import DatabaseLink
from supervisor.dsn import parse_dsn
from supervisor.lifecycle import Backoff
from supervisor.link_events import LinkEvent
from supervisor.parent import Supervisor
from supervisor.protocol import (
    DoneMessage,
    ErrorMessage,
    LineBuffer,
    Message,
    ProgressMessage,
    ReadyMessage,
    StopMessage,
    TaskMessage,
    decode,
    encode,
)
from supervisor.reaping import ExitStatus
from supervisor.records import SupervisorInfo
from supervisor.store import ManualClock, MemoryStore, NewTask, TaskRow
from supervisor.workers import Child, ChildState

# Beyond any Linux pid_max (2**22): psutil finds no such process, a kill reaches nobody.
FAKE_PID_BASE = 5_000_000
STACK_TEXT = 'Thread 0x01 (most recent call first):\n  File "handler.py", line 3 in handle'
OWNER = "unit-test:1:abcdef"
HANDLER = "def handle(task, progress):\n    pass\n"


class MonotonicClock:
    """The loop's and the link's ``time.monotonic``, moved by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class FakeChild(Child):
    """A child process without a process: the test plays the child's side.

    ``peer`` is the child's end of the socket pair. :meth:`exit` closes it and
    makes the "pidfd" readable, as a real exit would; :meth:`reap` then gives
    the chosen exit status. A kill (deadline, lost claim, drain) is an exit
    by SIGKILL, as it would be for a real child. A stack request writes
    :data:`STACK_TEXT` to the dump file, as faulthandler would.
    """

    def __init__(self, *, slot: int, pid: int, dump_dir: Path) -> None:
        sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._exit_r, self._exit_w = os.pipe()
        dump_path = dump_dir / f"child-{pid}.dump"
        dump_path.write_bytes(b"")
        super().__init__(slot=slot, pid=pid, sock=sock, pidfd=self._exit_r, dump_path=dump_path)
        self.peer.setblocking(False)
        self._from_parent = LineBuffer()
        self.exit_status: tuple[int | None, str | None] | None = None
        self.reaped = False
        self.stack_requests = 0
        self.catches_stack_signal = True
        self.kills = 0
        self.exit_on_stop = False  # act out a real child's obedience to ``stop``
        self._heard: list[Message] = []
        self._closed = False

    # --- what the test says as the child ----------------------------------------------------

    def say(self, message: Message) -> None:
        self.peer.sendall(encode(message))

    def say_raw(self, data: bytes) -> None:
        self.peer.sendall(data)

    def say_ready(self) -> None:
        self.say(ReadyMessage(pid=self.pid))

    def say_done(self) -> None:
        self.say(DoneMessage(id=self.task().id))

    def say_error(self, message: str = "ValueError: boom", *, permanent: bool = False) -> None:
        self.say(
            ErrorMessage(
                id=self.task().id,
                message=message,
                traceback="Traceback (most recent call last): ...",
                permanent=permanent,
            )
        )

    def say_progress(self, pct: int) -> None:
        self.say(ProgressMessage(id=self.task().id, pct=pct))

    def exit(self, code: int | None = 0, *, by: signal.Signals | None = None) -> None:
        """The process ends (exit ``code``, or killed ``by`` a signal); idempotent."""
        if self.exit_status is not None or self._closed:
            return
        self.exit_status = (None, by.name) if by is not None else (code, None)
        self.heard()  # what the parent sent before the end stays readable to the test
        with contextlib.suppress(OSError):
            self.peer.close()
        os.write(self._exit_w, b"x")

    # --- what the parent sent ---------------------------------------------------------------

    def heard(self) -> list[Message]:
        """Every message the parent has sent since the last call."""
        messages: list[Message] = []
        while True:
            try:
                data = self.peer.recv(1 << 16)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            messages.extend(decode(line) for line in self._from_parent.feed(data))
        self._heard.extend(messages)
        return messages

    def tasks(self) -> list[TaskMessage]:
        """Every task message received so far."""
        self.heard()
        return [m for m in self._heard if isinstance(m, TaskMessage)]

    def task(self) -> TaskMessage:
        """The last task the parent handed this child."""
        tasks = self.tasks()
        assert tasks, f"child {self.pid} was never handed a task"
        return tasks[-1]

    def told_to_stop(self) -> bool:
        self.heard()
        return any(isinstance(m, StopMessage) for m in self._heard)

    # --- the process operations, simulated --------------------------------------------------

    def send(self, message: Message) -> bool:
        sent = super().send(message)
        if sent and self.exit_on_stop and isinstance(message, StopMessage):
            self.exit(0)
        return sent

    def request_stack(self) -> bool:
        """faulthandler appends each stack to the dump file (opened ``O_APPEND``); a child
        whose handler reset the signal (``catches_stack_signal = False``) is sent nothing."""
        if not self.catches_stack_signal:
            return False
        self.stack_requests += 1
        with self.dump_path.open("a") as dump:
            dump.write(STACK_TEXT)
        return True

    def kill_tree(self, descendants: Sequence[psutil.Process] | None = None) -> None:
        self.killed_by_parent = True
        self.state = ChildState.STOPPING
        self.kills += 1
        self.exit(by=signal.SIGKILL)

    def reap(self) -> ExitStatus | None:
        if self.exit_status is None or self.reaped:
            return None
        self.reaped = True
        code, signal_name = self.exit_status
        return ExitStatus(
            exit_code=code,
            signal_name=signal_name,
            peak_rss_bytes=50 * 1024 * 1024,
            killed_by_parent=self.killed_by_parent,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        super().close()
        self.peer.close()
        os.close(self._exit_w)


class FakeSpawner:
    """``spawner(slot) -> Child`` for the pool: every child it made, in order."""

    def __init__(self, dump_dir: Path, clock: MonotonicClock) -> None:
        self._dump_dir = dump_dir
        self._clock = clock
        self._pids = itertools.count(FAKE_PID_BASE)
        self.spawned: list[FakeChild] = []
        self.spawned_at: list[tuple[int, float]] = []  # (slot, loop clock)
        self.failures = 0  # the next this many spawns raise OSError
        self.on_spawn: list[Callable[[FakeChild], None]] = []  # run on each new child

    def __call__(self, slot: int) -> Child:
        self.spawned_at.append((slot, self._clock()))
        if self.failures:
            self.failures -= 1
            raise OSError("fork failed: resource temporarily unavailable")
        child = FakeChild(slot=slot, pid=next(self._pids), dump_dir=self._dump_dir)
        self.spawned.append(child)
        for action in self.on_spawn:
            action(child)
        return child

    def close_all(self) -> None:
        for child in self.spawned:
            child.close()


class OrderedStore(MemoryStore):
    """A memory store that also keeps the order of calls (``calls`` only counts them)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.log: list[str] = []

    @contextlib.contextmanager
    def _call(self, name: str, *, reaches_database: bool = True) -> Iterator[None]:
        self.log.append(name)
        with super()._call(name, reaches_database=reaches_database):
            yield


class RecordingLink(DatabaseLink):
    """The real link; every event the loop took from it is kept in ``taken``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken: list[LinkEvent] = []

    def take_events(self) -> list[LinkEvent]:
        events = super().take_events()
        self.taken.extend(events)
        return events


class NoImportCheck:
    """Stands in for ImportWatch: the handler import check would start a real interpreter.

    Unless told to ``hold`` its report, it reports at once that every handler
    imports, with the policy ``constants`` the test gave for its type.
    """

    pid = None

    def __init__(
        self,
        checked: Callable[[str, Mapping[str, object]], None],
        constants: Mapping[str, Mapping[str, object]],
        *,
        hold: bool = False,
    ) -> None:
        self.started: list[Mapping[str, Path]] = []
        self._checked = checked
        self._constants = constants
        self.hold = hold

    def start(self, handlers: Mapping[str, Path]) -> None:
        self.started.append(dict(handlers))
        if not self.hold:
            self.report()

    def report(self) -> None:
        """The check's report arrives: every handler of the last start imported."""
        for task_type in sorted(self.started[-1]):
            self._checked(task_type, self._constants.get(task_type, {}))

    def next_due(self) -> None:
        return None

    def on_readable(self) -> None:
        raise AssertionError("no check runs")

    def check_deadline(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


class Loop:
    """A Supervisor on a MemoryStore, with fake children, turned by hand."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        workers: int = 2,
        types: tuple[str, ...] = ("echo",),
        backoff: Backoff | None = None,
        lease_s: float = 30.0,
        poll_interval_s: float = 0.2,
        drain_timeout_s: float = 10.0,
        max_tasks_per_child: int = 0,
        max_child_rss_mib: float = 0.0,
        import_check: bool = False,
        constants: Mapping[str, Mapping[str, object]] | None = None,
        hold_check: bool = False,
    ) -> None:
        self.handlers_dir = tmp_path / "handlers"
        self.handlers_dir.mkdir(parents=True)
        for task_type in types:
            self.add_handler(task_type)
        self.clock = MonotonicClock()
        self.db_clock = ManualClock()
        self.store = OrderedStore(self.db_clock)
        self.orphan_sweeps = 0
        self.settings = Settings(
            dsn=parse_dsn("sqlite:///unused-by-unit-tests.db"),
            workers=workers,
            handlers_dir=self.handlers_dir,
            backoff=backoff if backoff is not None else Backoff(),
            drain_timeout_s=drain_timeout_s,
            lease_s=lease_s,
            poll_interval_s=poll_interval_s,
            max_tasks_per_child=max_tasks_per_child,
            max_child_rss_mib=max_child_rss_mib,
            metrics_port=0,
        )
        dumps = tmp_path / "dumps"
        dumps.mkdir()
        self.spawner = FakeSpawner(dumps, self.clock)
        self.registry = CollectorRegistry()
        self.link = RecordingLink(
            self.store,
            owner=OWNER,
            info=self._info,  # the Supervisor is built after its link
            lease_s=lease_s,
            poll_interval_s=poll_interval_s,
            clock=self.clock,
        )
        self.sup = Supervisor(
            self.settings,
            link=self.link,
            clock=self.clock,
            spawner=self.spawner,
            registry=self.registry,
        )
        if not import_check:  # the real one runs an interpreter
            self.sup.imports = NoImportCheck(  # type: ignore[assignment]
                self.sup.policy_found, constants or {}, hold=hold_check
            )
        self.logs: list[dict[str, Any]] = []
        self._sink = logger.add(self._log, level="DEBUG", format="{message}")
        self._link_closed = False

    def _info(self) -> SupervisorInfo:
        return self.sup.info()

    def _log(self, message: Any) -> None:
        record = message.record
        self.logs.append({"message": record["message"], **record["extra"]})

    def add_handler(self, task_type: str, source: str = HANDLER) -> None:
        (self.handlers_dir / f"{task_type}.py").write_text(source)

    # --- set-up and tear-down ---------------------------------------------------------------

    def start(self, *, ready: bool = True) -> Loop:
        """Children spawned (and saying ``ready``), handlers loaded; the link not yet turned."""
        self.sup.load_handlers()
        self.sup.pool.start()
        if ready:
            for child in self.children():
                child.say_ready()
        self.step()
        return self

    def close(self) -> None:
        if not self._link_closed:
            self.close_link()
        self.sup.cleanup()
        self.spawner.close_all()
        logger.remove(self._sink)

    def run(self) -> int:
        """``Supervisor.run()``: signals, children, the link's thread, the loop, until drained."""
        self._link_closed = True  # run() closes it
        return self.sup.run()

    def close_link(self) -> bool:
        self._link_closed = True
        return self.link.close(1.0)

    # --- turning ----------------------------------------------------------------------------

    def step(self) -> None:
        """One turn of the loop that never blocks."""
        self.sup.step(max_wait_s=0)

    def turn(self) -> None:
        """One turn of the database link (its thread's work)."""
        self.link.turn()

    def cycle(self, times: int = 1) -> None:
        """The link turns, then the loop takes what it did; ``times`` over."""
        for _ in range(times):
            self.turn()
            self.step()

    def advance(self, seconds: float) -> None:
        """Time passes for the loop, the link and the database alike."""
        self.clock.now += seconds
        self.db_clock.advance(seconds)

    def advance_to(self, moment: float) -> None:
        """Time passes until exactly ``moment`` on the loop's clock."""
        assert moment >= self.clock.now, "time only moves forward"
        self.db_clock.advance(moment - self.clock.now)
        self.clock.now = moment

    def poll(self) -> None:
        """One poll interval passes, then the link and the loop turn."""
        self.advance(self.settings.poll_interval_s)
        self.cycle()

    # --- looking ----------------------------------------------------------------------------

    def children(self) -> list[FakeChild]:
        """The pool's current children, by slot."""
        found = [self.sup.pool.children[slot] for slot in sorted(self.sup.pool.children)]
        assert all(isinstance(c, FakeChild) for c in found)
        return found  # type: ignore[return-value]

    def child(self, slot: int) -> FakeChild:
        child = self.sup.pool.children[slot]
        assert isinstance(child, FakeChild)
        return child

    def busy(self) -> list[FakeChild]:
        return [c for c in self.children() if c.state is ChildState.BUSY]

    def enqueue(self, count: int = 1, **task: Any) -> list[int]:
        task.setdefault("type", "echo")
        return self.store.enqueue_many([NewTask(**task) for _ in range(count)])

    def row(self, task_id: int) -> TaskRow:
        row = self.store.get(task_id)
        assert row is not None
        return row

    def events(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.link.taken if isinstance(e, kind)]

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs if entry["message"] == message]

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def calls(self) -> Counter[str]:
        return self.store.calls


def selector_watches(selector: selectors.BaseSelector, fileobj: Any) -> bool:
    try:
        selector.get_key(fileobj)
    except KeyError:
        return False
    return True
