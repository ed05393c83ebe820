"""The parent's loop: one selector wait, and the rooms it wires together.

The loop waits on one selector holding the children's sockets and pidfds,
the signal wakeup fd, the database link's event fd and the import check's
output, with a timeout equal to the earliest thing due (a deadline, a stack
request, a respawn, the drain deadline). That wait is its only blocking
point: the database is the link's business, on its own thread, so a database
that hangs never delays a deadline kill, and what a child's socket cannot take
at once waits until the selector says it can.

The rooms:

* :class:`~supervisor.pool.Pool`: the children, their slots, respawns, scaling;
* :class:`~supervisor.attempts.Attempts`: dispatch, messages, deadlines,
  panics, lost claims, drain, and the one place an attempt is settled;
* :class:`~supervisor.memory_watch.MemoryWatch`: the RSS of children whose
  handler sets ``MAX_RSS``, sampled while such a task runs;
* :class:`~supervisor.stacks.StackTaker`: stacks of running children, on
  demand and before a cancelled task's child is killed;
* :class:`~supervisor.dblink.DatabaseLink`: every statement, on its own thread;
* :class:`~supervisor.telemetry.Telemetry`: metrics and log lines;
* :class:`~supervisor.relay.OutputRelay`: handler output, tagged, into the log;
* :class:`~supervisor.importcheck.ImportWatch`: the handler import check;
* :class:`~supervisor.signals.SignalInbox`: signals, recorded and dispatched here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor import __version__, metrics
from supervisor.attempts import Attempts
from supervisor.burst import BurstTally
from supervisor.config import Settings
from supervisor.dblink import DatabaseLink, open_link
from supervisor.dsn import Dsn, SqliteDsn
from supervisor.handlers import discover
from supervisor.health import Health
from supervisor.importcheck import ImportWatch
from supervisor.link_events import (
    Claimed,
    DbBack,
    DbFailed,
    Declared,
    DepthSampled,
    LeasesLost,
    NotRecorded,
    PausedChanged,
    RanDry,
    Recorded,
    ScheduleFired,
    StacksWanted,
    Swept,
)
from supervisor.memory_watch import MemoryWatch
from supervisor.policy import DEFAULT_POLICY, HandlerPolicy, PolicyError, from_constants
from supervisor.pool import Pool, Spawner
from supervisor.reaping import become_subreaper, kill_orphans
from supervisor.records import SupervisorInfo
from supervisor.relay import OutputRelay
from supervisor.schedules import Schedule
from supervisor.signals import SignalInbox
from supervisor.spawning import ChildFactory
from supervisor.stacks import StackTaker
from supervisor.telemetry import Telemetry
from supervisor.workers import child_environment

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

HOUSEKEEPING_INTERVAL_S = 5.0  # orphans and child RSS
SWITCH_INTERVAL_S = 0.0005
FINAL_FLUSH_TIMEOUT_S = 12.0  # longer than one hung statement (MySQL read timeout, 10 s)


def database_name(dsn: Dsn) -> str:
    """What the start-up line names: a SQLite file as an absolute path (a run from another
    folder silently made a new, empty one), a server as its redacted DSN."""
    if isinstance(dsn, SqliteDsn):
        return str(Path(dsn.path).resolve())
    return dsn.redacted()


def owner_id() -> str:
    """``claimed_by``: host and pid to trace a claim to a process, plus a token unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        link: DatabaseLink | None = None,
        metrics_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        spawner: Spawner | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``link``, ``clock``, ``spawner`` and ``registry`` are for unit tests that drive
        the loop by hand: a link on a memory store, a clock that moves when told, children
        that are test doubles, and metrics outside the process-wide registry.
        """
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.clock = clock
        self.owner = link.owner if link is not None else owner_id()
        self.handlers: dict[str, Path] = {}
        # The handlers' policies, as the last import check of each reported them (kept over a
        # reload until replaced: a retry of an attempt that started before uses its BACKOFF).
        self.policies: dict[str, HandlerPolicy] = {}
        # What is claimed: only types the current check has reported on, under their policy;
        # a handler that does not import under the default one (its tasks fail with the
        # import error). A type whose check has not reported yet waits.
        self.claimable: dict[str, HandlerPolicy] = {}
        self.unimportable: set[str] = set()
        self.health = Health(stale_after_s=settings.lease_s)
        self.telemetry = Telemetry(lambda: self.handlers, self.owner, registry=registry)
        self.log = self.telemetry.log
        self.selector = selectors.DefaultSelector()
        self.signals = SignalInbox()
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="supervisor-"))
        self.lifeline_r, self.lifeline_w = os.pipe()
        # Where the children's metric files are: the parent's folder, or with --child-user a
        # folder of that user's own (they cannot write the parent's; see metrics.py).
        self.child_metrics_dir = metrics_dir
        extra: dict[str, str] = {}
        if settings.child_user is not None:
            # Children open their dump files by name after the drop; they cannot list the folder.
            self.runtime_dir.chmod(0o711)
            extra.update(settings.child_user.environment())
            if metrics_dir is not None:
                self.child_metrics_dir = metrics.children_directory(
                    self.runtime_dir, settings.child_user
                )
                extra[metrics.MULTIPROC_ENV] = str(self.child_metrics_dir)
        self.child_env = child_environment(os.environ, extra)
        self.link = link or open_link(
            settings.dsn,
            owner=self.owner,
            info=self.info,
            lease_s=settings.lease_s,
            poll_interval_s=settings.poll_interval_s,
            health=self.health,
            clock=clock,
        )
        self.selector.register(self.link.fileno(), selectors.EVENT_READ, ("link", None))
        self.factory = ChildFactory(
            runtime_dir=self.runtime_dir,
            lifeline_fd=self.lifeline_r,
            env=self.child_env,
            with_metrics=metrics_dir is not None,
            user=settings.child_user,
            clock=clock,
        )
        self.own_factory = spawner is None
        self.memory = MemoryWatch(clock=clock)
        self.pool = Pool(
            spawner=spawner or self.factory,
            selector=self.selector,
            workers=settings.workers,
            max_tasks_per_child=settings.max_tasks_per_child,
            max_child_rss_bytes=settings.max_child_rss_bytes,
            on_restart=self.telemetry.restart,
            on_slot_dead=self.slot_dead,
            clock=clock,
        )
        self.attempts = Attempts(
            pool=self.pool,
            link=self.link,
            telemetry=self.telemetry,
            backoff=settings.backoff,
            handlers=lambda: self.handlers,
            policies=lambda: self.policies,
            fresh_s=settings.heartbeat_s,
            memory=self.memory,
            clock=clock,
        )
        self.stacks = StackTaker(
            pool=self.pool, attempts=self.attempts, link=self.link, clock=clock
        )
        self.output = OutputRelay(self.pool, self.log)
        self.imports = ImportWatch(
            self.selector,
            self.child_env,
            self.import_failed,
            checked=self.policy_found,
            warn=self.import_warning,
            finished=self.import_check_finished,
            clock=clock,
        )
        self.draining = False
        self.drain_deadline: float | None = None
        self.claims_seen = 0
        self.next_housekeeping = clock()
        self.burst = BurstTally() if settings.burst else None
        self.link.report_dry = settings.burst

    # ---------------------------------------------------------------- set-up and tear-down

    def run(self) -> int:
        # The link's thread wakes on database replies; a short switch interval lets it take
        # the GIL promptly instead of waiting out the default 5 ms behind the loop's thread.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        become_subreaper()  # before the fork server starts: its children re-parent to us
        # Before anything is started: __main__ ignores HUP/TTIN/TTOU until now, and an ignored
        # disposition would be inherited by the template, its children and what they exec.
        self.signals.install(self.selector)
        if self.own_factory:
            self.factory.start()
        self.load_handlers()
        self.log.info(
            "supervisor starting",
            workers=self.pool.target,
            dsn=self.settings.dsn.redacted(),
            database=database_name(self.settings.dsn),
            handlers=str(self.settings.handlers_dir.resolve()),
            types=sorted(self.handlers),
        )
        self.pool.start()
        self.link.start()
        if self.burst is not None and not self.handlers:
            self.stop_burst()  # no handler, no claim: nothing will ever say the queue ran dry
        while not self.finished():
            self.step()
        self.link.close(FINAL_FLUSH_TIMEOUT_S)
        self.apply_link_events()
        self.log.info("supervisor stopped")
        if self.burst is not None:
            status = self.burst.exit_status()
            self.log.info(self.burst.summary(), outcomes=dict(self.burst.tasks), exit_status=status)
            return status
        return 0

    def cleanup(self) -> None:
        self.imports.close()
        self.factory.close()
        self.pool.kill_all()
        self.signals.restore()
        self.link.release_fd()
        for fd in (self.lifeline_r, self.lifeline_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def info(self) -> SupervisorInfo:
        """The registry entry; read by the link's thread on each heartbeat."""
        return SupervisorInfo(
            id=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            workers=self.pool.target,
            version=__version__,
        )

    def load_handlers(self) -> None:
        """Discover handler files and import-check them in a throwaway child, loudly.

        Claims stop until the check reports each type's policy: a claim made
        before it would ignore the handler's limits (its ``CONCURRENCY`` could
        be exceeded), and a reload may have changed them.
        """
        self.handlers = discover(self.settings.handlers_dir)
        self.claimable, self.unimportable = {}, set()
        self.link.set_types({})
        self.link.set_schedules(())
        if not self.handlers:
            self.log.warning(
                "no handler files found; nothing will be claimed",
                handlers_dir=str(self.settings.handlers_dir),
            )
        self.imports.start(self.handlers)

    def import_failed(self, task_type: str, problem: str) -> None:
        self.log.error(
            "handler cannot be imported; its tasks will fail with this error",
            type=task_type,
            error=problem,
        )
        if task_type == "*":
            self.log.error("no handler policy is known; nothing is claimed until a reload (HUP)")
        elif task_type in self.handlers:
            self.unimportable.add(task_type)
            self.claimable[task_type] = DEFAULT_POLICY
            self.link.set_types(self.claimable)

    def policy_found(self, task_type: str, constants: Mapping[str, object]) -> None:
        """The check imported a handler: validate its constants; claim and declare its type.

        A bad constant is reported like a broken handler, and the type is not
        claimed at all: running it under a policy it did not ask for (no limit
        where it set one) could do harm a failed task cannot.
        """
        if task_type not in self.handlers:
            return
        try:
            policy = from_constants(constants)
        except PolicyError as exc:
            self.log.error(
                "handler declares a bad policy constant; its tasks are not claimed",
                type=task_type,
                error=str(exc),
            )
            if self.burst is not None:
                self.burst.refused(task_type)
            return
        self.policies[task_type] = self.claimable[task_type] = policy
        self.link.set_types(self.claimable)
        declared = {t: p for t, p in self.claimable.items() if t not in self.unimportable}
        self.link.declare(declared)
        self.link.set_schedules(
            Schedule(type=name, cron=found.schedule, options=found.schedule_options)
            for name, found in sorted(declared.items())
            if found.schedule is not None
        )

    def import_check_finished(self) -> None:
        """Burst mode waits for a claim to find nothing; with no type claimable (every handler
        declares a bad policy, or none could be checked) no claim is ever made: stop now."""
        if self.burst is not None and not self.draining and not self.claimable:
            self.burst.refused("*")
            self.stop_burst()

    def import_warning(self, task_type: str, warning: str) -> None:
        self.log.warning("handler file name clashes with a module", type=task_type, error=warning)

    def slot_dead(self, slot: int) -> None:
        """A child exited: its live gauges go, and what it left behind is killed."""
        if self.child_metrics_dir is not None:
            metrics.mark_slot_dead(self.child_metrics_dir, slot)
        self.kill_orphans()

    def kill_orphans(self) -> None:
        """Kill what a dead child left behind (re-parented to us, the subreaper)."""
        known = self.pool.pids()
        known |= self.factory.template_pids
        if self.imports.pid is not None:
            known.add(self.imports.pid)
        try:
            killed = kill_orphans(known)
        except Exception as exc:  # noqa: BLE001 - housekeeping must never stop the loop
            # Out of fds (idle HTTP clients, a handler's leak), /proc or psutil fail with
            # plain OSError or worse; the next sweep tries again, the tasks carry on.
            self.housekeeping_failed(exc)
            return
        if killed:
            self.log.warning("killed processes left behind by a dead child", count=killed)

    def housekeeping_failed(self, exc: Exception) -> None:
        self.log.warning("housekeeping failed; trying again later", error=repr(exc))

    # ---------------------------------------------------------------- the loop

    def finished(self) -> bool:
        return self.draining and not self.pool.children and not self.attempts.backlog

    def step(self, max_wait_s: float | None = None) -> None:
        """One turn: wait for the first thing due or ready, then do everything that is."""
        timeout = max(0.0, self.next_wakeup() - self.clock())
        if max_wait_s is not None:
            timeout = min(timeout, max_wait_s)
        for key, events in self.selector.select(timeout):
            kind, child = key.data
            if kind == "signal":
                self.signals.dispatch(self)
            elif kind == "socket":
                if events & selectors.EVENT_WRITE:
                    child.flush()
                if events & selectors.EVENT_READ:
                    running = self.output.relay(child)
                    self.attempts.on_readable(child)
                    self.output.attempt_ended(child, running)
            elif kind == "output":
                self.output.relay(child)
            elif kind == "exit":
                running = self.output.relay(child, exiting=True)
                self.attempts.on_exit(child)
                self.output.attempt_ended(child, running, exited=True)
            elif kind == "link":
                self.apply_link_events()
            elif kind == "check":
                self.imports.on_readable()
        now = self.clock()
        self.imports.check_deadline(now)
        self.stacks.collect(now)
        self.attempts.enforce_deadlines(now)
        self.attempts.enforce_memory(now)  # after: a kill already announced by a stack request wins
        self.pool.kill_overdue(now)
        self.pool.respawn_due(now)
        self.attempts.dispatch_backlog()
        self.attempts.expire_backlog(now)
        if self.drain_deadline is not None and now >= self.drain_deadline:
            self.drain_deadline = None
            self.attempts.abandon_all()
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
            self.kill_orphans()
            try:
                self.telemetry.sample_rss((c.slot, c.pid) for c in self.pool.children.values())
            except Exception as exc:  # noqa: BLE001 - see kill_orphans
                self.housekeeping_failed(exc)
        self.pool.watch_writes()
        self.state_need()
        self.health.loop_at = time.monotonic()
        busy = len(self.pool.busy())
        self.telemetry.publish(workers=self.pool.target, busy=busy)

    def state_need(self) -> None:
        """Tell the link how many tasks the idle children could take now."""
        idle = len(self.pool.idle()) + self.attempts.prefetch()
        need = 0 if self.draining else idle - len(self.attempts.backlog)
        self.link.want(max(0, need), seen=self.claims_seen)

    def next_wakeup(self) -> float:
        """When the loop must next run: the earliest thing due (fds wake it regardless)."""
        due = [
            self.next_housekeeping,
            self.attempts.next_due(),
            self.memory.next_due(),
            self.pool.next_due(),
            self.drain_deadline,
            self.imports.next_due(),
            self.stacks.next_due(),
        ]
        return min(d for d in due if d is not None)

    def apply_link_events(self) -> None:
        for event in self.link.take_events():
            if isinstance(event, Recorded):
                self.telemetry.recorded(event.result, event.won, cancelled=event.cancelled)
                if self.burst is not None:
                    self.burst.recorded(event.result, event.won, cancelled=event.cancelled)
            elif isinstance(event, Claimed):
                self.claims_seen = event.generation
                self.telemetry.claimed(event)
                if self.draining:  # claimed before the link learned of the drain
                    self.attempts.hand_back(event.claims)
                else:
                    self.attempts.claimed(event.claims, event.claimed_at)
            elif isinstance(event, LeasesLost):
                # A cancelled task's child is killed once its stack is read (see stacks.py).
                stacked = self.stacks.cancelled(event.cancelled)
                self.attempts.leases_lost(event.ids - stacked, cancelled=event.cancelled)
            elif isinstance(event, StacksWanted):
                self.stacks.wanted(event.ids)
            elif isinstance(event, Declared):
                self.declared(event)
            elif isinstance(event, Swept):
                self.telemetry.swept(event)
            elif isinstance(event, DepthSampled):
                self.telemetry.depth(event)
            elif isinstance(event, PausedChanged):
                self.telemetry.paused(event, self.handlers)
            elif isinstance(event, ScheduleFired):
                self.telemetry.schedule_fired(event)
            elif isinstance(event, DbFailed):
                self.telemetry.db_failed(event)
            elif isinstance(event, DbBack):
                self.telemetry.db_back(event)
            elif isinstance(event, NotRecorded):
                self.telemetry.not_recorded(event.result)
                if self.burst is not None:
                    self.burst.not_recorded(event.result)
            elif isinstance(event, RanDry):
                self.ran_dry(event)

    # ---------------------------------------------------------------- burst mode

    def ran_dry(self, event: RanDry) -> None:
        """A claim found nothing: in burst mode, stop if nothing can make work any more.

        That is: every result handed to the link was written before that claim
        (a retry it wrote is runnable now, so the claim would have found it),
        no attempt runs and no claim waits for a child.
        """
        if (
            self.burst is None
            or self.draining
            or self.imports.pid is not None  # a type still being checked is not claimed yet
            or self.pool.busy()
            or self.attempts.backlog
            or event.submitted != self.link.submitted
        ):
            return
        self.stop_burst()

    def stop_burst(self) -> None:
        self.log.info("burst: nothing runnable is left; stopping")
        self.draining = True
        self.drain_deadline = self.clock() + self.settings.drain_timeout_s
        self.pool.drain()

    def declared(self, event: Declared) -> None:
        """Two supervisors with different handler files for one type: the fleet's limits
        depend on which declared last, which an operator should hear about."""
        for found in event.overwritten:
            self.log.warning(
                "replaced a different policy another live supervisor declared for this type",
                type=found.type,
                declared_by=found.declared_by,
                before=found.before.as_constants(),
                now=self.policies.get(found.type, DEFAULT_POLICY).as_constants(),
            )

    # ---------------------------------------------------------------- signals

    def handle_sigterm(self) -> None:
        if self.draining:
            self.log.warning("second stop signal: putting in-flight tasks back now")
            self.drain_deadline = self.clock()
            return
        self.draining = True
        self.drain_deadline = self.clock() + self.settings.drain_timeout_s
        self.log.info(
            "draining: no new claims; in-flight tasks may finish",
            in_flight=len(self.pool.busy()),
            drain_timeout_s=self.settings.drain_timeout_s,
        )
        self.attempts.refund_backlog()
        self.pool.drain()

    handle_sigint = handle_sigterm

    def handle_sigquit(self) -> None:
        if not self.draining:
            self.handle_sigterm()
        self.drain_deadline = self.clock()

    def handle_sighup(self) -> None:
        """Reload: re-read the handlers folder; replace children as each becomes idle."""
        if self.draining:
            return
        self.load_handlers()
        self.log.info("reloaded handlers; replacing children", types=sorted(self.handlers))
        self.pool.reload()

    def handle_sigttin(self) -> None:
        if not self.draining:
            self.pool.grow()
            self.log.info("one worker more", workers=self.pool.target)

    def handle_sigttou(self) -> None:
        if not self.draining and self.pool.shrink():
            self.log.info("one worker less", workers=self.pool.target)
