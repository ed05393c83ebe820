"""The parent: one loop around one blocking wait, that claims, dispatches, watches and records.

The loop waits on the children's sockets and pidfds and on the signal wakeup
fd, with a timeout equal to the next thing due (a deadline, a poll, a
heartbeat). Signal handlers do nothing but wake it: the signal number arrives
as a byte on the wakeup fd and the loop calls ``handle_<signal>``.

Only the parent talks to the database. Outcomes are decided when a child
reports, dies or times out, then written (fenced, batched) when the database
answers; while it does not, they are held and nothing new is claimed.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import selectors
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
from loguru import logger

from supervisor import __version__, logs, metrics
from supervisor.config import Settings
from supervisor.errors import StoreError
from supervisor.forkserver import Template
from supervisor.handlers import discover
from supervisor.health import Health
from supervisor.lifecycle import Decision, Failure, Outcome, Status, decide_error
from supervisor.protocol import (
    DoneMessage,
    ErrorMessage,
    Message,
    ProgressMessage,
    ProtocolError,
    ReadyMessage,
    StopMessage,
    TaskMessage,
)
from supervisor.reaping import ExitStatus, become_subreaper, kill_orphans
from supervisor.results import (
    PendingResult,
    failure_result,
    is_completion,
    settle_completions,
    write_results,
)
from supervisor.store import Claim, Store, SupervisorInfo, open_store
from supervisor.workers import Child, ChildState, ImportCheck, Running, child_environment

STACK_LEAD_S = 0.05  # ask for the stack this long before the deadline kill
PROGRESS_INTERVAL_S = 1.0  # at most one progress write per task per second
HOUSEKEEPING_INTERVAL_S = 5.0
HOUSEKEEPING_BATCH = 500
FORGET_DEAD_SUPERVISORS_S = 86400.0  # registry entries of dead supervisors, kept a day
SAMPLE_INTERVAL_S = 5.0  # child RSS and queue depth: sampled, not read per scrape
DB_RETRY_MIN_S, DB_RETRY_MAX_S = 0.5, 30.0
SPAWN_RETRY_MIN_S, SPAWN_RETRY_MAX_S = 0.5, 30.0
TEMPLATE_RETRY_S = 30.0  # after the fork server failed, children are spawned the slow way this long
IMPORT_CHECK_TIMEOUT_S = 60.0
# A drained attempt goes back to the queue as if it never ran (the attempt is refunded).
BACK_TO_QUEUE = Decision(outcome=Outcome.RETRIED, status=Status.QUEUED, retry_in_s=0.0)
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


def run(settings: Settings) -> int:
    """Run a supervisor until it has drained; the process's exit status."""
    logs.configure(settings.log_format, settings.log_level)
    directory = None
    if settings.metrics_port:
        # Before prometheus_client is first imported, and before children inherit the environment.
        directory = metrics.prepare_directory(os.environ)
        metrics.bind_process_files(metrics.PARENT_ID)
    store = open_store(settings.dsn)
    supervisor = Supervisor(settings, store, metrics_dir=directory.path if directory else None)
    server = None
    try:
        if directory is not None:
            from supervisor import http

            try:
                server = http.serve(
                    settings.metrics_host,
                    settings.metrics_port,
                    str(directory.path),
                    supervisor.health,
                )
            except OSError as exc:
                logger.error("cannot serve metrics", port=settings.metrics_port, error=str(exc))
                return 1
        return supervisor.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        supervisor.cleanup()
        store.close()
        if directory is not None:
            directory.cleanup()


def owner_id() -> str:
    """``claimed_by``: host and pid to trace a claim to a process, plus a token unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Supervisor:
    def __init__(self, settings: Settings, store: Store, metrics_dir: Path | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics_dir = metrics_dir
        self.metrics = metrics.Metrics(lambda: self.handlers)
        self.health = Health(stale_after_s=settings.lease_s)
        self.next_sample = time.monotonic()
        self.owner = owner_id()
        self.log = logger.bind(owner=self.owner)
        self.handlers: dict[str, Path] = {}
        self.children: dict[int, Child] = {}
        self.target_workers = settings.workers
        self.pending: list[PendingResult] = []
        self.selector = selectors.DefaultSelector()
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="supervisor-"))
        self.lifeline_r, self.lifeline_w = os.pipe()
        self.wakeup_r, self.wakeup_w = os.pipe()
        self.child_env = child_environment(os.environ, {})
        now = time.monotonic()
        self.draining = False
        self.drain_deadline: float | None = None
        self.next_poll = now
        self.next_heartbeat = now + settings.heartbeat_s
        self.next_housekeeping = now
        self.db_retry_at = now
        self.db_failures = 0
        self.migrated = False
        self.spawn_at: dict[int, float] = {}
        self.spawn_failures: dict[int, int] = {}
        self.import_check: ImportCheck | None = None
        self.template: Template | None = None
        self.template_retry_at = 0.0
        self.queue_ran_dry = False  # the last claim came back short: probe before claiming

    # ---------------------------------------------------------------- set-up and tear-down

    def run(self) -> int:
        become_subreaper()  # before the fork server starts: its children must re-parent to us
        self.install_signals()
        self.start_template()
        self.load_handlers()
        self.log.info(
            "supervisor starting",
            workers=self.target_workers,
            dsn=self.settings.dsn.redacted(),
            types=sorted(self.handlers),
        )
        for slot in range(self.target_workers):
            self.spawn(slot)
        self.next_heartbeat = time.monotonic()  # register at once
        while not self.finished():
            self.step()
        if self.final_flush():
            with contextlib.suppress(StoreError):
                self.store.deregister(self.owner)
        self.log.info("supervisor stopped")
        return 0

    def info(self) -> SupervisorInfo:
        return SupervisorInfo(
            id=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            workers=self.target_workers,
            version=__version__,
        )

    def install_signals(self) -> None:
        os.set_blocking(self.wakeup_w, False)
        os.set_blocking(self.wakeup_r, False)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            # The handler records nothing itself: the wakeup fd carries the signal number.
            signal.signal(signum, _record_only)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, ("signal", None))

    def cleanup(self) -> None:
        self.end_import_check()
        self.stop_template()
        for child in list(self.children.values()):
            child.kill_tree()
            self.forget(child)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for fd in (self.lifeline_r, self.lifeline_w, self.wakeup_r, self.wakeup_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def load_handlers(self) -> None:
        """Discover handler files and import-check them in a throwaway child, loudly."""
        self.end_import_check()
        self.handlers = discover(self.settings.handlers_dir)
        if not self.handlers:
            self.log.warning(
                "no handler files found; nothing will be claimed",
                handlers_dir=str(self.settings.handlers_dir),
            )
            return
        # Imports may be slow or hang: the check runs beside the loop, which never waits for it.
        # Not in multiprocess mode: metrics a handler creates at import would leave value files
        # named after this throwaway process (more on every reload), live gauges never marked dead.
        check_env = {k: v for k, v in self.child_env.items() if k != metrics.MULTIPROC_ENV}
        self.import_check = ImportCheck(self.handlers, check_env, IMPORT_CHECK_TIMEOUT_S)
        self.selector.register(self.import_check.fileno(), selectors.EVENT_READ, ("check", None))

    def on_import_check(self, *, timed_out: bool = False) -> None:
        """The check's output ended (or its time ran out): report broken handlers, loudly."""
        assert self.import_check is not None
        if not timed_out and not self.import_check.read():
            return
        self.selector.unregister(self.import_check.fileno())
        report = self.import_check.report(timed_out=timed_out)
        self.import_check = None
        for task_type, problem in report.items():
            if problem:
                self.log.error(
                    "handler cannot be imported; its tasks will fail with this error",
                    type=task_type,
                    error=problem,
                )

    def end_import_check(self) -> None:
        if self.import_check is not None:
            self.selector.unregister(self.import_check.fileno())
            self.import_check.close()
            self.import_check = None

    # ---------------------------------------------------------------- the loop

    def finished(self) -> bool:
        return self.draining and not self.children

    def step(self) -> None:
        timeout = max(0.0, self.next_wakeup() - time.monotonic())
        for key, _events in self.selector.select(timeout):
            kind, child = key.data
            if kind == "signal":
                self.dispatch_signals()
            elif kind == "socket":
                self.on_readable(child)
            elif kind == "exit":
                self.on_exit(child)
            elif kind == "check" and self.import_check is not None:
                self.on_import_check()
        now = time.monotonic()
        if self.import_check is not None and now >= self.import_check.deadline:
            self.on_import_check(timed_out=True)
        self.enforce_deadlines(now)
        self.respawn_due(now)
        if self.db_ready(now) and self.schema_ready():
            self.flush_progress(now)
        # Each step re-checks readiness: one failure must not be followed by another attempt
        # (and a second, doubled backoff) before the retry time it set.
        if self.db_ready(now) and self.schema_ready():
            self.flush_results(now)
        if self.db_ready(now) and now >= self.next_heartbeat:
            self.heartbeat(now)
        if self.db_ready(now) and now >= self.next_housekeeping:
            self.housekeeping(now)
        if self.db_ready(now) and self.can_claim(now):
            self.claim_and_dispatch(now)
        if self.draining and self.drain_deadline is not None and now >= self.drain_deadline:
            self.abandon_in_flight()
        self.publish_state(now)

    def publish_state(self, now: float) -> None:
        """Gauges and health, after every turn of the loop (each is a store into a mmap)."""
        self.health.loop_at = now
        busy = len(self.busy_children())
        self.metrics.in_flight.set(busy)
        self.metrics.busy.set(busy)
        self.metrics.workers.set(self.target_workers)
        if now >= self.next_sample:
            self.next_sample = now + SAMPLE_INTERVAL_S
            self.metrics.set_child_rss(child_rss(self.children.values()))
            if self.db_ready(now):
                self.guarded(self.sample_queue_depth)

    def sample_queue_depth(self) -> None:
        self.metrics.set_queue_depth(
            (c.type, c.status.value, c.count) for c in self.store.counts(live_only=True)
        )

    def next_wakeup(self) -> float:
        """When the loop must next run: the earliest thing due (signals wake it regardless).

        Work that needs the database (heartbeat, housekeeping, progress, claims,
        held results) is never due before ``db_retry_at``: during an outage the
        loop would otherwise wake at once, find the database not ready, and spin.
        """
        db_due = [self.next_heartbeat, self.next_housekeeping]
        if not self.draining and self.handlers and self.idle_children():
            db_due.append(self.next_poll)
        if self.pending:
            db_due.append(self.db_retry_at)
        due = []
        for child in self.children.values():
            if child.running is not None:
                running = child.running
                due.append(running.deadline if running.stack_requested else running.stack_at)
                if running.pct_dirty:
                    db_due.append(running.pct_written_at + PROGRESS_INTERVAL_S)
        due.extend(max(when, self.db_retry_at) for when in db_due)
        due.extend(self.spawn_at.values())
        if self.drain_deadline is not None:
            due.append(self.drain_deadline)
        if self.import_check is not None:
            due.append(self.import_check.deadline)
        return min(due)

    # ---------------------------------------------------------------- signals

    def dispatch_signals(self) -> None:
        try:
            data = os.read(self.wakeup_r, 256)
        except BlockingIOError:
            return
        for number in data:
            name = signal.Signals(number).name.lower()
            getattr(self, f"handle_{name}")()

    def handle_sigterm(self) -> None:
        if self.draining:
            self.log.warning("second stop signal: putting in-flight tasks back now")
            self.drain_deadline = time.monotonic()
            return
        self.draining = True
        self.drain_deadline = time.monotonic() + self.settings.drain_timeout_s
        self.log.info(
            "draining: no new claims; in-flight tasks may finish",
            in_flight=len(self.busy_children()),
            drain_timeout_s=self.settings.drain_timeout_s,
        )
        for child in list(self.children.values()):
            if child.state in (ChildState.IDLE, ChildState.STARTING):
                self.stop_child(child)
        self.spawn_at.clear()

    handle_sigint = handle_sigterm

    def handle_sigquit(self) -> None:
        if not self.draining:
            self.handle_sigterm()
        self.drain_deadline = time.monotonic()

    def handle_sighup(self) -> None:
        """Reload: re-read the handlers folder; replace children as each becomes idle."""
        if self.draining:
            return
        self.load_handlers()
        self.log.info("reloaded handlers; replacing children", types=sorted(self.handlers))
        for child in list(self.children.values()):
            child.exit_reason = "reload"
            if child.state is ChildState.BUSY:
                child.retire_when_idle = True
            elif child.state is not ChildState.STOPPING:
                self.stop_child(child)

    def handle_sigttin(self) -> None:
        if self.draining:
            return
        self.target_workers += 1
        slot = self.target_workers - 1
        self.log.info("one worker more", workers=self.target_workers)
        current = self.children.get(slot)
        if current is None:
            self.spawn(slot)
        else:
            current.retire_when_idle = False

    def handle_sigttou(self) -> None:
        if self.draining or self.target_workers <= 1:
            return
        self.target_workers -= 1
        self.log.info("one worker less", workers=self.target_workers)
        self.spawn_at.pop(self.target_workers, None)
        child = self.children.get(self.target_workers)
        if child is None:
            return
        if child.state is ChildState.BUSY:
            child.retire_when_idle = True
        elif child.state is not ChildState.STOPPING:
            self.stop_child(child)

    # ---------------------------------------------------------------- children

    def start_template(self) -> None:
        """Start the fork server, which makes a new child cost a fork; without it, children are
        started as new interpreters (slower, same guarantees)."""
        self.template_retry_at = time.monotonic() + TEMPLATE_RETRY_S
        try:
            self.template = Template.start(env=self.child_env, lifeline_fd=self.lifeline_r)
        except OSError as exc:
            self.log.warning(
                "fork server unavailable; starting children as new interpreters", error=str(exc)
            )

    def stop_template(self) -> None:
        if self.template is not None:
            self.template.close()
            self.template = None

    def spawn(self, slot: int) -> None:
        self.spawn_at.pop(slot, None)
        metrics_id = metrics.slot_id(slot) if self.metrics_dir else None
        if self.template is None and time.monotonic() >= self.template_retry_at:
            self.start_template()
        child = None
        if self.template is not None:
            try:
                child = Child.fork(
                    self.template, slot=slot, runtime_dir=self.runtime_dir, metrics_id=metrics_id
                )
            except OSError as exc:
                self.log.warning(
                    "fork server failed; starting children as new interpreters for now",
                    error=str(exc),
                )
                self.stop_template()
        try:
            child = child or Child.spawn(
                slot=slot,
                runtime_dir=self.runtime_dir,
                lifeline_fd=self.lifeline_r,
                env=self.child_env,
                metrics_id=metrics_id,
            )
        except OSError as exc:
            self.log.error("cannot start a child", slot=slot, error=str(exc))
            self.schedule_respawn(slot, failed=True)
            return
        self.children[slot] = child
        self.selector.register(child.sock, selectors.EVENT_READ, ("socket", child))
        self.selector.register(child.pidfd, selectors.EVENT_READ, ("exit", child))

    def schedule_respawn(self, slot: int, *, failed: bool) -> None:
        if self.draining or slot >= self.target_workers:
            return
        if not failed:
            self.spawn_failures.pop(slot, None)
            self.spawn(slot)
            return
        failures = self.spawn_failures.get(slot, 0) + 1
        self.spawn_failures[slot] = failures
        delay = min(SPAWN_RETRY_MAX_S, SPAWN_RETRY_MIN_S * 2 ** (failures - 1))
        self.log.warning("child failed at start-up; retrying later", slot=slot, delay_s=delay)
        self.spawn_at[slot] = time.monotonic() + delay

    def respawn_due(self, now: float) -> None:
        for slot, when in list(self.spawn_at.items()):
            if when <= now and slot not in self.children:
                self.spawn(slot)

    def stop_child(self, child: Child) -> None:
        child.state = ChildState.STOPPING
        if not child.send(StopMessage()):
            child.kill_tree()

    def forget(self, child: Child) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.sock)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.pidfd)
        if self.children.get(child.slot) is child:
            del self.children[child.slot]
        child.close()

    def idle_children(self) -> list[Child]:
        return [c for c in self.children.values() if c.state is ChildState.IDLE]

    def busy_children(self) -> list[Child]:
        return [c for c in self.children.values() if c.state is ChildState.BUSY]

    def on_readable(self, child: Child) -> None:
        try:
            messages, closed = child.receive()
        except ProtocolError as exc:
            self.log.error(
                "child sent a malformed message; killing it", pid=child.pid, error=str(exc)
            )
            self.kill_running(child, Failure.PANIC, f"child sent a malformed message: {exc}")
            return
        for message in messages:
            self.on_message(child, message)
        if closed:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(child.sock)

    def on_message(self, child: Child, message: Message) -> None:
        if isinstance(message, ReadyMessage):
            child.saw_ready = True
            self.spawn_failures.pop(child.slot, None)
            if child.state is ChildState.STARTING:
                child.state = ChildState.IDLE
                if self.draining or child.slot >= self.target_workers:
                    self.stop_child(child)
            return
        running = child.running
        if child.killed_by_parent:
            return  # its task was settled when it was killed; what it still says is moot
        if running is None or getattr(message, "id", None) != running.claim.id:
            self.log.warning("child reported on a task it does not hold; ignored", pid=child.pid)
            return
        if isinstance(message, ProgressMessage):
            running.pct = message.pct
            running.pct_dirty = True
        elif isinstance(message, DoneMessage):
            self.finish(child, self.completed(running))
        elif isinstance(message, ErrorMessage):
            self.finish(child, self.errored(running, message))

    def completed(self, running: Running) -> PendingResult:
        return PendingResult(
            claim=running.claim,
            decision=Decision(outcome=Outcome.COMPLETED, status=Status.COMPLETED),
            duration_s=time.monotonic() - running.started,
        )

    def errored(self, running: Running, message: ErrorMessage) -> PendingResult:
        claim = running.claim
        decision = decide_error(
            attempt=claim.attempt,
            max_attempts=claim.max_attempts,
            permanent=message.permanent,
            backoff=self.settings.backoff,
        )
        error = message.message + ("\n\n" + message.traceback if message.traceback else "")
        import_failed = message.permanent and not message.traceback
        summary = "handler could not be imported" if import_failed else exception_type(message)
        return PendingResult(
            claim=claim,
            decision=decision,
            error=error,
            summary=summary,
            duration_s=time.monotonic() - running.started,
            progress_pct=running.pct if running.pct_dirty else None,
        )

    def finish(self, child: Child, result: PendingResult) -> None:
        """The child is free again: queue its result, then give it work or let it go."""
        self.pending.append(result)
        child.running = None
        child.tasks_done += 1
        child.state = ChildState.IDLE
        recycle = self.settings.max_tasks_per_child and (
            child.tasks_done >= self.settings.max_tasks_per_child
        )
        if recycle:
            child.exit_reason = "recycled"
        if self.draining or child.retire_when_idle or recycle or child.slot >= self.target_workers:
            self.stop_child(child)

    def on_exit(self, child: Child) -> None:
        if child.sock.fileno() >= 0:
            # Messages written just before the exit are still in the socket: read them first.
            with contextlib.suppress(ProtocolError):
                messages, _ = child.receive()
                for message in messages:
                    self.on_message(child, message)
        status = child.reap()
        if status is None:
            return
        if child.running is not None and not child.killed_by_parent:
            child.exit_reason = "panic"
            self.record_panic(child, status)
        elif child.state is not ChildState.STOPPING:
            self.log.warning("idle child died; replacing it", pid=child.pid, exit=status.describe())
        self.forget(child)
        self.kill_orphans()
        if self.metrics_dir is not None:
            metrics.mark_slot_dead(self.metrics_dir, child.slot)
        failed_start = not child.saw_ready and not child.killed_by_parent
        if child.slot < self.target_workers and not self.draining:
            reason = "startup_failed" if failed_start else child.exit_reason
            self.metrics.restarts.labels(reason=reason).inc()
            self.schedule_respawn(child.slot, failed=failed_start)

    def kill_orphans(self) -> None:
        """Kill what a dead child left behind (re-parented to us, the subreaper)."""
        known = {c.pid for c in self.children.values()}
        if self.import_check is not None:
            known.add(self.import_check.process.pid)
        if self.template is not None:
            known.add(self.template.pid)
        if killed := kill_orphans(known):
            self.log.warning("killed processes left behind by a dead child", count=killed)

    def record_panic(self, child: Child, status: ExitStatus) -> None:
        running = child.running
        assert running is not None
        dump = child.read_dump()
        self.settle_running(
            child, Failure.PANIC, f"panic: {status.describe()}" + (f"\n\n{dump}" if dump else "")
        )

    def kill_running(self, child: Child, failure: Failure, error: str) -> None:
        """Kill a child's whole tree and, if it held a task, record ``failure`` for it."""
        child.exit_reason = failure.value
        child.kill_tree()
        self.settle_running(child, failure, error)

    def settle_running(self, child: Child, failure: Failure, error: str) -> None:
        """Record ``failure`` for the task ``child`` held (with its last progress) and free it."""
        running = child.running
        if running is None:
            return
        pct = running.pct if running.pct_dirty else None
        duration = time.monotonic() - running.started
        self.pending.append(failure_result(running.claim, failure, error, duration, pct))
        child.running = None

    def enforce_deadlines(self, now: float) -> None:
        for child in list(self.children.values()):
            running = child.running
            if running is None:
                continue
            if not running.stack_requested and now >= running.stack_at:
                running.stack_requested = True
                child.request_stack()
            if now >= running.deadline:
                budget = running.deadline - running.started
                stack = child.read_dump()
                error = (
                    f"timeout: the wall-clock budget ran out after {budget:.3f} s of this attempt;"
                    " the child and its process tree were killed"
                    + (f"\n\nStack at the deadline:\n{stack}" if stack else "")
                )
                self.log.bind(
                    task_id=running.claim.id, type=running.claim.type, attempt=running.claim.attempt
                ).warning("deadline reached; killing the child's tree", pid=child.pid)
                self.kill_running(child, Failure.TIMEOUT, error)

    # ---------------------------------------------------------------- database

    def db_ready(self, now: float) -> bool:
        return now >= self.db_retry_at

    def db_failed(self, exc: StoreError) -> None:
        """Back off (capped at half a heartbeat, so leases survive), and renew at first contact."""
        self.metrics.db_errors.inc()
        self.db_failures += 1
        cap = min(DB_RETRY_MAX_S, self.settings.heartbeat_s / 2)
        delay = min(cap, DB_RETRY_MIN_S * 2 ** (self.db_failures - 1))
        self.next_heartbeat = min(self.next_heartbeat, time.monotonic())
        delay *= random.uniform(0.5, 1.0)
        self.db_retry_at = time.monotonic() + delay
        self.log.error(
            "database error; holding results and retrying",
            error=str(exc),
            retry_in_s=round(delay, 2),
            held=len(self.pending),
        )

    def db_ok(self) -> None:
        self.health.db_ok_at = time.monotonic()
        if self.db_failures:
            self.log.info("database is back", after_failures=self.db_failures)
        self.db_failures = 0

    def schema_ready(self) -> bool:
        """Apply the schema once (idempotent) before the first other statement."""
        if not self.migrated:
            self.migrated = self.guarded(self.store.migrate)
        return self.migrated

    def guarded(self, work: Callable[[], object]) -> bool:
        """Run ``work`` against the database; False (and a backoff) if the database failed."""
        try:
            work()
        except StoreError as exc:
            self.db_failed(exc)
            return False
        self.db_ok()
        return True

    def flush_results(self, now: float) -> None:
        """Write held outcomes. Completions wait for the claim this turn makes, if it makes one,
        so that both share one transaction."""
        if not self.pending:
            return
        if self.can_claim(now):
            # Only if a statement will run: guarded() counts an empty write as the database
            # answering, which would reset the backoff and report it healthy during an outage.
            if not all(is_completion(p) for p in self.pending):
                self.guarded(self.write_failures)
        else:
            self.guarded(self.write_pending)

    def write_pending(self) -> None:
        write_results(self.store, self.pending, self.recorded)

    def write_failures(self) -> None:
        write_results(self.store, self.pending, self.recorded, completions=False)

    def recorded(self, result: PendingResult, won: bool) -> None:
        claim = result.claim
        outcome = result.decision.outcome
        fields = {
            "task_id": claim.id,
            "type": claim.type,
            "attempt": claim.attempt,
            "duration_s": round(result.duration_s, 4),
        }
        if result.refund:
            self.log.bind(**fields, outcome="refunded", won=won).info(
                "task put back to queued (attempt refunded)" if won else "refund lost its claim"
            )
            return
        self.metrics.observe_outcome(
            claim.type, outcome.value if won else Outcome.LOST.value, result.duration_s
        )
        if not won:
            self.log.bind(**fields, outcome=Outcome.LOST.value).warning(
                "result discarded: the claim was lost (rescued or cancelled elsewhere)",
                would_have_been=outcome.value,
            )
            return
        # Keyword arguments become fields without a bind() per task (the hot path).
        if outcome is Outcome.COMPLETED:
            self.log.info("task completed", **fields, outcome=outcome.value)
        elif outcome is Outcome.RETRIED:
            self.log.warning(
                "task failed; retrying",
                **fields,
                outcome=outcome.value,
                retry_in_s=result.decision.retry_in_s,
                error=result.summary,
            )
        else:
            self.log.error(
                "task failed",
                **fields,
                outcome=outcome.value,
                failure=outcome.value,
                error=result.summary,
            )

    def flush_progress(self, now: float) -> None:
        due = [
            c.running
            for c in self.children.values()
            if c.running is not None
            and c.running.pct_dirty
            and now >= c.running.pct_written_at + PROGRESS_INTERVAL_S
        ]
        if not due:
            return
        try:
            for running in due:
                assert running.pct is not None
                self.store.progress(running.claim, running.pct)
                running.pct_dirty = False
                running.pct_written_at = now
        except StoreError as exc:
            self.db_failed(exc)

    def heartbeat(self, now: float) -> None:
        """Renew our leases and registry entry; a task no longer ours is someone else's: kill it."""
        self.next_heartbeat = now + self.settings.heartbeat_s
        busy = self.busy_children()
        claims = [c.running.claim for c in busy if c.running is not None]
        try:
            self.store.register(self.info(), ttl_s=self.settings.lease_s)
            held = self.store.renew_leases(self.owner, claims, self.settings.lease_s)
        except StoreError as exc:
            self.db_failed(exc)
            return
        self.db_ok()
        for child in busy:
            running = child.running
            if running is not None and running.claim.id not in held:
                self.log.bind(
                    task_id=running.claim.id,
                    type=running.claim.type,
                    attempt=running.claim.attempt,
                    outcome=Outcome.LOST.value,
                ).warning("claim lost (lease expired and rescued, or cancelled); killing the child")
                self.metrics.observe_outcome(
                    running.claim.type, Outcome.LOST.value, time.monotonic() - running.started
                )
                child.exit_reason = Outcome.LOST.value
                child.kill_tree()
                child.running = None

    def housekeeping(self, now: float) -> None:
        """Every supervisor sweeps: expire overdue queued tasks, rescue expired leases."""
        self.next_housekeeping = now + min(HOUSEKEEPING_INTERVAL_S, self.settings.heartbeat_s)
        self.kill_orphans()
        if not self.guarded(self.sweep):
            return

    def sweep(self) -> None:
        expired = self.store.expire_overdue(HOUSEKEEPING_BATCH)
        rescued = self.store.rescue_expired(HOUSEKEEPING_BATCH)
        self.store.forget_supervisors(FORGET_DEAD_SUPERVISORS_S)
        for task_type, count in expired.items():
            self.log.bind(type=task_type, outcome=Outcome.EXPIRED.value).warning(
                "expired queued tasks whose deadline passed before dispatch", count=count
            )
            self.metrics.observe_outcome(task_type, Outcome.EXPIRED.value, None, count)
        for task_type, count in rescued.lost.items():
            self.log.bind(type=task_type, outcome=Outcome.LOST.value).warning(
                "failed tasks whose lease ran out on their last attempt", count=count
            )
            self.metrics.observe_outcome(task_type, Outcome.LOST.value, None, count)
        if rescued.requeued:
            self.log.warning(
                "rescued tasks whose lease ran out; back to queued", count=rescued.requeued
            )

    def can_claim(self, now: float) -> bool:
        return (
            not self.draining
            and bool(self.handlers)
            and now >= self.next_poll
            and now >= self.db_retry_at
            and bool(self.idle_children())
        )

    def claim_and_dispatch(self, now: float) -> None:
        """Claim work for the idle children, carrying the held completions in the same transaction.

        After a claim came back short (the queue ran dry), polls first take one
        cheap non-locking look, and open a claim transaction only on a hit.
        """
        idle = self.idle_children()
        done = [p for p in self.pending if is_completion(p)]
        claimed_at = time.monotonic()  # before the claim: its round trip eats into the budget
        started = time.perf_counter()
        try:
            if self.queue_ran_dry and not self.store.has_claimable(self.handlers):
                self.next_poll = now + self.settings.poll_interval_s
                if done:
                    self.write_pending()
                self.db_ok()
                return
            won, claims = self.store.complete_and_claim(
                [p.claim for p in done],
                self.owner,
                self.handlers,
                len(idle),
                self.settings.lease_s,
            )
        except StoreError as exc:
            self.db_failed(exc)
            return
        self.db_ok()
        settle_completions(done, won, self.pending, self.recorded)
        self.metrics.observe_claims((c.type for c in claims), time.perf_counter() - started)
        full = len(claims) == len(idle)
        self.queue_ran_dry = not full
        self.next_poll = now if full else now + self.settings.poll_interval_s
        for child, claim in zip(idle, claims, strict=False):
            self.dispatch(child, claim, claimed_at)

    def dispatch(self, child: Child, claim: Claim, claimed_at: float) -> None:
        now = time.monotonic()
        deadline = claimed_at + claim.remaining_s
        if deadline <= now:
            self.pending.append(
                failure_result(
                    claim, Failure.EXPIRED, "deadline passed before the task was dispatched", 0.0
                )
            )
            return
        child.running = Running(
            claim=claim,
            started=now,
            deadline=deadline,
            stack_at=max(now, deadline - STACK_LEAD_S),
        )
        child.state = ChildState.BUSY
        self.log.debug(
            "task dispatched",
            task_id=claim.id,
            type=claim.type,
            attempt=claim.attempt,
            pid=child.pid,
        )
        message = TaskMessage(
            id=claim.id,
            type=claim.type,
            path=str(self.handlers[claim.type]),
            options=claim.options,
            attempt=claim.attempt,
            max_attempts=claim.max_attempts,
            remaining_s=deadline - now,
        )
        if not child.send(message):
            # The child died between ready and now: the task never started, so it goes back.
            self.log.warning("child vanished at dispatch", pid=child.pid)
            child.running = None
            self.pending.append(PendingResult(claim=claim, decision=BACK_TO_QUEUE, refund=True))

    # ---------------------------------------------------------------- drain

    def abandon_in_flight(self) -> None:
        """Drain time is up: kill what still runs and put those tasks back, attempt refunded."""
        self.drain_deadline = None
        for child in list(self.children.values()):
            running = child.running
            child.kill_tree()
            if running is not None:
                self.pending.append(
                    PendingResult(
                        claim=running.claim,
                        decision=BACK_TO_QUEUE,
                        duration_s=time.monotonic() - running.started,
                        refund=True,
                    )
                )
                child.running = None

    def final_flush(self) -> bool:
        """Write what is held, in one try: a drain must end even when the database hangs.

        What cannot be written is logged, and its tasks are rescued later by
        lease. True if the database is answering.
        """
        if self.pending and self.guarded(self.write_pending):
            return True
        for result in self.pending:
            self.log.bind(
                task_id=result.claim.id, type=result.claim.type, attempt=result.claim.attempt
            ).error(
                "result not recorded (database unavailable); the task will be rescued when "
                "its lease expires",
                would_have_been=result.decision.outcome.value,
            )
        return self.db_failures == 0


def child_rss(children: Iterable[Child]) -> dict[int, int]:
    rss = {}
    for child in children:
        try:
            rss[child.slot] = psutil.Process(child.pid).memory_info().rss
        except psutil.Error:
            continue
    return rss


def exception_type(message: ErrorMessage) -> str:
    """``"ValueError"`` from ``"ValueError: <text>"``: the text may quote the task's options."""
    return message.message.split(":", 1)[0].strip() or "exception"


def _record_only(signum: int, frame: object) -> None:
    """Signal handler: the wakeup fd already carries ``signum`` to the loop; nothing else to do."""
