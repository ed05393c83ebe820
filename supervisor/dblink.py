"""The database link: the one part of the parent that talks to the database, on its own thread.

The loop must never wait on the database: a statement can hang for the
driver's read timeout, and the loop is what kills children at their
deadlines. So the loop only *hands* the link what it wants done and *learns*
what happened through events, announced by a byte on :meth:`DatabaseLink.fileno`,
which sits in the loop's selector beside the children's sockets.

The loop hands over

* results (:meth:`submit`): outcomes to write, fenced by owner and attempt;
* progress (:meth:`progress`): the latest value per task, written at most
  once a second per task;
* a claim need (:meth:`want`): how many tasks the idle children could take;
* stacks taken of running children (:meth:`record_stack`), fenced.

While anything is leased, the link also reads its rows' control state once
per poll interval (:mod:`supervisor.controls`): a cancel, a rescue or an
operator's stack request reaches the loop within a poll interval.

The link's thread turns (:meth:`turn`) whenever something is due. Whatever
arrived while one round trip was in flight goes together in the next one
(group commit): held completions ride with the next claim in one
transaction. Lease renewal comes first in every turn, so a stream of full
claims never starves it. When the database fails, the link keeps what it
holds, backs off (doubling, jittered, capped at half a heartbeat so leases
outlive short outages) and renews the leases at first contact.

Claims and the loop: a claim answers a need the loop stated after it had
seen every earlier claim (``seen``), so the link never claims twice for the
same idle child.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from supervisor.controls import StackAsks, judge
from supervisor.dsn import Dsn
from supervisor.errors import StartupError, StoreError, StoreMisconfigured, StoreUnavailable
from supervisor.health import Health
from supervisor.lifecycle import DEFAULT_BUDGET_S, Status, doubling_delay
from supervisor.link_events import (
    Claimed,
    DbBack,
    DbFailed,
    Declared,
    DepthSampled,
    LeasesLost,
    LinkEvent,
    NotRecorded,
    PausedChanged,
    RanDry,
    Recorded,
    ScheduleFired,
    StacksWanted,
    Swept,
)
from supervisor.policy import HandlerPolicy
from supervisor.records import Claim, SupervisorInfo
from supervisor.results import PendingResult, refund
from supervisor.schedules import Schedule, latest_slot, next_slot, slot_key
from supervisor.store import NewTask, Store, open_store

PROGRESS_INTERVAL_S = 1.0  # at most one progress write per task per second
HOUSEKEEPING_INTERVAL_S = 5.0
HOUSEKEEPING_BATCH = 500
SAMPLE_INTERVAL_S = 5.0  # queue depth: sampled, not read per scrape
FORGET_DEAD_SUPERVISORS_S = 86400.0  # registry entries of dead supervisors, kept a day
DB_RETRY_MIN_S, DB_RETRY_MAX_S = 0.5, 30.0
SCHEDULE_RECHECK_S = 60.0  # at most this long between schedule checks, whatever the cron says
SCHEDULE_SLACK_S = 0.001  # wake just after the slot, so the database clock has reached it


# ---------------------------------------------------------------- the link


class DatabaseLink:
    """Owns the store; lives on its own thread (or is turned by hand in unit tests)."""

    def __init__(
        self,
        store: Store,
        *,
        owner: str,
        info: Callable[[], SupervisorInfo],
        lease_s: float,
        poll_interval_s: float,
        health: Health | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.owner = owner
        self._store = store
        self._info = info
        self._lease_s = lease_s
        self._heartbeat_s = lease_s / 3
        self._poll_interval_s = poll_interval_s
        self._health = health
        self._clock = clock
        # Shared with the loop, under the lock.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: list[PendingResult] = []
        self._progress: dict[int, tuple[Claim, int]] = {}
        self._stacks: list[tuple[Claim, str, Status]] = []  # stacks taken, to write
        self._need = 0
        self._seen = 0
        self._types: tuple[str, ...] = ()
        self._policies: dict[str, HandlerPolicy] = {}
        self._to_declare: dict[str, HandlerPolicy] | None = None
        self._stopping = False
        self._fresh = False
        self._events: collections.deque[LinkEvent] = collections.deque()
        self._notify_r, self._notify_w = os.pipe()
        os.set_blocking(self._notify_r, False)
        os.set_blocking(self._notify_w, False)
        # The link's own state: touched only by whoever turns it.
        self._held: list[PendingResult] = []
        self._leased: dict[int, Claim] = {}
        self._progress_written: dict[int, float] = {}
        self._generation = 0
        now = clock()
        self._next_heartbeat = now
        self._next_housekeeping = now
        self._next_sample = now
        self._next_poll = now
        self._next_controls = now
        self._stack_asks = StackAsks()
        self._retry_at = now
        self._failures = 0
        self._migrated = False
        self._ran_dry = False
        self._paused: frozenset[str] = frozenset()
        self._schedules: tuple[Schedule, ...] = ()
        self._next_schedule_check = now
        self._fired: dict[str, datetime] = {}
        self._paused_known = False
        self._next_pause_read = now
        self._thread: threading.Thread | None = None
        self._posted = False
        # Burst mode: say when a claim finds nothing (RanDry), counting results handed over.
        self.report_dry = False
        self._submitted = 0
        self._turn_submitted = 0

    # ------------------------------------------------------------ the loop's side

    def fileno(self) -> int:
        """Readable when events wait in :meth:`take_events`."""
        return self._notify_r

    def submit(self, result: PendingResult) -> None:
        """Queue a result; it goes at the next :meth:`want` (once per turn of the loop)."""
        with self._lock:
            self._inbox.append(result)
            self._submitted += 1
            self._progress.pop(result.claim.id, None)  # the result carries its own last progress
            self._fresh = True

    def progress(self, claim: Claim, pct: int) -> None:
        with self._lock:
            self._progress[claim.id] = (claim, pct)
            self._fresh = True

    def record_stack(self, claim: Claim, stack: str, *, status: Status) -> None:
        """Write the stack taken of ``claim``'s child (fenced on ``status``; see the store)."""
        with self._lock:
            self._stacks.append((claim, stack, status))
            self._fresh = True

    def want(self, need: int, *, seen: int) -> None:
        """The children could take ``need`` tasks, counting every claim up to ``seen``.

        Called once at the end of each turn of the loop: this is what wakes the
        link, so that everything the turn produced (results from several
        children, and the claim their freed children want) goes in one round trip.
        """
        with self._lock:
            if self._fresh or (need, seen) != (self._need, self._seen):
                self._need, self._seen = need, seen
                self._fresh = False
                self._wake.notify()

    def set_types(self, policies: Mapping[str, HandlerPolicy]) -> None:
        """Claim these types from now on, each under its handler's policy (passed to every
        claim: the defaults it writes into rows, the limits it keeps)."""
        with self._lock:
            self._types = tuple(sorted(policies))
            self._policies = dict(policies)
            self._wake.notify()

    def declare(self, policies: Mapping[str, HandlerPolicy]) -> None:
        """Write these policies to ``task_types`` at the next turn (again, after a failure)."""
        with self._lock:
            self._to_declare = dict(policies)
            self._wake.notify()

    def set_schedules(self, schedules: Iterable[Schedule]) -> None:
        """The handlers' schedules (at start and on reload): checked at once, then slot by slot."""
        with self._lock:
            self._schedules = tuple(schedules)
            self._next_schedule_check = self._clock()
            self._wake.notify()

    def take_events(self) -> list[LinkEvent]:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._notify_r, 4096):
                pass
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="database-link", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float) -> bool:
        """Write what is held in one last try, deregister, and stop; True if all was written.

        Called once no attempt runs and no claim waits (claims still leased are refunded).
        A drain must end even when the database hangs: after ``timeout_s`` the
        loop stops waiting, and whatever is still held is reported as not
        recorded (its tasks are rescued by lease elsewhere).
        """
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is None:
            self.final_flush()
        else:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                # The link's thread hangs in a statement: it touches _held only after one
                # returns, so a copy taken under the lock is what it has not written.
                with self._lock:
                    unwritten = [*self._held, *self._inbox]
                for result in unwritten:
                    self._post(NotRecorded(result=result))
                self._announce()
                return False
        if self._notify_w >= 0:  # closed once: a second close could hit a reused fd number
            with contextlib.suppress(OSError):
                os.close(self._notify_w)
            self._notify_w = -1
        return not self._held

    def release_fd(self) -> None:
        """Close the loop's end of the notify pipe (after :meth:`close`), once."""
        if self._notify_r >= 0:
            with contextlib.suppress(OSError):
                os.close(self._notify_r)
            self._notify_r = -1

    @property
    def held(self) -> int:
        """Results waiting to be written (for logs and tests)."""
        with self._lock:
            return len(self._held) + len(self._inbox)

    # ------------------------------------------------------------ the link's side

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping:
                    now = self._clock()
                    due = self._next_due_locked(now)
                    if due <= now:
                        break
                    self._wake.wait(due - now)
                stopping = self._stopping
            if stopping:
                self.final_flush()
                return
            self.turn()

    def next_due(self) -> float:
        """When the link next has something to do (for tests that turn it by hand)."""
        with self._lock:
            return self._next_due_locked(self._clock())

    def _next_due_locked(self, now: float) -> float:
        if now < self._retry_at:
            return self._retry_at
        due = [self._next_heartbeat, self._next_housekeeping, self._next_sample]
        if self._schedules:
            due.append(self._next_schedule_check)
        if self._results_due_locked() or self._stacks:
            due.append(now)
        if self._leased:
            due.append(self._next_controls)
        if self._claim_wanted_locked():
            due.append(self._next_poll)
        for claim_id in self._progress:
            due.append(
                self._progress_written.get(claim_id, -PROGRESS_INTERVAL_S) + PROGRESS_INTERVAL_S
            )
        return min(due)

    def _results_due_locked(self) -> bool:
        """Failures, retries and refunds go at once; completions may wait for the next claim."""
        results = [*self._inbox, *self._held]
        if any(not r.is_completion for r in results):
            return True
        return bool(results) and not self._awaiting_loop_locked()

    def _awaiting_loop_locked(self) -> bool:
        """The loop has not yet taken the last claims: its next :meth:`want` is imminent.

        Completions wait for it rather than go alone, so that they ride with the
        claim that want() brings: one transaction, one commit, instead of two.
        """
        return self._seen != self._generation and not self._stopping

    def _claim_wanted_locked(self) -> bool:
        return (
            self._need > 0
            and self._seen == self._generation
            and bool(self._types)
            and not self._stopping
        )

    def turn(self) -> None:
        """One round: renew, write what is held, claim what is wanted, keep house."""
        now = self._clock()
        if now < self._retry_at:
            return
        with self._lock:
            self._held.extend(self._inbox)
            self._inbox.clear()
            self._turn_submitted = self._submitted  # all written (or failed) before this claim
            progress = self._due_progress_locked(now)
            stacks, self._stacks = self._stacks, []
            need = self._need if self._claim_wanted_locked() else 0
            completions_wait = self._awaiting_loop_locked()
            types, policies = self._types, self._policies
            to_declare = self._to_declare
            schedules = self._schedules if now >= self._next_schedule_check else ()
        try:
            if not self._migrated:
                self._store.migrate()
                self._migrated = True
            if now >= self._next_heartbeat:
                self._heartbeat(now)
            self._write_stacks(stacks)  # first: a request answered now is not read as pending
            if to_declare is not None:  # after registering: others see who declared
                self._declare(to_declare)
            self._write_progress(progress, now)
            self._write_others()
            if need and now >= self._next_poll:
                self._complete_and_claim(now, need, types, policies)
            elif not completions_wait and any(r.is_completion for r in self._held):
                self._complete()
            if self._leased and now >= self._next_controls:
                self._announce()  # what was written is the loop's news now, not after this read
                self._read_controls(now)  # after the writes: what still runs is what is read
            if schedules:
                self._fire_schedules(now, schedules)
            if now >= self._next_housekeeping:
                self._sweep(now)
            if now >= self._next_sample:
                self._sample(now)
        except Exception as exc:  # noqa: BLE001 - not only StoreError: the thread must not die
            self._failed(exc, progress, stacks)
        else:
            self._answered()
        self._announce()

    def _due_progress_locked(self, now: float) -> list[tuple[Claim, int]]:
        due = []
        for claim_id, (claim, pct) in list(self._progress.items()):
            last = self._progress_written.get(claim_id, -PROGRESS_INTERVAL_S)
            if now >= last + PROGRESS_INTERVAL_S:
                due.append((claim, pct))
                del self._progress[claim_id]
        return due

    def _heartbeat(self, now: float) -> None:
        """Renew our leases and registry entry; claims not renewed are someone else's now."""
        self._next_heartbeat = now + self._heartbeat_s
        self._store.register(self._info(), ttl_s=self._lease_s)
        claims = list(self._leased.values())
        if not claims:
            return
        held = self._store.renew_leases(self.owner, claims, self._lease_s)
        lost = frozenset(c.id for c in claims if c.id not in held)
        cancelled = self._cancelled_among([c for c in claims if c.id in lost])
        self._lose(lost, cancelled)

    def _lose(self, lost: frozenset[int], cancelled: frozenset[int]) -> None:
        """Forget claims that are not ours any more, and tell the loop (it kills their children)."""
        with self._lock:  # progress still pending for a lost claim would be written for nothing
            for claim_id in lost:
                self._progress.pop(claim_id, None)
        for claim_id in lost:
            self._leased.pop(claim_id, None)
            self._progress_written.pop(claim_id, None)
        if lost:
            self._post(LeasesLost(ids=lost, cancelled=cancelled))

    def _read_controls(self, now: float) -> None:
        """Learn of cancels, rescues and stack requests within a poll interval (see controls.py).

        One read by primary key, at most once per poll interval and only while
        something is leased: an idle supervisor pays nothing for it.
        """
        self._next_controls = now + self._poll_interval_s
        ending = {r.claim.id for r in self._held}  # their results are on their way
        claims = [c for c in self._leased.values() if c.id not in ending]
        if not claims:
            return
        verdict = judge(self.owner, claims, self._store.task_controls([c.id for c in claims]))
        self._lose(verdict.lost | verdict.cancelled, verdict.cancelled)
        wanted = self._stack_asks.due(verdict.stacks, now)
        if wanted:
            self._post(StacksWanted(ids=wanted))

    def _write_stacks(self, stacks: list[tuple[Claim, str, Status]]) -> None:
        """Each stack in one fenced statement; one whose fence lost is dropped (not ours)."""
        while stacks:
            claim, stack, status = stacks[0]
            self._store.record_stack(claim, stack, status=status)
            del stacks[0]

    def _write_progress(self, progress: list[tuple[Claim, int]], now: float) -> None:
        """Write what is due; each value leaves ``progress`` once written (the rest is kept)."""
        while progress:
            claim, pct = progress[0]
            self._store.progress(claim, pct)
            self._progress_written[claim.id] = now
            del progress[0]

    def _write_others(self) -> None:
        """Failures, retries and refunds: one fenced statement each."""
        for result in [r for r in self._held if not r.is_completion]:
            won = write_one(self._store, result)
            self._recorded(result, won)

    def _complete(self) -> None:
        done = [r for r in self._held if r.is_completion]
        won = self._store.complete_many([r.claim for r in done], [r.usage for r in done])
        for result in done:
            self._recorded(result, result.claim.id in won)

    def _declare(self, policies: dict[str, HandlerPolicy]) -> None:
        """Declare the policies; done unless the loop asked for a newer declaration meanwhile."""
        overwritten = self._store.declare_types(self.owner, policies)
        with self._lock:
            if self._to_declare is policies:
                self._to_declare = None
        self._post(Declared(overwritten=tuple(overwritten)))

    def _complete_and_claim(
        self,
        now: float,
        need: int,
        types: Sequence[str],
        policies: Mapping[str, HandlerPolicy],
    ) -> None:
        """Held completions and the next claim in one transaction (one commit for both).

        After a claim came back short (the queue ran dry), polls first take one
        cheap non-locking look, and open a claim transaction only on a hit.
        """
        done = [r for r in self._held if r.is_completion]
        ours_paused = not self._paused.isdisjoint(types)
        if (
            self._ran_dry
            and not ours_paused
            and not self._store.has_claimable(types, policies=policies)
        ):
            self._idle(now, done)
            return
        self._read_paused(now)
        types = [t for t in types if t not in self._paused]
        if not types or (
            self._ran_dry
            and ours_paused
            and not self._store.has_claimable(types, policies=policies)
        ):
            self._idle(now, done)
            return
        claimed_at = self._clock()
        started = time.perf_counter()
        won, claims = self._store.complete_and_claim(
            [r.claim for r in done],
            self.owner,
            types,
            need,
            self._lease_s,
            policies=policies,
            usages=[r.usage for r in done],
        )
        seconds = time.perf_counter() - started
        for result in done:
            self._recorded(result, result.claim.id in won)
        full = len(claims) >= need
        self._ran_dry = not full
        if not claims:
            self._dry()
        self._next_poll = now if full else now + self._poll_interval_s
        if claims:
            # A task we claim again was ours under an older attempt: that claim is lost (the
            # heartbeat that would say so may not have run since), and must be said to be lost
            # before the new claim, or the loop would run both and renew only one.
            replaced = frozenset(c.id for c in claims if c.id in self._leased)
            if replaced:
                self._post(LeasesLost(ids=replaced))
            for claim in claims:
                self._leased[claim.id] = claim
            with self._lock:
                self._generation += 1
                generation = self._generation
            self._post(
                Claimed(
                    claims=tuple(claims),
                    claimed_at=claimed_at,
                    seconds=seconds,
                    generation=generation,
                )
            )
            self._announce()  # at once: housekeeping may take a while, and claims go stale

    def _fire_schedules(self, now: float, schedules: Sequence[Schedule]) -> None:
        """Fire each schedule's latest slot that this link has not seen fired, then sleep until
        the next slot (by the database's UTC clock, mapped onto ours).

        A slot another supervisor fired costs one short transaction here, once: the
        outcome is remembered per type. The wait is capped, so a clock that drifts from
        the database's is corrected at least once a minute.
        """
        db_now = self._store.utc_now()
        for schedule in schedules:
            slot = latest_slot(schedule.cron, db_now)
            if self._fired.get(schedule.type, datetime.min) >= slot:
                continue
            budget = DEFAULT_BUDGET_S - (db_now - slot).total_seconds()
            if budget > 0:
                task = NewTask(
                    type=schedule.type,
                    options=schedule.options,
                    budget_s=budget,
                    unique_key=slot_key(slot),
                )
                enqueued = self._store.fire_slot(task, schedule.cron, slot)
                if enqueued is not None:
                    self._post(ScheduleFired(type=schedule.type, slot=slot, task_id=int(enqueued)))
            self._fired[schedule.type] = slot
        upcoming = min(next_slot(s.cron, db_now) for s in schedules)
        wait = min((upcoming - db_now).total_seconds(), SCHEDULE_RECHECK_S)
        self._next_schedule_check = now + max(wait, 0.0) + SCHEDULE_SLACK_S

    def _idle(self, now: float, done: list[PendingResult]) -> None:
        """Nothing to claim now: poll again in one interval; held completions go alone."""
        self._next_poll = now + self._poll_interval_s
        self._dry()
        if done:
            self._complete()

    def _dry(self) -> None:
        if self.report_dry:
            self._post(RanDry(submitted=self._turn_submitted))

    @property
    def submitted(self) -> int:
        """Results handed over by :meth:`submit` so far (burst mode compares it with RanDry)."""
        with self._lock:
            return self._submitted

    def _read_paused(self, now: float) -> None:
        """Learn which types operators paused, at most once per poll interval.

        Read before a claim (never on an idle poll that finds no work, unless
        one of our types is paused: then its resume must be seen), so a pause
        stops this supervisor's claims within one poll interval, and an idle
        supervisor with nothing paused pays only the read that refreshes the
        pause gauge with the queue-depth sample.
        """
        if now < self._next_pause_read:
            return
        self._next_pause_read = now + self._poll_interval_s
        paused = self._store.paused_types()
        if paused != self._paused or not self._paused_known:
            self._paused, self._paused_known = paused, True
            self._post(PausedChanged(paused=paused))

    def _sweep(self, now: float) -> None:
        """Every supervisor sweeps: expire overdue queued tasks, rescue expired leases."""
        self._next_housekeeping = now + min(HOUSEKEEPING_INTERVAL_S, self._heartbeat_s)
        expired = self._store.expire_overdue(HOUSEKEEPING_BATCH)
        rescued = self._store.rescue_expired(HOUSEKEEPING_BATCH)
        self._store.forget_supervisors(FORGET_DEAD_SUPERVISORS_S)
        if expired or rescued.lost or rescued.requeued:
            self._post(Swept(expired=expired, lost=rescued.lost, requeued=rescued.requeued))

    def _sample(self, now: float) -> None:
        self._next_sample = now + SAMPLE_INTERVAL_S
        counts = self._store.counts(live_only=True)
        self._post(DepthSampled(counts=tuple((c.type, str(c.status), c.count) for c in counts)))
        self._read_paused(now)  # an idle supervisor reads no pauses to claim; its gauge still does

    def _cancelled_among(self, lost: list[Claim]) -> frozenset[int]:
        """Which lost claims an operator cancelled; none if the database cannot say.

        Only the outcome's name depends on it (``cancelled`` or ``lost``), so a
        failed read must not fail what called it: a claim just made, or a
        result just written, would otherwise never be reported.
        """
        if not lost:
            return frozenset()
        try:
            return frozenset(self._store.cancelled_claims(self.owner, lost))
        except Exception:  # noqa: BLE001 - a name is not worth an outage
            return frozenset()

    def _recorded(self, result: PendingResult, won: bool) -> None:
        # A lost fence is rare: only then is the row read.
        cancelled = not won and not result.refund and bool(self._cancelled_among([result.claim]))
        self._held.remove(result)
        claim = result.claim
        # A late result of a lost attempt must not drop the lease of the task's newer claim.
        leased = self._leased.get(claim.id)
        if leased is not None and leased.attempt == claim.attempt:
            del self._leased[claim.id]
            self._progress_written.pop(claim.id, None)
        self._post(Recorded(result=result, won=won, cancelled=cancelled))

    def _failed(
        self,
        exc: Exception,
        progress: list[tuple[Claim, int]],
        stacks: list[tuple[Claim, str, Status]] | None = None,
    ) -> None:
        """Back off (capped at half a heartbeat, so leases survive), and renew at first contact.

        Any exception counts, not only a :class:`StoreError`: an unexpected one
        (a driver bug, a bad row) must not end the link's thread, which would
        leave every lease to expire and every result unwritten without a word.

        Progress taken for this turn and not written is kept for the next one,
        unless a newer value came meanwhile; so are stacks not written. (Should the
        task's result have come too, the value is written first, fenced; the result
        carries its own.)
        """
        self._failures += 1
        cap = min(DB_RETRY_MAX_S, self._heartbeat_s / 2)
        delay = doubling_delay(self._failures, minimum=DB_RETRY_MIN_S, maximum=cap)
        delay *= random.uniform(0.5, 1.0)
        now = self._clock()
        self._retry_at = now + delay
        self._next_heartbeat = min(self._next_heartbeat, now)
        with self._lock:
            for claim, pct in progress:
                self._progress.setdefault(claim.id, (claim, pct))
            self._stacks[:0] = stacks or []  # not written yet: kept, in order
        error = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        self._post(DbFailed(error=error, retry_in_s=delay, held=len(self._held)))

    def _answered(self) -> None:
        if self._health is not None:
            self._health.db_ok_at = time.monotonic()
        if self._failures:
            self._post(DbBack(after_failures=self._failures))
        self._failures = 0

    def final_flush(self) -> None:
        """One try at writing everything held, then deregister; the rest is not recorded.

        The loop closes the link once nothing runs and nothing waits: a claim
        still leased with no result is one whose event the loop never applied
        (it was in flight when the drain ended), so it is refunded here.
        """
        with self._lock:
            self._held.extend(self._inbox)
            self._inbox.clear()
            stacks, self._stacks = self._stacks, []
        settled = {(r.claim.id, r.claim.attempt) for r in self._held}
        self._held.extend(
            refund(c) for c in self._leased.values() if (c.id, c.attempt) not in settled
        )
        try:
            answered = False
            if self._held:
                self._write_others()
                if self._held:
                    self._complete()
                answered = True
            if answered or self._failures == 0:
                self._store.deregister(self.owner)
            self._write_stacks(stacks)  # after the results: a stack is worth less than they are
        except Exception:  # noqa: BLE001 - what was not written is reported just below
            pass
        for result in list(self._held):
            self._post(NotRecorded(result=result))
        with contextlib.suppress(Exception):
            self._store.close()
        self._announce()

    def _post(self, event: LinkEvent) -> None:
        self._events.append(event)
        self._posted = True

    def _announce(self) -> None:
        """One byte on the notify pipe wakes the loop for everything posted this turn."""
        if self._posted:
            self._posted = False
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._notify_w, b"!")


def open_link(dsn: Dsn, **options: Any) -> DatabaseLink:
    """A link to the database ``dsn`` names (``options`` as for :class:`DatabaseLink`).

    It connects on its own thread, on first use.
    """
    return DatabaseLink(open_store(dsn), **options)


STARTUP_RETRY_MIN_S, STARTUP_RETRY_MAX_S = 0.5, 5.0


def check_database(
    dsn: Dsn,
    timeout_s: float,
    *,
    on_retry: Callable[[StoreError, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Reach and migrate the database before ``run`` starts anything; :class:`StartupError` if not.

    A schema newer than this code knows (a newer release migrated it) is a
    configuration error too: this code cannot know what the new columns mean.

    A configuration error (unknown database, access denied, unknown host) can
    only be fixed by the operator, so it ends the start at once. A database
    that is only unreachable may be starting too (a compose file, a reboot):
    it is retried, backing off, for ``timeout_s``. Once running, every outage
    is retried without end: by then the supervisor holds work worth keeping.
    """
    store = open_store(dsn)
    try:
        until = clock() + timeout_s
        failures = 0
        while True:
            try:
                store.migrate()  # answers like a ping, and refuses a schema newer than ours
                return
            except StoreMisconfigured as exc:
                raise StartupError(str(exc)) from None
            except StoreUnavailable as exc:
                failures += 1
                left = until - clock()
                if left <= 0:
                    raise StartupError(
                        f"{exc} (still unavailable after the start-up timeout of {timeout_s:g} s;"
                        " see --startup-timeout)"
                    ) from None
                delay = min(
                    left,
                    doubling_delay(
                        failures, minimum=STARTUP_RETRY_MIN_S, maximum=STARTUP_RETRY_MAX_S
                    ),
                )
                if on_retry is not None:
                    on_retry(exc, delay)
                sleep(delay)
            except StoreError as exc:
                raise StartupError(str(exc)) from None
    finally:
        with contextlib.suppress(Exception):
            store.close()


def write_one(store: Store, result: PendingResult) -> bool:
    """One fenced write for an outcome that is not a plain completion."""
    claim, decision = result.claim, result.decision
    if result.refund:
        return store.refund(claim)
    if result.progress_pct is not None and decision.status is not Status.COMPLETED:
        store.progress(claim, result.progress_pct)
    if decision.status is Status.QUEUED:
        assert decision.retry_in_s is not None
        return store.requeue(claim, decision.retry_in_s, result.error, result.usage)
    if decision.status is Status.COMPLETED:
        return store.complete(claim, result.usage)
    assert decision.failure is not None
    return store.fail(claim, decision.failure, result.error, result.usage)
